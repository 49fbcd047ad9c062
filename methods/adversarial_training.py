"""The methods that need no teacher, and so make teachers: Natural, PGD-AT (Madry) and TRADES
(docs/methods.md sections 3.1-3.3)."""
from attacks import ce_sum, kl_sum
from losses import cross_entropy_terms, trades_terms

from .base import AttackSpec, Method, Option
from .recipes import released

# The AdaAD and DGAD repositories train their Natural and PGD-AT baselines with their own loop.
PLAIN_BASELINES = "boyellow/AdaAD and kunsaram01/DGAD main.py"


class Natural(Method):
    name = "Natural"
    summary = "Standard training: cross-entropy on clean inputs, no attack"
    paper = "(standard supervised training; the non-robust reference)"
    forwards = ("s_clean",)
    parts = ("ce",)
    recipe = released(f"{PLAIN_BASELINES} (Plain_Clean)", 200, (100, 150), 5e-4)

    def loss(self, out):
        return cross_entropy_terms(out.s_clean, out.y)


PGDAT_STARTS = {"gauss": "gauss_clamped", "uniform": "uniform"}


class PGDAT(Method):
    name = "PGDAT"
    summary = ("Madry PGD adversarial training: cross-entropy on PGD examples (student in eval during the attack; "
               "start x + 0.001 N(0, I) clamped, as the released PGD-AT baseline)")
    paper = "Towards Deep Learning Models Resistant to Adversarial Attacks (Madry et al., ICLR 2018)"
    attack = AttackSpec(inner_loss=ce_sum, init="gauss_clamped", train_mode=False)
    # S(x) only feeds the released code's logged accuracy, but its train() pass moves BatchNorm.
    forwards = ("s_adv", "s_clean")
    options = {"pgdat_start": Option("gauss", choices=tuple(PGDAT_STARTS),
                                     help="the attack's start: 'gauss' x + 0.001 N(0, I) clamped to [0,1] (the "
                                          "released PGD-AT baseline of the AdaAD/DGAD code), 'uniform' "
                                          "x + U(-eps, eps) (Madry et al.)")}
    parts = ("ce",)
    recipe = released(f"{PLAIN_BASELINES} (Plain_Madry with its 110-epoch schedule)", 110, (100, 105), 5e-4)

    def __init__(self, config):
        super().__init__(config)
        self.attack = AttackSpec(inner_loss=ce_sum, init=PGDAT_STARTS[config.options["pgdat_start"]])

    def loss(self, out):
        return cross_entropy_terms(out.s_adv, out.y)


class TRADES(Method):
    name = "TRADES"
    summary = ("Clean cross-entropy plus beta * KL from the clean to the adversarial prediction; the attack "
               "maximises that KL against the student's clean output (gauss start, eval)")
    paper = ("Theoretically Principled Trade-off between Robustness and Accuracy (Zhang et al., ICML 2019)")
    attack = AttackSpec(inner_loss=kl_sum, init="gauss", train_mode=False, target="student_clean")
    # CE on S(x), then the KL from a second S(x) pass to S(x'), evaluated S(x') first: S(x), S(x'), S(x).
    forwards = ("s_clean", "s_adv", "s_clean")
    options = {"trades_beta": Option(6.0, type=float, low=0, help="TRADES beta: weight of the robustness KL term")}
    parts = ("ce", "kl")
    # train_trades_cifar10.py: epsilon 0.031, step 0.007, x0.1 from epoch 75 (counting from 1) of 76;
    # its further decays at 90 and 100 are never reached.
    recipe = released("yaodongyu/TRADES train_trades_cifar10.py", 76, (74,), 2e-4, epsilon=round(0.031 * 255, 6),
                      step_size=round(0.007 * 255, 6))

    def __init__(self, config):
        super().__init__(config)
        self.beta = config.options["trades_beta"]

    def loss(self, out):
        return trades_terms(out.s_clean, out.s_adv, out.y, beta=self.beta)
