"""Which images choose the best_* checkpoints (--val_images), and the test set's one measurement of each
checkpoint at the end of a run that chose them on held-out training images.

By default (0) the per-epoch evaluation runs on the test set and picks every best_* file on it, as the
papers' code does: the test set then both selects the checkpoint and measures it. With --val_images N, N
training images (balanced over the classes, data.holdout) are held out of training; the per-epoch
evaluation runs on them (results.csv's val_* columns) and picks the best_* files, and the test set is
measured once per checkpoint when the last epoch is done, into final.json."""
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch.nn as nn

from data import Split, hold_out
from runtime.checkpoints import atomic_write_json, safe_load, sha256_of

FINAL_FILE = "final.json"
FINAL_FORMAT = "advkd-final-1"


def evaluation_split(val_images: Optional[int]) -> str:
    """The split the per-epoch evaluation measures, as results.csv names its columns: 'val' or 'test'."""
    return "val" if val_images else "test"


def measured_on(column: str, split: str) -> str:
    """results.csv's name of an evaluation column (test_* in the code) for `split`; other columns as they are."""
    return split + column[len("test"):] if column.startswith("test_") else column


def on_split(row: Dict, split: str) -> Dict:
    """An epoch's row with its evaluation columns named after `split`."""
    return {measured_on(name, split): value for name, value in row.items()}


def row_split(row: Dict) -> str:
    """The split an epoch's row measured, from its columns' names."""
    return "val" if "val_PGD10_acc" in row else "test"


def selection_text(val_images: Optional[int]) -> str:
    """How a run chose its best_* checkpoints, as tables and reports say it."""
    return f"selected on {val_images} validation images" if val_images else "selected on test"


def split_for_selection(train_split: Split, val_images: int, num_classes: int, seed: int
                        ) -> Tuple[Split, Optional[Split], Optional[str]]:
    """(images to train on, held-out images or None, their indices' sha256 or None). Every process of a
    distributed job computes the same split: it is a function of the labels, the count and the seed."""
    if not val_images:
        return train_split, None, None
    return hold_out(train_split, val_images, num_classes, seed)


def final_checkpoints(averages: Sequence[str], average_files: Dict[str, Tuple[str, str]]) -> List[Tuple[str, str]]:
    """(file, what chose it) for every checkpoint a completed run has written, then last.pth: the same list in
    every process of a distributed job (every average is active by the last epoch: --swa_start < --epochs)."""
    files = [("best_PGD10_acc_model.pth", "the highest val_PGD10_acc"),
             ("best_clean_acc_model.pth", "the highest val_clean_acc")]
    for name in averages:
        latest, best = average_files[name]
        files += [(best, f"the highest val_PGD10_acc_{name}"), (latest, "the last epoch")]
    return files + [("last.pth", "the last epoch")]


def measure_on_test(folder: str, files: Sequence[Tuple[str, str]], record: Dict, test_images: int,
                    load: Callable[[Optional[Dict]], nn.Module], measure: Callable[[nn.Module, str], Dict],
                    writer: bool = True) -> Optional[Dict]:
    """Measure each checkpoint file on the test set, once, and write final.json (process 0). `load(payload)`
    returns the network holding the payload's weights (None: process 0's, as in a distributed job's other
    processes, which read nothing); `measure(network, description)` its test numbers as results.csv names them."""
    checkpoints = {}
    for name, chosen_by in files:
        path = os.path.join(folder, name)
        payload = safe_load(path) if writer else None
        network = load(payload)
        numbers = measure(network, f"test set, {name}")
        if not writer:
            continue
        checkpoints[name] = {"sha256": sha256_of(path), "epoch": payload["epoch"], "chosen_by": chosen_by,
                             "val_clean_acc": payload["clean_acc"], "val_PGD10_acc": payload["PGD10_acc"],
                             **numbers}
    if not writer:
        return None
    final = {"format": FINAL_FORMAT, "selected_on": selection_text(record.get("val_images")),
             "val_images": record.get("val_images"), "val_sha256": record.get("val_sha256"),
             "test_images": test_images, "eval_epsilon": record.get("eval_epsilon"),
             "eval_step_size": record.get("eval_step_size"), "checkpoints": checkpoints}
    atomic_write_json(os.path.join(folder, FINAL_FILE), final)
    return final
