"""Selection on held-out training images (--val_images): the balanced, seeded split (pinned), what it drives
(the per-epoch evaluation's val_* columns, every best_* file, the test set measured once per checkpoint into
final.json), what a resume checks, main_report.py's tables labelled by how their checkpoints were chosen, and
the issue's run (--val_images 1000 --ema 0.995 --tensorboard on CIFAR-10) resumed bitwise."""
import csv
import json
import os
import re

import numpy as np
import pytest
import torch

from data import Split, class_balanced_holdout, hold_out, indices_sha256
from helpers import CIFAR_DEFAULTS, run_script, train_config
from runtime.errors import UserError
from training.config import build_parser, resolve

LABELS = np.arange(100) % 10  # ten images of each of ten classes
PINNED = [4, 11, 15, 17, 20, 23, 28, 29, 31, 35, 36, 38, 42, 43, 44, 49, 50, 66, 67, 82]


# -- the split: a pure function of the labels, the count and the seed ----------------------------------------------

def test_the_held_out_images_are_balanced_seeded_and_pinned():
    held, kept = class_balanced_holdout(LABELS, 20, 10, seed=0)
    assert held.tolist() == PINNED
    assert indices_sha256(held) == "88388cdbae113037114df30d710859f18c5382ade31c4ee121c2147bc061b0be"
    assert np.bincount(LABELS[held], minlength=10).tolist() == [2] * 10
    assert sorted(held.tolist() + kept.tolist()) == list(range(100)) and not set(held) & set(kept)
    assert class_balanced_holdout(LABELS, 20, 10, seed=0)[0].tolist() == PINNED  # the same images every time
    assert class_balanced_holdout(LABELS, 20, 10, seed=1)[0].tolist() != PINNED  # another seed, others
    assert set(PINNED) <= set(class_balanced_holdout(LABELS, 40, 10, seed=0)[0])  # more held out: a superset


def test_the_split_draws_from_a_stream_of_its_own():
    torch.manual_seed(5)
    np.random.seed(5)
    before_torch, before_numpy = torch.get_rng_state(), np.random.get_state()[1].copy()
    held = class_balanced_holdout(LABELS, 20, 10, seed=0)[0]
    assert torch.equal(torch.get_rng_state(), before_torch) and np.array_equal(np.random.get_state()[1],
                                                                               before_numpy)
    torch.manual_seed(123)
    assert class_balanced_holdout(LABELS, 20, 10, seed=0)[0].tolist() == held.tolist()


def test_hold_out_splits_a_device_split_and_keeps_its_order():
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 2, 2).contiguous()
    train, val, digest = hold_out(Split(images, torch.from_numpy(LABELS)), 20, 10, seed=0)
    assert (len(train), len(val), digest) == (80, 20, indices_sha256(np.array(PINNED)))
    assert val.images[:, 0, 0, 0].tolist() == PINNED and val.labels.tolist() == (LABELS[PINNED]).tolist()
    assert 4 not in train.images[:, 0, 0, 0].tolist() and train.images[:, 0, 0, 0].tolist() == sorted(
        set(range(100)) - set(PINNED))


@pytest.mark.parametrize("count, labels, message", [
    (-10, LABELS, "--val_images must be >= 0 (0 = select on the test set, as the papers), got -10"),
    (15, LABELS, "--val_images 15 is not a multiple of the 10 classes: the held-out images are balanced over the "
                 "classes; pass --val_images 10"),
    (100, LABELS, "--val_images 100 leaves no training image: the training set has 100 images"),
    (20, np.array([0] * 50 + [1] * 45 + [2] * 5 + list(range(3, 10))),
     "--val_images 20 holds out 2 images of each of the 10 classes, and class 3 has 1 of the 107 training images"),
])
def test_counts_that_cannot_be_held_out_are_one_line_errors(count, labels, message):
    with pytest.raises(UserError) as error:
        class_balanced_holdout(labels, count, 10, seed=0)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


# -- the flags ---------------------------------------------------------------------------------------------------

