"""The adversarial distillation baselines of docs/methods.md sections 3.4-3.8: ARD, IAD, RSLAD
and AdaAD.

`--kl_reduction authors` (the default) reduces each method's KL as its released code does;
`batchmean` sums over classes and averages over samples for all of them."""
from attacks import ce_sum, kl_sum
from losses import adaad_terms, ard_terms, iad_terms, rslad_terms

from .base import AttackSpec, Method, Option
from .plugins import IGDM_OPTIONS, IGDMTerm
from .recipes import released

KL_REDUCTION = Option(
    "authors", choices=("authors", "batchmean"),
    help="reduction of the distillation KL: 'authors' as each method's released code (ARD and RSLAD: mean "
         "over the N*C entries, RSLAD x10 on CIFAR-100; AdaAD: mean over N*C on CIFAR-10, per-sample mean on "
         "CIFAR-100 and Tiny ImageNet); 'batchmean': summed over classes, averaged over samples")
TEMPERATURE_HELP = "softmax temperature tau of the teacher-to-student KL, which is scaled by tau^2"
ALPHA_HELP = ("alpha: weight of the distillation terms; 1 - alpha weighs CE(S(x), y) on clean inputs "
              "(alpha = 1: no cross-entropy)")
# ARD and IAD attack alike: PGD on the student's cross-entropy, student in train() mode, so the
# attack's forward passes update its BatchNorm running statistics, from x + U(-eps, eps) not
# clamped to [0,1] before the first step (as the authors' code does).
CE_TRAIN_MODE_ATTACK = AttackSpec(inner_loss=ce_sum, init="uniform_unclamped", train_mode=True)


def entries_unless_batchmean(options) -> str:
    return "batchmean" if options["kl_reduction"] == "batchmean" else "entries"


class ARD(Method):
    name = "ARD"
    summary = ("alpha * tau^2 * KL(teacher on clean || student on adversarial) + (1 - alpha) * clean CE; "
               "CE attack with the student in train() mode")
    paper = "Adversarially Robust Distillation (Goldblum et al., AAAI 2020)"
    needs_teacher = True
    attack = CE_TRAIN_MODE_ATTACK
    # S(x') then S(x), as in the authors' code: the S(x) pass moves the BatchNorm statistics even
    # when alpha = 1 leaves it out of the loss.
    forwards = ("s_adv", "t_clean", "s_clean")
    options = {"temp": Option(30.0, type=float, low=0, low_open=True, help=TEMPERATURE_HELP),
               "ARD_alpha": Option(1.0, type=float, low=0, high=1, help=ALPHA_HELP),
               "kl_reduction": KL_REDUCTION, **IGDM_OPTIONS}
    plugins = (IGDMTerm,)
    parts = ("kl", "ce")
    # Its schedule code sets 0.01 from epoch 100 on (counting from 0) and never lower: the second
    # milestone of its default [100, 150] sets 0.01 again.
    recipe = released("goldblum/AdversariallyRobustDistillation main.py", 200, (100,), 2e-4,
                      bs_by_dataset={"CIFAR100": 256})

    def __init__(self, config):
        super().__init__(config)
        o = config.options
        self.alpha, self.temperature, self.reduction = o["ARD_alpha"], o["temp"], entries_unless_batchmean(o)

    def loss(self, out):
        return ard_terms(out.s_clean, out.s_adv, out.t_clean, out.y, alpha=self.alpha,
                         temperature=self.temperature, reduction=self.reduction)


def introspection_on(epoch: int, begin: int) -> bool:
    """IAD's warm-up switch for 1-based `epoch`: the authors' 0-based loop tests epoch >= begin,
    so with begin = 60 the first 60 epochs are plain ARD and epoch 61 is the first with the term."""
    return epoch - 1 >= begin


class IAD(Method):
    name = "IAD"
    summary = ("IAD-I: the ARD loss (tau 1, per-sample mean) plus, after --IAD_begin epochs, a self-distillation "
               "KL(student clean || student adversarial) weighted by 1 - (teacher's adversarial prob. of y)^beta")
    paper = "Reliable Adversarial Distillation with Unreliable Teachers (Zhu et al., ICLR 2022)"
    needs_teacher = True
    attack = CE_TRAIN_MODE_ATTACK
    # The released IAD-I code: T(x), the attack, S(x'), an unused S(x') (both train() passes move
    # BatchNorm), T(x'), then after the warm-up S(x) as the introspection target, and an S(x) for
    # the (1 - alpha) CE term, computed even at alpha = 1.
    forwards = ("t_clean", "s_adv", "s_adv", "t_adv", "s_clean")
    options = {"temp": Option(1.0, type=float, low=0, low_open=True, help=TEMPERATURE_HELP),
               "ARD_alpha": Option(1.0, type=float, low=0, high=1, help=ALPHA_HELP),
               "IAD_begin": Option(60, type=int, low=0,
                                   help="warm-up: the introspection term is off for the first IAD_begin epochs "
                                        "and on from epoch IAD_begin + 1 (counting from 1)"),
               "IAD_beta": Option(0.1, type=float, low=0,
                                  help="IAD's beta, the exponent of the teacher's trust w_i = P_T(y_i | x'_i)^beta; "
                                       "the introspection term weighs sample i by 1 - w_i"),
               **IGDM_OPTIONS}
    plugins = (IGDMTerm,)
    parts = ("ard", "introspection")
    recipe = released("ZFancy/IAD IAD-I.py (ARD's schedule code)", 200, (100,), 2e-4)

    def __init__(self, config):
        super().__init__(config)
        o = config.options
        self.alpha, self.temperature, self.beta, self.begin = o["ARD_alpha"], o["temp"], o["IAD_beta"], o["IAD_begin"]

    def forward_sequence(self, epoch):
        return self.forwards + ("s_clean",) if introspection_on(epoch, self.begin) else self.forwards

    @staticmethod
    def distillation_target(out):
        """The teacher's logits the student's adversarial prediction distils: T(x), as ARD's."""
        return out.t_clean

    def loss(self, out):
        return iad_terms(out.s_clean, out.s_adv, self.distillation_target(out), out.t_adv, out.y, alpha=self.alpha,
                         temperature=self.temperature, beta=self.beta,
                         introspect=introspection_on(out.epoch, self.begin))


