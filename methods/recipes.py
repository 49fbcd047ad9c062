"""Training recipes: the epochs, learning-rate milestones, weight decay, attack budget and batch
size a method's released code trains with (docs/methods.md section 1.3 and the table of section 9),
and the named recipes shared by every method. Plain data: a method declares its released recipe."""
from dataclasses import dataclass, field
from typing import Dict, Mapping, Tuple


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str  # where the values come from
    epochs: int
    milestones: Tuple[int, ...]  # the learning rate is multiplied by lr_decay after this many epochs
    weight_decay: float
    lr_decay: float = 0.1
    epsilon: float = 8.0  # 1/255 units, as on the command line
    step_size: float = 2.0
    bs: int = 128
    bs_by_dataset: Mapping[str, int] = field(default_factory=dict)
    nesterov: bool = False  # SGD's Nesterov momentum (the Fair-ARD scripts use it)

    def batch_size(self, dataset: str) -> int:
        return self.bs_by_dataset.get(dataset, self.bs)


def released(source: str, epochs: int, milestones: Tuple[int, ...], weight_decay: float, **kw) -> Recipe:
    return Recipe("released", source, epochs, milestones, weight_decay, **kw)


# Shared recipes a head-to-head table trains every method with (`--recipe NAME`).
COMMON: Dict[str, Recipe] = {
    "dgad-paper": Recipe("dgad-paper", "the DGAD paper's common setting for every method (ECCV 2024)", 200,
                         (100, 150), 5e-4),
}
RECIPE_NAMES = ("released",) + tuple(COMMON)