def refused(*flags):
    with pytest.raises(UserError) as error:
        train_config("PGDAT", *flags)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_bad_flags_are_one_line_errors_before_any_data_is_read():
    assert refused("--val_images", "-1").startswith("--val_images must be >= 0")
    assert refused("--val_images", "15").startswith("--val_images 15 is not a multiple of the 10 classes")
    with pytest.raises(UserError, match="multiple of the 100 classes"):
        train_config("PGDAT", "--val_images", "150", dataset="CIFAR100")
    assert refused("--val_images", "100", "--train_subset", "100").startswith(
        "--val_images 100 leaves no training image of --train_subset 100")
    for decay in ("0", "1", "1.5", "-0.1", "nan", "inf"):
        assert refused("--ema", decay).startswith("--ema must be a decay in (0, 1), e.g. 0.995"), decay
    assert refused("--wandb", " ").startswith("--wandb needs the name of a Weights & Biases project")
    config = train_config("PGDAT", "--val_images", "1000", "--ema", "0.995")
    assert (config.val_images, config.ema, config.tensorboard, config.wandb) == (1000, 0.995, False, None)
    assert train_config("PGDAT").val_images == 0  # off by default: the papers' selection


def test_a_resume_that_changes_the_held_out_images_or_the_average_is_refused_naming_it():
    from training.run_dir import identity_differences
    record = train_config("PGDAT", "--val_images", "1000", "--ema", "0.995").record()
    saved = dict(record, val_sha256="a" * 64)
    assert identity_differences(saved, dict(saved, val_images=2000)) == ["--val_images 1000 (now 2000)"]
    assert identity_differences(saved, dict(saved, ema=0.99)) == ["--ema 0.995 (now 0.99)"]
    assert identity_differences(saved, dict(saved, val_sha256="b" * 64)) == [
        f"held-out images (sha256 of their indices) {'a' * 64!r} (now {'b' * 64!r})"]
    # a run recorded before these flags existed resumes as one without them
    old = {k: v for k, v in train_config("PGDAT").record().items() if k not in ("val_images", "ema")}
    assert identity_differences(old, train_config("PGDAT").record()) == []
    # tracking is not part of a run's identity: it may be turned on or off on resume
    assert identity_differences(record, dict(record, tensorboard=True, wandb="advkd")) == []


def test_the_default_folder_names_the_held_out_count():
    args = build_parser(CIFAR_DEFAULTS, "test").parse_args(["--method", "PGDAT", "--val_images", "1000"])
    assert "_val1000_" in resolve(args).save_dir


# -- what the split drives ---------------------------------------------------------------------------------------

def test_the_columns_say_which_split_they_measured():
    from training.run_dir import result_fields
    fields = result_fields(["ce"], ["swa"], split="val")
    assert "val_clean_acc" in fields and "val_PGD10_acc" in fields and "val_PGD10_acc_swa" in fields
    assert not [f for f in fields if f.startswith("test_")] and fields[:4] == ["epoch", "lr", "train_loss",
                                                                                "train_acc"]
    assert "test_PGD10_acc" in result_fields(["ce"]) and "val_PGD10_acc" not in result_fields(["ce"])


def test_the_best_files_follow_the_held_out_images_not_the_test_set():
    from training.loop import checkpoints_to_save, epoch_line, EpochStats
    from training.run_dir import RunState
    state = RunState()
    rows = [{"epoch": 1, "val_clean_acc": 50.0, "val_PGD10_acc": 20.0, "test_clean_acc": 99.0, "test_PGD10_acc": 99.0},
            {"epoch": 2, "val_clean_acc": 40.0, "val_PGD10_acc": 25.0, "test_clean_acc": 0.0, "test_PGD10_acc": 0.0}]
    assert [name for name, _ in checkpoints_to_save(state, rows[0])] == ["best_PGD10_acc_model.pth",
                                                                         "best_clean_acc_model.pth"]
    assert [name for name, _ in checkpoints_to_save(state, rows[1])] == ["best_PGD10_acc_model.pth"]
    assert (state.best_pgd, state.best_clean) == (25.0, 50.0)
    row = dict(rows[1], lr=0.1, epoch_seconds=1.0, images_per_second=2.0, val_clean_acc_ema=30.0,
               val_PGD10_acc_ema=10.0)
    line = epoch_line(row, EpochStats(0.5, 60.0, {}, 10, 1.0, 0), 3)
    assert "val clean 40.00 PGD10 25.00 EMA clean 30.00 PGD10 10.00" in line


# -- main_report.py: a table per selection, labelled -------------------------------------------------------------

def report(protocol, accuracy):
    return {"protocol": protocol, "n_examples": 10000,
            "radii": {"8": {"eps_255": 8, "results": {"natural": {"accuracy": accuracy}, "pgd20": {"accuracy": 1.0}}}}}