class RSLAD(Method):
    name = "RSLAD"
    summary = ("(5/6) KL(teacher clean || student adversarial) + (1/6) KL(teacher clean || student clean); "
               "the attack maximises the first KL (gauss start, eval)")
    paper = ("Revisiting Adversarial Robustness Distillation: Robust Soft Labels Make Student Better "
             "(Zi et al., ICCV 2021)")
    needs_teacher = True
    attack = AttackSpec(inner_loss=kl_sum, init="gauss", train_mode=False, target="teacher_clean")
    forwards = ("s_adv", "s_clean", "t_clean")
    options = {"kl_reduction": KL_REDUCTION, **IGDM_OPTIONS}
    plugins = (IGDMTerm,)
    parts = ("kl_adv", "kl_clean")
    recipe = released("zibojia/RSLAD resnet18_rslad_cifar10.py", 300, (215, 260, 285), 2e-4)

    def __init__(self, config):
        super().__init__(config)
        self.reduction = entries_unless_batchmean(config.options)
        # The authors' CIFAR-100 code multiplies the N*C-mean loss by 10.
        self.scale = 10.0 if self.reduction == "entries" and config.dataset == "CIFAR100" else 1.0

    def loss(self, out):
        return rslad_terms(out.s_clean, out.s_adv, out.t_clean, reduction=self.reduction, scale=self.scale)


class AdaAD(Method):
    name = "AdaAD"
    summary = ("alpha * KL(teacher || student) on adversarial inputs found by maximising that KL through both "
               "networks (gauss start, eval) + (1 - alpha) * the same KL on clean inputs")
    paper = ("Boosting Accuracy and Robustness of Student Models via Adaptive Adversarial Distillation "
             "(Huang et al., CVPR 2023)")
    needs_teacher = True
    attack = AttackSpec(inner_loss=kl_sum, init="gauss", train_mode=False, target="teacher")
    # S(x) runs even when alpha = 1, as in the authors' code (its train() pass moves BatchNorm).
    forwards = ("s_clean", "s_adv", "t_clean", "t_adv")
    options = {"AdaAD_alpha": Option(1.0, type=float, low=0, high=1,
                                     help="alpha: weight of the adversarial KL; 1 - alpha weighs the clean KL"),
               "kl_reduction": KL_REDUCTION, **IGDM_OPTIONS}
    plugins = (IGDMTerm,)
    parts = ("kl_adv", "kl_clean")
    # Its main.py defaults to epsilon 16 and step 4; the paper's CIFAR runs, and this default, use 8 and 2.
    recipe = released("boyellow/AdaAD main.py", 200, (100, 150), 5e-4)

    def __init__(self, config):
        super().__init__(config)
        o = config.options
        self.alpha = o["AdaAD_alpha"]
        authors_entries = o["kl_reduction"] == "authors" and config.dataset == "CIFAR10"
        self.reduction = "entries" if authors_entries else "batchmean"

    def loss(self, out):
        return adaad_terms(out.s_clean, out.s_adv, out.t_clean, out.t_adv, alpha=self.alpha,
                           reduction=self.reduction)


class AdaIAD(IAD):
    name = "AdaIAD"
    summary = ("AdaAD's attack; alpha tau^2 KL(T(x') || S(x')) + (1 - alpha) CE(S(x), y), plus after --IAD_begin "
               "epochs IAD's introspection KL(S(x) || S(x')) weighted by 1 - P_T(y | x')^beta")
    paper = ("AdaAD with IAD's introspection (Huang et al., CVPR 2023: the AdaAD_with_IAD1 method of its released "
             "code)")
    attack = AdaAD.attack
    # main.py's AdaAD_with_IAD1: S(x), S(x'), T(x'), then after the warm-up S(x) as the introspection
    # target, and S(x) for the (1 - alpha) CE term, computed even at alpha = 1.
    forwards = ("s_clean", "s_adv", "t_adv", "s_clean")
    options = {"temp": Option(30.0, type=float, low=0, low_open=True, help=TEMPERATURE_HELP),
               "ARD_alpha": IAD.options["ARD_alpha"], "IAD_begin": IAD.options["IAD_begin"],
               "IAD_beta": IAD.options["IAD_beta"], **IGDM_OPTIONS}
    # Its main.py defaults to epsilon 16 and step 4, as for AdaAD; the paper's CIFAR runs use 8 and 2.
    recipe = released("boyellow/AdaAD main.py (AdaAD_with_IAD1)", 200, (100, 150), 5e-4)

    @staticmethod
    def distillation_target(out):
        """IAD's loss with the teacher's adversarial prediction T(x') as the distillation target."""
        return out.t_adv
