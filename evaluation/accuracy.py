"""Accuracy under attack, batched over a device-resident test split. The accumulators stay on
the device; the host reads one number per call (and the per-class counts once, when asked for)."""
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn

from attacks import ce_sum, module_mode, pgd
from data import Shard, Split, test_batches
from runtime.distributed import World
from runtime.precision import prepare_batch

from .per_class import class_accuracies, worst_class


def attack_accuracy(model: nn.Module, split: Split, batch_size: int,
                    attack: Optional[Callable[..., torch.Tensor]] = None,
                    progress: Optional[Callable] = None, moments: Optional["FeatureMoments"] = None,
                    channels_last: bool = False, world: World = World(),
                    per_class: Optional["ClassCounts"] = None) -> float:
    """Accuracy (%) of `model` in eval() mode on `split`, on adversarial inputs when `attack` is given.

    moments: also accumulate the model's penultimate features of the very inputs it classifies
    (clean, or the attack's examples) from the same forward pass; no extra attack or pass.
    channels_last: give the model NHWC batches, as its weights are when trained with --channels_last.
    per_class: also count, per true class, the examples classified and those classified right, from the
    same predictions (worst-class robustness; no extra attack or pass).
    world: in a distributed job, each process takes its rows of every batch of `batch_size` (the
    attack, which must then accept `batch_rows`, draws its start for the whole batch) and the counts
    (per class too) and moments are reduced: every process returns the single-process accuracy."""
    correct = torch.zeros((), dtype=torch.long, device=split.labels.device)
    with module_mode(model, False):
        for x, y, rows in test_batches(split, batch_size, Shard(world.rank, world.size)):
            x = prepare_batch(x, channels_last)
            if attack is not None:
                x = attack(model, x, y, batch_rows=rows) if world.distributed else attack(model, x, y)
            with torch.no_grad():
                if moments is None:
                    logits = model(x)
                else:
                    logits, features = model(x, return_features=True)
                    moments.update(features)
                right = logits.argmax(1) == y
                correct += right.sum()
                if per_class is not None:
                    per_class.update(right, y, logits.shape[1])
            if progress is not None:
                progress(rows.total)
    world.sum_(correct)
    if moments is not None:
        moments.reduce(world)
    if per_class is not None:
        per_class.reduce(world)
    return 100.0 * correct.item() / max(len(split), 1)


def pgd_ce_attack(eps: float, step_size: float, steps: int, init: str = "uniform",
                  generator: Optional[torch.Generator] = None):
    """PGD on cross-entropy (docs/methods.md section 6.1: uniform start), as an `attack` for attack_accuracy."""
    def attack(model, x, y, batch_rows=None):
        return pgd(model, x, y, eps=eps, step_size=step_size, steps=steps, loss_fn=ce_sum, init=init,
                   generator=generator, batch_rows=batch_rows)
    return attack


class ClassCounts:
    """Per true class, how many examples were classified and how many of them right: two (classes,) integer
    tensors on the device, sized by the logits' width at the first batch. No host sync until `counts`;
    integer sums, so a sharded evaluation reduced over its processes (`reduce`) is exactly the single one."""

    def __init__(self):
        self.correct: Optional[torch.Tensor] = None
        self.total: Optional[torch.Tensor] = None

    def update(self, right: torch.Tensor, y: torch.Tensor, num_classes: int) -> None:
        """Add a batch: `right[i]` says whether example i (true class y[i]) was classified right."""
        if self.total is None:
            self.correct = torch.zeros(num_classes, dtype=torch.long, device=y.device)
            self.total = torch.zeros(num_classes, dtype=torch.long, device=y.device)
        # A (batch, classes) comparison, summed: no scatter, no atomics, no sync, the same on every device.
        member = y.unsqueeze(1) == torch.arange(self.total.numel(), device=y.device)
        self.total += member.sum(0)
        self.correct += (member & right.unsqueeze(1)).sum(0)

    def reduce(self, world: World) -> None:
        """Sum every process's counts, on every process of a distributed job."""
        if not world.distributed:
            return
        if self.total is None:
            raise ValueError("every process of the job must have seen at least one row")
        world.sum_(self.correct)
        world.sum_(self.total)

    def counts(self) -> Optional[Tuple[List[int], List[int]]]:
        """(correct, n) per class as host integers, read once; None before any batch."""
        if self.total is None:
            return None
        both = torch.stack([self.correct, self.total]).tolist()
        return both[0], both[1]

    def worst_accuracy(self) -> float:
        """The lowest per-class accuracy (%) among the classes that have examples; NaN before any batch."""
        counts = self.counts()
        if counts is None:
            return float("nan")
        accuracies = class_accuracies(*counts)
        worst = worst_class(accuracies)
        return float("nan") if worst is None else accuracies[worst]


class FeatureMoments:
    """Running statistics of (N, d) feature batches for tr Cov over every row seen, without keeping
    the rows: per-dimension mean and sum of squared deviations, merged batch by batch (Chan et
    al.'s pairwise update), in float64 on the features' device so that a 10k-row test set loses
    no precision to cancellation."""

    def __init__(self):
        self.count = 0
        self.mean: Optional[torch.Tensor] = None
        self.m2: Optional[torch.Tensor] = None

    def update(self, features: torch.Tensor) -> None:
        n = features.shape[0]
        if n == 0:
            return
        rows = features.detach().reshape(n, -1).double()
        mean = rows.mean(0)
        self.merge(n, mean, (rows - mean).pow(2).sum(0))

    def merge(self, n: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        """Add the statistics of `n` more rows: their mean and sum of squared deviations."""
        if n == 0:
            return
        if self.count == 0:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.pow(2) * (self.count * n / total)
        self.count = total

    def reduce(self, world: World) -> None:
        """Merge every process's statistics (in rank order), on every process of a distributed job."""
        if not world.distributed:
            return
        if self.mean is None:
            raise ValueError("every process of the job must have seen at least one row")
        packed = torch.cat([torch.tensor([float(self.count)], dtype=torch.float64, device=self.mean.device),
                            self.mean, self.m2])
        pieces = world.all_gather(packed)
        self.count, self.mean, self.m2 = 0, None, None
        d = (packed.numel() - 1) // 2
        for piece in pieces:
            self.merge(int(piece[0].item()), piece[1:1 + d], piece[1 + d:])

    def trace_cov(self) -> float:
        """tr Cov of the rows seen, centred, with 1/(N-1); nan with fewer than two rows."""
        if self.count < 2:
            return float("nan")
        return (self.m2.sum() / (self.count - 1)).item()
