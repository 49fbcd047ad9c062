"""The robust-fairness distillation methods (docs/methods.md sections 3.15 and 3.16).

Fair-ARD (NeurIPS 2023) is one plug-in, `ClassReweighting`, taken by ARD, IAD, RSLAD and MTARD as the methods
Fair-ARD, Fair-IAD, Fair-RSLAD and Fair-MTARD: the base method's attack, passes and options, the attack's iterates
counted per class, and each sample's loss weighted by its class's weight (the released Fair-*.py loss of that
base). ABSLD (NeurIPS 2024) keeps a teacher temperature per class.

Both gather class statistics of the running epoch on the device, without a host sync: ABSLD from the whole batch's
logits (the same on every process of a torchrun job), the Fair methods from each process's attack, summed over the
processes at every step (a C-entry all-reduce), so that every process holds the statistics of the whole batch. At
the first step of the next epoch (`begin_step`), before its attack, they become the new weights or temperatures,
as the released loops change them after each epoch. Statistics, weights and temperatures are the method's state,
saved in last.pth: a resume, at an epoch's end or in its middle, continues them exactly."""
import dataclasses
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from attacks import kl_sum
from losses import (absld_temperature_update, absld_terms, class_tempered, class_weights, fair_ard_terms,
                    fair_iad_terms, fair_mtard_terms, fair_rslad_terms, per_class_sums)
from runtime.distributed import World
from training.schedule import learning_rate

from .base import AttackSpec, Method, Option, StepOutputs
from .distillation import ARD, IAD, RSLAD, introspection_on
from .multi_teacher import MTARD
from .recipes import released

FAIR_REPOSITORY = "NISP-official/Fair-ARD"


def summed_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed in place over the processes of a torchrun job (every process calls it at the same step);
    itself in one process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        World(rank=dist.get_rank(), size=dist.get_world_size()).sum_(tensor)
    return tensor


