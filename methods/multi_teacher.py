"""The two-teacher methods (docs/methods.md section 3.9 and 3.10): AKD and MTARD distil from an
adversarially trained teacher (--teacher_model/--teacher_path) and a naturally trained one
(--teacher_st_model/--teacher_st_path)."""
from typing import Any, Dict

import torch

from attacks import ce_sum
from losses import akd_terms, mtard_terms

from .base import AttackSpec, Method, Option
from .distillation import CE_TRAIN_MODE_ATTACK, TEMPERATURE_HELP
from .plugins import IGDM_OPTIONS, IGDMTerm
from .recipes import released


class AKD(Method):
    name = "AKD"
    summary = ("(1 - a1 - a2) CE(S(x'), y) + a1 tau^2 KL(T_AT(x') || S(x')) + a2 tau^2 KL(T_ST(x') || S(x')), "
               "an adversarially and a naturally trained teacher; CE attack with the student in train() mode")
    paper = ("Robust Overfitting may be Mitigated by Properly Learned Smoothening (Chen et al., ICLR 2021): the "
             "two-teacher distillation the IAD authors release as AKD2.py")
    needs_teacher = True
    needs_natural_teacher = True
    attack = CE_TRAIN_MODE_ATTACK
    # AKD2.py: the attack's last forward S(x') in train() mode is the student's only pass; both
    # teachers see x'.
    forwards = ("s_adv", "t_adv", "n_adv")
    options = {"AKD_a1": Option(0.5, type=float, low=0, high=1, help="AKD: weight a1 of the robust teacher's KL"),
               "AKD_a2": Option(0.25, type=float, low=0, high=1, help="AKD: weight a2 of the natural teacher's KL "
                                                                      "(1 - a1 - a2 weighs CE on S(x'))"),
               "temp": Option(1.0, type=float, low=0, low_open=True, help=TEMPERATURE_HELP),
               **IGDM_OPTIONS}
    plugins = (IGDMTerm,)
    parts = ("ce", "kl_robust", "kl_natural")
    # Like ARD's, its schedule code sets 0.01 from epoch 100 on and never lower.
    recipe = released("ZFancy/IAD AKD2.py", 200, (100,), 2e-4)

    @classmethod
    def natural_teacher_model(cls, args):
        # AKD2.py builds WideResNet(num_classes=...) with the other arguments left to a models/wideresnet.py
        # its repository does not hold; the ARD code IAD's models/ package mirrors defaults to depth 34,
        # widen factor 10. (Its pre_train/ST.py, which trains the natural teacher, defaults to ResNet-18.)
        return "wideresnet34_10"

    @classmethod
    def options_problem(cls, options):
        a1, a2 = options["AKD_a1"], options["AKD_a2"]
        if a1 + a2 > 1 + 1e-12:
            return (f"--AKD_a1 {a1:g} + --AKD_a2 {a2:g} = {a1 + a2:g} is above 1: the cross-entropy weight "
                    f"1 - a1 - a2 would be negative; keep a1 + a2 <= 1")
        return None

    def __init__(self, config):
        super().__init__(config)
        o = config.options
        self.a1, self.a2, self.temperature = o["AKD_a1"], o["AKD_a2"], o["temp"]

    def loss(self, out):
        return akd_terms(out.s_adv, out.t_adv, out.n_adv, out.y, a_robust=self.a1, a_natural=self.a2,
                         temperature=self.temperature)


class MTARD(Method):
    name = "MTARD"
    summary = ("w_adv KL(T_adv(x') || S(x')) + w_nat KL(T_nat(x) || S(x)), the weights moved every batch towards "
               "the teacher whose loss has fallen less; CE attack (gauss start, student in eval())")
    paper = "Enhanced Accuracy and Robustness via Multi-Teacher Adversarial Distillation (Zhao et al., ECCV 2022)"
    needs_teacher = True
    needs_natural_teacher = True
    attack = AttackSpec(inner_loss=ce_sum, init="gauss", train_mode=False)
    # T_nat(x) (before the attack in the released loop; the teachers are frozen, so where does not
    # matter), the attack, S(x') and T_adv(x'), then S(x): two train() passes, adversarial first.
    forwards = ("n_clean", "s_adv", "t_adv", "s_clean")
    options = {"MTARD_rate": Option(0.025, type=float, low=0,
                                    help="MTARD: learning rate of the adaptive teacher weights (decayed with the "
                                         "model's learning rate at its milestones)"),
               "MTARD_power": Option(1.0, type=float, low=0,
                                     help="MTARD: exponent of the relative losses in the weight update ('bert')"),
               **IGDM_OPTIONS}
    plugins = (IGDMTerm,)
    parts = ("kl_adv", "kl_nat", "w_adv")
    recipe = released("zhaoshiji123/MTARD mtard/mtard_resnet18_cifar10.py", 300, (215, 260, 285), 2e-4)

    @classmethod
    def natural_teacher_model(cls, args):
        return "wideresnet34_10"  # the released scripts build both teachers as wideresnet()

    def __init__(self, config):
        super().__init__(config)
        o = config.options
        self.rate, self.power = o["MTARD_rate"], o["MTARD_power"]
        self.milestones, self.decays = tuple(config.milestones), tuple(config.lr_decay)
        self.scale = 10.0 if config.dataset == "CIFAR100" else 1.0  # the CIFAR-100 script's x10
        self.w_nat = None  # float64 tensors on the logits' device, from the first batch on
        self.first = None

    def rate_at(self, epoch: int) -> float:
        """The weights' learning rate in 1-based `epoch`: decayed with the model's at its milestones."""
        rate = self.rate
        for milestone, decay in zip(self.milestones, self.decays):
            if epoch > milestone:
                rate *= decay
        return rate

    def loss(self, out):
        if self.w_nat is None:
            self.w_nat = torch.full((), 0.5, dtype=torch.float64, device=out.s_adv.device)
        first_adv, first_nat = self.first if self.first is not None else (None, None)
        terms = self.mixed_terms(out, first_adv, first_nat)
        self.w_nat = terms.pop("next_w_nat")
        self.first = (terms.pop("first_adv"), terms.pop("first_nat"))
        return terms

    def mixed_terms(self, out, first_adv, first_nat) -> Dict[str, torch.Tensor]:
        """This batch's terms, with the weights moved by its losses (`mtard_terms`; Fair-MTARD weighs them by class)."""
        return mtard_terms(out.s_clean, out.s_adv, out.t_adv, out.n_clean, self.w_nat, first_adv, first_nat,
                           rate=self.rate_at(out.epoch), power=self.power, scale=self.scale)

    def state_dict(self) -> Dict[str, Any]:
        if self.w_nat is None:
            return {}
        return {"w_nat": self.w_nat, "first_adv": self.first[0], "first_nat": self.first[1]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state:
            self.w_nat, self.first = state["w_nat"], (state["first_adv"], state["first_nat"])
