"""The two evaluation protocols of docs/methods.md sections 7.1 and 7.2: which attacks each runs, with which settings.

Papers in this area report both under the same column names; every output of the evaluation
names the protocol it followed."""
import functools
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch

from attacks import PAPER_CW_L2, cw_inf, cw_l2, fgsm
from runtime.device import make_generator
from runtime.errors import UserError

from .accuracy import pgd_ce_attack
from .autoattack import StandardAutoAttack

STEP_SIZE = 2 / 255  # PGD-10, PGD-20 and CW-inf, whatever --eps is
CW_INF = {"steps": 30, "confidence": 50.0}

TITLES = {"natural": "Natural", "fgsm": "FGSM", "pgd10": "PGD-10", "pgd20": "PGD-20", "cw_l2": "CW-L2",
          "cw_inf": "CW-inf", "aa": "AutoAttack"}
L2_ATTACKS = ("cw_l2",)  # unbounded in L-inf: the eps check does not apply


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    attacks: Tuple[str, ...]
    pgd: str  # its PGD, whose examples give the variance gap


PROTOCOLS: Dict[str, Protocol] = {
    "paper": Protocol("paper", "DGAD/AdaAD tables: Natural, FGSM, PGD-10, CW-L2 (advertorch 0.2.3 settings), "
                               "AutoAttack standard", ("natural", "fgsm", "pgd10", "cw_l2", "aa"), "pgd10"),
    "standard": Protocol("standard", "ARD/IAD/RSLAD tables: Natural, FGSM, PGD-20, CW-inf (PGD-30 on the CW loss, "
                                     "confidence 50), AutoAttack standard",
                         ("natural", "fgsm", "pgd20", "cw_inf", "aa"), "pgd20"),
}


def parse_attacks(requested: Optional[Iterable[str]], protocol: Protocol) -> Tuple[str, ...]:
    """--attacks (names separated by spaces or commas) as a subset of the protocol's list, in its order."""
    if not requested:
        return protocol.attacks
    names = [part.strip().lower() for item in requested for part in item.split(",") if part.strip()]
    if not names:
        raise UserError(f"--attacks is empty; choose from {', '.join(protocol.attacks)}")
    for name in names:
        if name in protocol.attacks:
            continue
        others = [p.name for p in PROTOCOLS.values() if name in p.attacks]
        if others:
            raise UserError(f"--attacks {name} belongs to --protocol {others[0]}, not {protocol.name} "
                            f"(whose attacks are {', '.join(protocol.attacks)}); run it with --protocol {others[0]}")
        raise UserError(f"unknown attack {name!r} in --attacks; choose from {', '.join(protocol.attacks)} "
                        f"(--protocol {protocol.name})")
    return tuple(name for name in protocol.attacks if name in names)


def attack_settings(name: str, eps: float, seed: int, batch_size: int, cw_c: float = PAPER_CW_L2["c"]) -> Dict:
    """What the attack `name` computes, for the report."""
    pgd = {"eps": eps, "step_size": STEP_SIZE, "loss": "cross-entropy", "init": "uniform U(-eps, eps), clamped",
           "seed": seed}
    settings = {
        "natural": {},
        "fgsm": {"eps": eps, "step_size": eps, "steps": 1, "loss": "cross-entropy", "init": "none"},
        "pgd10": dict(pgd, steps=10),
        "pgd20": dict(pgd, steps=20),
        "cw_inf": dict(pgd, steps=CW_INF["steps"], confidence=CW_INF["confidence"],
                       loss="-max(z_y - max_{c!=y} z_c + confidence, 0)"),
        "cw_l2": dict(PAPER_CW_L2, c=cw_c, norm="L2", reproduces="advertorch 0.2.3 CarliniWagnerL2Attack (untargeted)",
                      batch_size=batch_size,
                      note="early abort is decided per batch, as in advertorch: results depend on --bs; "
                           "examples never misclassified are returned unchanged"),
        "aa": {"implementation": "pyautoattack", "version": "standard", "norm": "Linf", "eps": eps, "seed": seed},
    }
    return settings[name]


AttackFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def build_attack(name: str, eps: float, seed: int, device, cw_c: float = PAPER_CW_L2["c"]) -> Optional[AttackFn]:
    """The `attack(model, x, y)` for attack_accuracy (None for natural). Each randomised attack has
    its own generator seeded with `seed`, so its numbers do not depend on which attacks ran before."""
    if name == "natural":
        return None
    if name == "fgsm":
        return functools.partial(fgsm, eps=eps)
    if name in ("pgd10", "pgd20"):
        return pgd_ce_attack(eps, STEP_SIZE, int(name[3:]), "uniform", make_generator(device, seed))
    if name == "cw_inf":
        return functools.partial(cw_inf, eps=eps, step_size=STEP_SIZE, generator=make_generator(device, seed),
                                 **CW_INF)
    if name == "cw_l2":
        return functools.partial(cw_l2, **dict(PAPER_CW_L2, c=cw_c))
    if name == "aa":
        return StandardAutoAttack(eps, seed, device)
    raise ValueError(f"unknown attack {name!r}")