class ClassReweighting:
    """Fair-ARD's class weights, as its released Fair-*.py compute them. During an epoch, kappa_c counts the
    attack iterates x'_0 .. x'_{K-1} (the start and each step's input, before the step) that the student classifies
    correctly, summed over the epoch's training samples of class c (GAIRAT's geometry value: how long a class
    resists). After the epoch kappa is divided by n / C (n: the epoch's samples) and the weights become
    `class_weights(kappa, --fair_beta)`; the first epoch weighs every class 1."""
    options = {"fair_beta": Option(2.0, type=float, low=0,
                                   help="Fair-ARD: the exponent beta of its class weights (1 / kappa_c) ** beta, "
                                        "kappa_c the class's robustness in the last epoch (0: every class weighs 1)")}
    parts = ("class_w_min", "class_w_max")

    def __init__(self, config):
        self.beta = config.options["fair_beta"]
        self.weights: Optional[torch.Tensor] = None  # (C,) float32, from the first step on
        self.kappa: Optional[torch.Tensor] = None  # (C,) int64: the running epoch's correct iterates per class
        self.seen: Optional[torch.Tensor] = None  # int64: the running epoch's samples
        self.epoch: Optional[int] = None  # the epoch `kappa` counts
        self.step_kappa: Optional[torch.Tensor] = None  # this process's count of the running step's attack

    def counting(self, inner_loss):
        """`inner_loss` that also counts, per class, the iterates the student classifies correctly."""
        def counted(logits, y, reference=None):
            correct = per_class_sums(logits.detach().argmax(1) == y, y, logits.shape[1])
            self.step_kappa = correct if self.step_kappa is None else self.step_kappa + correct
            return inner_loss(logits, y, reference)
        return counted

    def begin_step(self, epoch: int) -> None:
        if self.kappa is not None and self.epoch is not None and epoch > self.epoch:
            robustness = self.kappa.double() / (self.seen.clamp(min=1).double() / self.kappa.numel())
            self.weights = class_weights(robustness, self.beta).float()
            self.kappa.zero_()
            self.seen.zero_()
        self.epoch = epoch

    def sample_weights(self, out: StepOutputs) -> torch.Tensor:
        """w[y_i] for every sample of the whole batch, after adding this step's counts to the epoch's."""
        if self.weights is None:
            num_classes, device = out.trained_logits.shape[1], out.y.device
            self.weights = torch.ones(num_classes, device=device)
            self.kappa = torch.zeros(num_classes, dtype=torch.long, device=device)
            self.seen = torch.zeros((), dtype=torch.long, device=device)
        if self.epoch is None:  # a loss without a training step (a test's): the statistics are this epoch's
            self.epoch = out.epoch
        if self.step_kappa is not None:
            self.kappa += summed_over_processes(self.step_kappa)
            self.step_kappa = None
        self.seen += out.y.shape[0]
        return self.weights[out.y]

    def logged(self) -> Dict[str, torch.Tensor]:
        return {"class_w_min": self.weights.min(), "class_w_max": self.weights.max()}

    def state_dict(self) -> Dict[str, torch.Tensor]:
        if self.weights is None:
            return {}
        return {"class_weights": self.weights, "class_kappa": self.kappa, "class_seen": self.seen,
                "class_epoch": torch.tensor(self.epoch)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if "class_weights" in state:
            self.weights, self.kappa, self.seen = state["class_weights"], state["class_kappa"], state["class_seen"]
            self.epoch = int(state["class_epoch"])


class Fair:
    """Fair-<base>: the base method (the class after this one in the bases) with `ClassReweighting`: its attack
    counts the iterates, and `weighted_terms` is the released Fair loss of the base, each sample weighted by its
    class; the weights' range is logged. The base's state (MTARD's) and the reweighting's are saved side by side."""
    paper = ("Revisiting Adversarial Robustness Distillation from the Perspective of Robust Fairness (Yue et al., "
             "NeurIPS 2023)")

    def __init__(self, config):
        super().__init__(config)
        self.reweighting = ClassReweighting(config)
        self.attack = dataclasses.replace(self.attack, inner_loss=self.reweighting.counting(self.attack.inner_loss))

    def begin_step(self, epoch: int) -> None:
        super().begin_step(epoch)
        self.reweighting.begin_step(epoch)

    def loss(self, out):
        terms = self.weighted_terms(out, self.reweighting.sample_weights(out))
        return {**terms, **self.reweighting.logged()}

    def weighted_terms(self, out: StepOutputs, weights: torch.Tensor) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), **self.reweighting.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state.items() if not k.startswith("class_")})
        self.reweighting.load_state_dict(state)


def fair_recipe(script: str, base: type):
    """The Fair script's recipe: its base's epochs, milestones and weight decay (each Fair-*.py keeps them), at
    batch 128 on every dataset (the scripts are CIFAR-10 only), with their SGD's Nesterov momentum."""
    r = base.recipe
    return released(f"{FAIR_REPOSITORY} {script}", r.epochs, r.milestones, r.weight_decay, nesterov=True)


class FairARD(Fair, ARD):
    name = "Fair-ARD"
    summary = "ARD with each sample's KL and CE weighted by its class's Fair-ARD weight (--fair_beta)"
    options = {**ARD.options, **ClassReweighting.options}
    parts = ARD.parts + ClassReweighting.parts
    recipe = fair_recipe("Fair-ARD.py", ARD)

    def weighted_terms(self, out, weights):
        return fair_ard_terms(out.s_clean, out.s_adv, out.t_clean, out.y, weights, alpha=self.alpha,
                              temperature=self.temperature, reduction=self.reduction)


class FairIAD(Fair, IAD):
    name = "Fair-IAD"
    summary = ("IAD-I with each sample's terms weighted by its class's Fair-ARD weight (--fair_beta); the CE term "
               "on S(x') after the warm-up, as Fair-IAD.py")
    options = {**IAD.options, **ClassReweighting.options}
    parts = IAD.parts + ClassReweighting.parts
    # Fair-IAD.py: T(x), the attack (whose last pass is S(x')), S(x), an unused S(x') (detached), T(x'), in every
    # epoch: the introspection target S(x) runs during the warm-up too.
    forwards = ("t_clean", "s_adv", "s_clean", "s_adv", "t_adv")
    recipe = fair_recipe("Fair-IAD.py", IAD)

    def forward_sequence(self, epoch):
        return self.forwards

    def weighted_terms(self, out, weights):
        return fair_iad_terms(out.s_clean, out.s_adv, out.t_clean, out.t_adv, out.y, weights, alpha=self.alpha,
                              temperature=self.temperature, beta=self.beta,
                              introspect=introspection_on(out.epoch, self.begin))


