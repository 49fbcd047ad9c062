"""The GPU data path: a whole split as a uint8 tensor on the training device, batches drawn
by a seeded device generator, and augmentation as batched tensor ops (no host round trips)."""
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from runtime.errors import UserError, warn
from .datasets import dataset_info, load_cifar, load_tiny_imagenet


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, 3, H, W) on the device
    labels: torch.Tensor  # int64 (N,) on the device

    def __len__(self):
        return self.labels.shape[0]


def load_split(dataset: str, data_dir: str, split: str, device, subset: int = 0, download: bool = False,
               subset_flag: str = "") -> Split:
    """Read a split into device memory; `subset` > 0 keeps its first `subset` images. `subset_flag`
    names the flag that set it in messages (default --<split>_subset)."""
    subset_flag = subset_flag or f"--{split}_subset"
    if subset < 0:
        raise UserError(f"{subset_flag} must be >= 0 (0 = whole split), got {subset}")
    info = dataset_info(dataset)
    if info.name == "Tiny_Image":
        images, labels = load_tiny_imagenet(data_dir, split, limit=subset)
    else:
        images, labels = load_cifar(info.name, data_dir, split, download=download)
    if subset > len(labels):
        warn(f"{subset_flag} {subset} is larger than the {split} split ({len(labels)} images); using all of it")
    if subset:
        images, labels = images[:subset], labels[:subset]
    if labels.min() < 0 or labels.max() >= info.num_classes:
        raise UserError(f"{dataset} {split} labels fall outside 0..{info.num_classes - 1}")
    return Split(torch.from_numpy(np.ascontiguousarray(images)).to(device),
                 torch.from_numpy(labels).to(device))


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float().div_(255.0)


class BatchRows(NamedTuple):
    """This process's rows start:stop of a batch of `total` (all of it in a single process)."""
    total: int
    start: int
    stop: int


@dataclass(frozen=True)
class Shard:
    """The rows of every batch that process `index` of a data-parallel job of `count` processes
    takes: contiguous blocks whose sizes differ by at most one, in rank order, so that the blocks
    of a step are the single-process batch."""
    index: int = 0
    count: int = 1

    def rows(self, total: int) -> BatchRows:
        return BatchRows(total, total * self.index // self.count, total * (self.index + 1) // self.count)


def draw_crop_flip(n: int, generator: torch.Generator, padding: int = 4) -> Tuple[torch.Tensor, ...]:
    """The random offsets (dy, dx) and flips of `n` images, drawn from `generator` (on its device)."""
    device = generator.device
    dy = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=generator)
    flip = torch.rand(n, device=device, generator=generator) < 0.5
    return dy, dx, flip


def crop_flip(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
              padding: int = 4) -> torch.Tensor:
    """Crop each image, padded with `padding` px of zeros, at offsets (dy, dx), and flip it where `flip`."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = dy[:, None] + torch.arange(h, device=images.device)  # (n, h)
    cols = dx[:, None] + torch.arange(w, device=images.device)  # (n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None]
    # Advanced indexing gathers every crop at once: (n, h, w, c) -> (n, c, h, w).
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop with `padding` px of zeros and a random horizontal flip, per image, batched.

    Works on any dtype; the crop offsets and flips come from `generator` (on the images' device)."""
    return crop_flip(images, *draw_crop_flip(images.shape[0], generator, padding), padding=padding)


class TrainBatches:
    """Shuffled, augmented training batches of a device-resident split. Deterministic given the
    generator's state, which the trainer saves for an exact resume.

    Yields (images, labels, rows): this process's rows of each batch of `batch_size` (the global
    batch of a data-parallel job, see `Shard`). Every process draws the same order and the
    augmentation of the whole batch from the same stream and keeps its rows, so the union of a
    step's shards is exactly the batch a single process trains on."""

    def __init__(self, split: Split, batch_size: int, generator: torch.Generator, augment: bool = True,
                 shard: Shard = Shard()):
        self.split, self.batch_size, self.generator, self.augment = split, batch_size, generator, augment
        self.shard = shard

    def __len__(self):
        return (len(self.split) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor, BatchRows]]:
        order = torch.randperm(len(self.split), device=self.split.labels.device, generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            rows = self.shard.rows(idx.shape[0])
            mine = idx[rows.start:rows.stop]
            images = self.split.images[mine]
            if self.augment:
                dy, dx, flip = draw_crop_flip(idx.shape[0], self.generator)
                images = crop_flip(images, dy[rows.start:rows.stop], dx[rows.start:rows.stop],
                                   flip[rows.start:rows.stop])
            yield to_float(images), self.split.labels[mine], rows


def test_batches(split: Split, batch_size: int, shard: Shard = Shard()
                 ) -> Iterator[Tuple[torch.Tensor, torch.Tensor, BatchRows]]:
    """The split in order, in batches of `batch_size`: this process's rows of each (see `Shard`)."""
    for start in range(0, len(split), batch_size):
        rows = shard.rows(min(batch_size, len(split) - start))
        mine = slice(start + rows.start, start + rows.stop)
        yield to_float(split.images[mine]), split.labels[mine], rows
