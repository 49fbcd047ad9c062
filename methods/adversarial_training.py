"""The methods that need no teacher, and so make teachers: Natural, PGD-AT (Madry) and TRADES
(docs/methods.md sections 3.1-3.3)."""
from attacks import ce_sum, kl_sum
from losses import cross_entropy_terms, trades_terms

from .base import AttackSpec, Method, Option


class Natural(Method):
    name = "Natural"
    summary = "Standard training: cross-entropy on clean inputs, no attack"
    paper = "(standard supervised training; the non-robust reference)"
    forwards = ("s_clean",)
    parts = ("ce",)

    def loss(self, out):
        return cross_entropy_terms(out.s_clean, out.y)


class PGDAT(Method):
    name = "PGDAT"
    summary = "Madry PGD adversarial training: cross-entropy on PGD examples (uniform start, student in eval)"
    paper = "Towards Deep Learning Models Resistant to Adversarial Attacks (Madry et al., ICLR 2018)"
    attack = AttackSpec(inner_loss=ce_sum, init="uniform", train_mode=False)
    forwards = ("s_adv",)
    parts = ("ce",)

    def loss(self, out):
        return cross_entropy_terms(out.s_adv, out.y)


class TRADES(Method):
    name = "TRADES"
    summary = ("Clean cross-entropy plus beta * KL from the clean to the adversarial prediction; the attack "
               "maximises that KL against the student's clean output (gauss start, eval)")
    paper = ("Theoretically Principled Trade-off between Robustness and Accuracy (Zhang et al., ICML 2019)")
    attack = AttackSpec(inner_loss=kl_sum, init="gauss", train_mode=False, target="student_clean")
    forwards = ("s_clean", "s_adv")
    options = {"trades_beta": Option(6.0, type=float, help="TRADES beta: weight of the robustness KL term")}
    parts = ("ce", "kl")

    def __init__(self, config):
        super().__init__(config)
        self.beta = config.options["trades_beta"]

    def loss(self, out):
        return trades_terms(out.s_clean, out.s_adv, out.y, beta=self.beta)