class FairRSLAD(Fair, RSLAD):
    name = "Fair-RSLAD"
    summary = "RSLAD with each sample's KLs weighted by its class's Fair-ARD weight (--fair_beta)"
    options = {**RSLAD.options, **ClassReweighting.options}
    parts = RSLAD.parts + ClassReweighting.parts
    recipe = fair_recipe("Fair-RSLAD.py", RSLAD)

    def weighted_terms(self, out, weights):
        return fair_rslad_terms(out.s_clean, out.s_adv, out.t_clean, weights, reduction=self.reduction,
                                scale=self.scale)


class FairMTARD(Fair, MTARD):
    name = "Fair-MTARD"
    summary = ("MTARD with each sample's KLs weighted by its class's Fair-ARD weight (--fair_beta); the clean KL's "
               "target is T_adv(x') as Fair-MTARD.py (--fair_mtard_target)")
    options = {**MTARD.options, **ClassReweighting.options,
               "fair_mtard_target": Option("adversarial", choices=("adversarial", "natural"),
                                           help="Fair-MTARD: the target of the student's clean output: "
                                                "'adversarial' T_adv(x'), as the released Fair-MTARD.py (whose "
                                                "natural teacher runs but feeds no loss); 'natural' T_nat(x), as "
                                                "MTARD")}
    parts = MTARD.parts + ClassReweighting.parts
    recipe = fair_recipe("Fair-MTARD.py", MTARD)

    def __init__(self, config):
        super().__init__(config)
        self.natural_target = config.options["fair_mtard_target"] == "natural"
        self.weights_now: Optional[torch.Tensor] = None

    def weighted_terms(self, out, weights):
        self.weights_now = weights
        return MTARD.loss(self, out)  # MTARD's state handling, with `mixed_terms` below

    def mixed_terms(self, out, first_adv, first_nat):
        clean_target = out.n_clean if self.natural_target else out.t_adv
        return fair_mtard_terms(out.s_clean, out.s_adv, out.t_adv, clean_target, self.weights_now, self.w_nat,
                                first_adv, first_nat, rate=self.rate_at(out.epoch), power=self.power,
                                scale=self.scale)


