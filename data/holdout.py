"""The held-out validation images of --val_images: a pure function of the training labels, the count and
the seed, drawn from a random stream of its own (never the run's torch streams), so that holding images out
shifts nothing else of a run, and the same labels, count and seed always hold out the same images."""
import hashlib
from typing import Tuple

import numpy as np
import torch

from runtime.errors import UserError
from .loader import Split

# Mixed into the stream's seed beside --seed and the class: no other stream of a run is seeded this way.
HOLDOUT_STREAM = 0x7A11D


def check_holdout_count(count: int, num_classes: int, flag: str = "--val_images") -> None:
    """What can be checked of the count before the labels are read: >= 0, and balanced over the classes."""
    if count < 0:
        raise UserError(f"{flag} must be >= 0 (0 = select on the test set, as the papers), got {count}")
    if count % num_classes:
        raise UserError(f"{flag} {count} is not a multiple of the {num_classes} classes: the held-out images are "
                        f"balanced over the classes; pass {flag} {max(count // num_classes, 1) * num_classes}")


def class_balanced_holdout(labels, count: int, num_classes: int, seed: int, flag: str = "--val_images"
                           ) -> Tuple[np.ndarray, np.ndarray]:
    """(held_out, kept): sorted indices into `labels`, `count` // `num_classes` images of every class held out,
    the rest kept. Each class's images are ordered by a permutation from numpy's generator seeded with
    (HOLDOUT_STREAM, seed, class) and its first ones are held out: classes do not depend on each other, and a
    larger count holds out a superset. UserError when the count cannot be balanced or leaves nothing to train on."""
    labels = np.asarray(labels)
    check_holdout_count(count, num_classes, flag)
    if count >= len(labels):
        raise UserError(f"{flag} {count} leaves no training image: the training set has {len(labels)} images "
                        f"(--train_subset counts them before any is held out)")
    per_class = count // num_classes
    held = []
    for label in range(num_classes):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise UserError(f"{flag} {count} holds out {per_class} images of each of the {num_classes} classes, and "
                            f"class {label} has {len(members)} of the {len(labels)} training images: pass a smaller "
                            f"{flag} or a larger --train_subset")
        order = np.random.default_rng([HOLDOUT_STREAM, seed, label]).permutation(len(members))
        held.append(members[order[:per_class]])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    kept = np.setdiff1d(np.arange(len(labels)), held_out, assume_unique=True)
    return held_out.astype(np.int64), kept.astype(np.int64)


def indices_sha256(indices: np.ndarray) -> str:
    """The sha256 of sorted indices as little-endian int64: what config.json records and a resume checks."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<i8").tobytes()).hexdigest()


def hold_out(split: Split, count: int, num_classes: int, seed: int) -> Tuple[Split, Split, str]:
    """(training split, validation split, the held-out indices' sha256): `split` less its class-balanced held-out
    images, and those images, both on `split`'s device and in their order in `split`."""
    held_out, kept = class_balanced_holdout(split.labels.cpu().numpy(), count, num_classes, seed)
    device = split.labels.device

    def part(indices: np.ndarray) -> Split:
        rows = torch.from_numpy(indices).to(device)
        return Split(split.images[rows], split.labels[rows])
    return part(kept), part(held_out), indices_sha256(held_out)