def test_tables_are_split_and_labelled_by_selection_and_seeds_of_one_selection_share_a_row():
    from reporting.runs import Run, group_runs
    from reporting.tables import build_tables, csv_text, latex, markdown
    base = train_config("DGAD", model="wideresnet10_1").record()
    runs = []
    for seed, val_images, accuracy in ((0, 0, 80.0), (1, 0, 82.0), (0, 1000, 78.0), (1, 1000, 79.0)):
        config = dict(base, seed=seed, val_images=val_images, teacher_sha256="t" * 64)
        if val_images:
            config["val_sha256"] = f"{seed}" * 64  # each seed holds out other images: still one group
        runs.append(Run(f"run{seed}-{val_images}", config, reports={"standard": report("standard", accuracy)}))
    groups = group_runs(runs, ["DGAD"])
    assert len(groups) == 2 and sorted(len(g.runs) for g in groups) == [2, 2]
    assert {g.selection for g in groups} == {"selected on test", "selected on 1000 validation images"}
    tables = build_tables(groups)
    assert len(tables) == 2 and all(len(t.rows) == 1 for t in tables)  # never one row, nor one table, for both
    by_selection = {t.selection: t for t in tables}
    assert by_selection["selected on test"].rows[0].cells["natural"].mean == 81.0
    assert by_selection["selected on 1000 validation images"].rows[0].cells["natural"].mean == 78.5
    assert by_selection["selected on 1000 validation images"].name.endswith("-val1000")
    text = markdown(tables)
    assert "Checkpoints selected on test, as the papers do" in text
    assert "Checkpoints selected on 1000 validation images held out of training" in text
    assert "selected on 1000 validation images" in latex(tables)
    lines = list(csv.DictReader(csv_text(tables).splitlines()))
    assert sorted(line["selection"] for line in lines) == ["selected on 1000 validation images", "selected on test"]


def test_main_report_labels_each_table_by_its_selection_and_draws_each_split_apart(tmp_path, capsys):
    from reporting.cli import main as report_main
    from test_report import write_run
    root = str(tmp_path / "runs")
    write_run(os.path.join(root, "test"), "PGDAT", 0, {"natural": 80.0, "pgd10": 50.0})
    held_out = write_run(os.path.join(root, "val"), "PGDAT", 0, {"natural": 78.0, "pgd10": 48.0},
                         config={"val_images": 1000, "val_sha256": "0" * 64})
    with open(os.path.join(held_out, "results.csv"), "w") as f:  # a --val_images run's columns
        f.write("epoch,val_clean_acc,val_PGD10_acc\n1,40.0,20.0\n2,45.0,22.0\n")
    out = str(tmp_path / "report")
    assert report_main([root, "--out", out]) == 0
    text = open(os.path.join(out, "tables.md")).read()
    assert text.count("**CIFAR10, resnet18 students: accuracy") == 2  # two tables: the selections never mix
    tables = [re.split(r"\n\n(?:\*\*|#)", part)[0] for part in text.split("**CIFAR10, resnet18 students: accuracy")[1:]]
    (test_table,) = [t for t in tables if "Checkpoints selected on test, as the papers do" in t]
    (val_table,) = [t for t in tables if "Checkpoints selected on 1000 validation images held out of training" in t]
    assert "| PGDAT (selected on test) | 80.00 (1) |" in test_table and "78.00" not in test_table
    assert "| PGDAT (selected on 1000 validation images) | 78.00 (1) |" in val_table and "80.00" not in val_table
    assert "selected on 1000 validation images" in open(os.path.join(out, "tables.tex")).read()
    for name in ("curves-CIFAR10-resnet18.png", "curves-CIFAR10-resnet18-val.png"):
        assert os.path.isfile(os.path.join(out, name)), name


def test_main_report_reports_the_ema_checkpoint(tmp_path, capsys):
    from reporting.cli import main as report_main
    from test_report import write_run
    root = str(tmp_path / "runs")
    for checkpoint, natural in (("best_PGD10_acc_model.pth", 80.0), ("best_PGD10_acc_ema_model.pth", 83.0)):
        write_run(root, "PGDAT", 0, {"natural": natural, "pgd10": 50.0}, checkpoint=checkpoint,
                  config={"ema": 0.995})
    out = str(tmp_path / "report")
    assert report_main([root, "--out", out, "--no_figures"]) == 0
    assert "| PGDAT | 80.00 (1) |" in capsys.readouterr().out  # the student's, by default
    assert report_main([root, "--out", out, "--no_figures", "--checkpoint", "best_PGD10_acc_ema_model.pth"]) == 0
    assert "| PGDAT | 83.00 (1) |" in capsys.readouterr().out