class ABSLD(Method):
    name = "ABSLD"
    summary = ("(5/6) KL(T(x)/tau[y] || S(x')) + (1/6) KL(T(x)/tau[y] || S(x)), a teacher temperature per class, "
               "moved after each epoch against the gap between its class's training loss and the mean; the attack "
               "maximises the first KL (gauss start, eval)")
    paper = "Improving Adversarial Robust Fairness via Anti-Bias Soft Label Distillation (Zhao et al., NeurIPS 2024)"
    needs_teacher = True
    # The class attribute names the attack; each instance tempers its target with the run's temperatures.
    attack = AttackSpec(inner_loss=kl_sum, init="gauss", train_mode=False, target="teacher_clean")
    # resnet18_absld_cifar10.py: T(x) (no grad) before the attack, then S(x') and S(x) in train().
    forwards = ("s_adv", "s_clean", "t_clean")
    options = {"absld_rate": Option(0.1, type=float, low=0,
                                    help="ABSLD: the temperatures' learning rate (decayed with the model's "
                                         "learning rate at its milestones, as released)"),
               "absld_tau_min": Option(0.5, type=float, low=0, low_open=True, help="ABSLD: the lowest temperature"),
               "absld_tau_max": Option(5.0, type=float, low=0, low_open=True, help="ABSLD: the highest temperature"),
               "absld_temperatures": Option("released", choices=("released", "separate"),
                                            help="ABSLD: 'released' divides the teacher's logits by tau_adv[y] * "
                                                 "tau_nat[y] in the attack and both terms, as the released script "
                                                 "computes them (its two tempered copies share one tensor); "
                                                 "'separate': tau_adv in the attack and the adversarial term, "
                                                 "tau_nat in the clean term, as the paper describes")}
    parts = ("kl_adv", "kl_clean", "tau_min", "tau_max")
    recipe = released("zhaoshiji123/ABSLD resnet18_absld_cifar10.py", 300, (215, 260, 285), 2e-4)

    @classmethod
    def options_problem(cls, options):
        low, high = options["absld_tau_min"], options["absld_tau_max"]
        if low > high:
            return (f"--absld_tau_min {low:g} is above --absld_tau_max {high:g}: the temperatures are kept in "
                    f"[tau_min, tau_max]")
        return None

    def __init__(self, config):
        super().__init__(config)
        o = config.options
        self.rate, self.low, self.high = o["absld_rate"], o["absld_tau_min"], o["absld_tau_max"]
        self.shared = o["absld_temperatures"] == "released"
        self.milestones, self.decays, self.epochs = tuple(config.milestones), tuple(config.lr_decay), config.epochs
        self.attack = dataclasses.replace(type(self).attack, inner_loss=self.tempered_kl_sum)
        self.tau_adv: Optional[torch.Tensor] = None  # (C,) float32 from the first step on, as released: ones
        self.tau_nat: Optional[torch.Tensor] = None
        self.loss_adv: Optional[torch.Tensor] = None  # (C,) float64: the running epoch's summed CE(S(x'), y)
        self.loss_nat: Optional[torch.Tensor] = None  # ... and CE(S(x), y), per class
        self.epoch: Optional[int] = None  # the epoch the sums belong to

    def start(self, num_classes: int, device) -> None:
        if self.tau_adv is None:
            self.tau_adv = torch.ones(num_classes, device=device)
            self.tau_nat = torch.ones(num_classes, device=device)
            self.loss_adv = torch.zeros(num_classes, dtype=torch.float64, device=device)
            self.loss_nat = torch.zeros(num_classes, dtype=torch.float64, device=device)

    def temperatures(self):
        """(the attack's and the adversarial term's, the clean term's) per-class temperatures."""
        if self.shared:
            both = self.tau_adv * self.tau_nat
            return both, both
        return self.tau_adv, self.tau_nat

    def tempered_kl_sum(self, logits, y, reference):
        self.start(logits.shape[1], logits.device)
        return kl_sum(logits, y, class_tempered(reference, y, self.temperatures()[0]))

    def begin_step(self, epoch: int) -> None:
        if self.tau_adv is not None and self.epoch is not None and epoch > self.epoch:
            # The released loop decays the rate at a milestone before that epoch's update.
            rate = learning_rate("piecewise", self.rate, self.epoch, self.epochs, self.milestones, self.decays)
            self.tau_adv = absld_temperature_update(self.tau_adv, self.loss_adv, rate, self.low, self.high)
            self.tau_nat = absld_temperature_update(self.tau_nat, self.loss_nat, rate, self.low, self.high)
            self.loss_adv.zero_()
            self.loss_nat.zero_()
        self.epoch = epoch

    def loss(self, out):
        num_classes = out.s_adv.shape[1]
        self.start(num_classes, out.y.device)
        if self.epoch is None:  # a loss without a training step (a test's): the sums are this epoch's
            self.epoch = out.epoch
        for sums, logits in ((self.loss_adv, out.s_adv), (self.loss_nat, out.s_clean)):
            sums += per_class_sums(F.cross_entropy(logits.detach(), out.y, reduction="none").double(), out.y,
                                   num_classes)
        tau_adv, tau_nat = self.temperatures()
        terms = absld_terms(out.s_clean, out.s_adv, out.t_clean, out.y, tau_adv, tau_nat)
        return {**terms, "tau_min": tau_adv.min(), "tau_max": tau_adv.max()}

    def state_dict(self) -> Dict[str, Any]:
        if self.tau_adv is None:
            return {}
        return {"tau_adv": self.tau_adv, "tau_nat": self.tau_nat, "loss_adv": self.loss_adv,
                "loss_nat": self.loss_nat, "epoch": torch.tensor(self.epoch)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state:
            self.tau_adv, self.tau_nat = state["tau_adv"], state["tau_nat"]
            self.loss_adv, self.loss_nat, self.epoch = state["loss_adv"], state["loss_nat"], int(state["epoch"])