def test_the_dgad_preset_has_a_variant_selected_on_validation():
    from pipeline.presets import load_preset
    from training.config import build_parser as parser
    switches = {a.dest: a.nargs == 0 for a in parser(CIFAR_DEFAULTS, "")._actions if a.option_strings}
    base = load_preset("dgad-cifar10-resnet18", switches)
    variant = load_preset("dgad-cifar10-resnet18-val", switches)
    assert variant.train == dict(base.train, val_images=1000)
    assert (variant.methods, variant.seeds, variant.evaluations, variant.teacher) == \
        (base.methods, base.seeds, base.evaluations, base.teacher)


# -- the issue's run, end to end on the CIFAR-10 copy -------------------------------------------------------------

TIMING = ("epoch_seconds", "images_per_second")


def issue_run(real_data_dir, teacher, save_dir, *extra):
    """--val_images 1000 --ema 0.995 --tensorboard, a tiny student on the first 1,200 training images (200 trained
    on, 1,000 held out) and 100 test images, 2 epochs."""
    return run_script("main.py", "--model", "wideresnet10_1", "--teacher_model", "wideresnet10_1", "--teacher_path",
                      teacher, "--data_dir", real_data_dir, "--train_subset", "1200", "--test_subset", "100", "--bs",
                      "100", "--num_steps", "1", "--epochs", "2", "--eval_bs", "1000", "--deterministic",
                      "--val_images", "1000", "--ema", "0.995", "--tensorboard", "--save_dir", str(save_dir), *extra)


def results(save_dir):
    with open(os.path.join(save_dir, "results.csv")) as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def test_the_issues_run_selects_on_held_out_images_measures_the_test_set_once_and_resumes_bitwise(
        tmp_path, real_data_dir, small_teacher):
    from data import load_split
    from models import build_model
    from runtime.checkpoints import load_weights, safe_load
    from runtime.device import make_generator
    from test_tracking import scalars
    from training.loop import evaluate, per_epoch_attack
    from training.networks import STREAM_SEED_OFFSETS
    pytest.importorskip("tensorboard")
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    done = issue_run(real_data_dir, small_teacher, unbroken)
    assert done.returncode == 0, done.stderr
    first = issue_run(real_data_dir, small_teacher, broken, "--stop_after", "1")
    assert first.returncode == 0 and not os.path.exists(broken / "final.json"), first.stderr  # measured at the end
    refused = issue_run(real_data_dir, small_teacher, broken, "--resume", "--ema", "0.99")
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode == 2 and len(errors) == 1 and "Traceback" not in refused.stderr
    assert errors[0].startswith("error: --resume:") and "is another run: --ema 0.995 (now 0.99)" in errors[0]
    second = issue_run(real_data_dir, small_teacher, broken, "--resume")
    assert second.returncode == 0, second.stderr
    assert "val clean" in second.stdout and "EMA clean" in second.stdout and "test set, measured once" in second.stdout

    # selection: the held-out images are the pinned function of the labels, and every column says so
    config = json.load(open(unbroken / "config.json"))
    labels = load_split("CIFAR10", real_data_dir, "train", "cpu", 1200).labels.numpy()
    assert config["val_sha256"] == indices_sha256(class_balanced_holdout(labels, 1000, 10, 42)[0])
    assert (config["val_images"], config["train_images"], config["ema"]) == (1000, 200, 0.995)
    rows = results(unbroken)
    assert "val_PGD10_acc" in rows[0] and "val_PGD10_acc_ema" in rows[0] and not [c for c in rows[0]
                                                                                 if c.startswith("test_")]
    # the resume continues bitwise: every column, every weight, the averages and the test set's numbers
    assert results(broken) == rows
    for name in ("last.pth", "best_PGD10_acc_model.pth", "ema_model.pth", "best_PGD10_acc_ema_model.pth"):
        a, b = safe_load(str(unbroken / name)), safe_load(str(broken / name))
        assert all(torch.equal(v, b["net"][k]) for k, v in a["net"].items()), name
    a, b = safe_load(str(unbroken / "last.pth")), safe_load(str(broken / "last.pth"))
    assert all(torch.equal(v, b["ema"][k]) for k, v in a["ema"].items()) and int(a["ema"]["n_averaged"]) == 4
    finals = [json.load(open(folder / "final.json")) for folder in (unbroken, broken)]
    for final in finals:
        for entry in final["checkpoints"].values():
            entry.pop("sha256")  # each file's config names its own save_dir
    assert finals[0] == finals[1]
    final = finals[0]
    assert final["selected_on"] == "selected on 1000 validation images" and final["test_images"] == 100
    assert sorted(final["checkpoints"]) == ["best_PGD10_acc_ema_model.pth", "best_PGD10_acc_model.pth",
                                           "best_clean_acc_model.pth", "ema_model.pth", "last.pth"]
    best = final["checkpoints"]["best_PGD10_acc_model.pth"]
    assert best["val_PGD10_acc"] == max(float(r["val_PGD10_acc"]) for r in rows)
    # the test numbers are that file's: the per-epoch evaluation's PGD-10 on the test images, in this process
    network = build_model("wideresnet10_1", 10)
    load_weights(network, str(unbroken / "best_PGD10_acc_model.pth"))
    attack = per_epoch_attack(train_config("DGAD"), make_generator("cpu", 42 + STREAM_SEED_OFFSETS["eval"]))
    test_split = load_split("CIFAR10", real_data_dir, "test", "cpu", 100)
    evaluated, _ = evaluate(network, test_split, 100, attack)
    assert (best["test_clean_acc"], best["test_PGD10_acc"]) == (round(evaluated.clean, 4), round(evaluated.robust, 4))
    # TensorBoard: the resumed run's event files hold results.csv, each value once
    logged = scalars(str(broken))
    for column in rows[0]:
        assert [value for _, value in logged[column]] == [float(torch.tensor(float(r[column]))) for r in rows], column


@pytest.mark.slow  # a subprocess
def test_a_bad_val_images_is_one_line_from_main_py(tmp_path):
    done = run_script("main.py", "--val_images", "1005", "--save_dir", str(tmp_path / "r"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("error: --val_images 1005 is not a multiple of the 10 classes: the held-out images "
                                   "are balanced over the classes; pass --val_images 1000")
    assert not os.path.exists(tmp_path / "r")


def test_torchrun_holds_out_the_same_images_and_measures_the_test_set_as_one_process(tmp_path, real_data_dir):
    from data import load_split
    from models import build_model
    from runtime.checkpoints import load_weights
    from runtime.device import make_generator
    from test_distributed import finished, torchrun
    from training.loop import evaluate, per_epoch_attack
    from training.networks import STREAM_SEED_OFFSETS
    save_dir = tmp_path / "run"
    code, out, err = finished(torchrun("main.py", "--method", "PGDAT", "--model", "wideresnet10_1", "--data_dir",
                                       real_data_dir, "--train_subset", "130", "--test_subset", "30", "--bs", "20",
                                       "--num_steps", "1", "--epochs", "2", "--val_images", "30", "--ema", "0.9",
                                       "--swa_start", "1", "--save_dir", str(save_dir)))
    assert code == 0, err
    assert out.count("test set, measured once per checkpoint") == 1
    config = json.load(open(save_dir / "config.json"))
    labels = load_split("CIFAR10", real_data_dir, "train", "cpu", 130).labels.numpy()
    assert config["world_size"] == 2 and config["val_sha256"] == indices_sha256(
        class_balanced_holdout(labels, 30, 10, config["seed"])[0])
    final = json.load(open(save_dir / "final.json"))
    assert {"best_PGD10_acc_swa_model.pth", "swa_model.pth", "ema_model.pth"} <= set(final["checkpoints"])
    test_split = load_split("CIFAR10", real_data_dir, "test", "cpu", 30)
    for name in ("best_PGD10_acc_model.pth", "ema_model.pth"):  # the sharded measurement is the single-process one
        network = build_model("wideresnet10_1", 10)
        load_weights(network, str(save_dir / name))
        attack = per_epoch_attack(train_config("PGDAT"), make_generator("cpu", config["seed"] +
                                                                        STREAM_SEED_OFFSETS["eval"]))
        evaluated, _ = evaluate(network, test_split, 1024, attack)
        entry = final["checkpoints"][name]
        assert (entry["test_clean_acc"], entry["test_PGD10_acc"]) == (round(evaluated.clean, 4),
                                                                      round(evaluated.robust, 4)), name
