"""SAAD as its released saad.py trains it (docs/methods.md section 3.14): per-sample weights from the
teacher's entropy on the adversarial example (which the loss's target needs anyway: no extra
forward), an attack against a first-order estimate of the teacher at x', IGDM's term inside the
weighted sum, and SWA of the student from epoch 95 (counting from 1) on."""
from attacks import kl_sum
from losses import saad_terms

from .base import AttackSpec, Method, Option
from .plugins import IGDM_OPTIONS
from .recipes import released

SWA_EPOCH = 95  # saad.py's --swa_epoch: the first epoch (from 1) whose weights join the average


class SAAD(Method):
    name = "SAAD"
    summary = ("(1/N) sum_i w_i (KL(T(x') || S(x')) + a KL_IGDM) + beta (1 - w~_i) KL(T(x) || S(x)), w from the "
               "teacher's entropy on x'; the attack targets T(x) moved to first order along its input gradient; SWA")
    paper = "Sample-wise adaptive adversarial distillation, SAAD (Lee et al., 2025; HongsinLee/saad)"
    needs_teacher = True
    # The options' values are bound per run in __init__ (the Taylor coefficient is one of them).
    attack = AttackSpec(inner_loss=kl_sum, init="gauss", train_mode=False, target="teacher_taylor")
    # saad.py: T(x) (before the attack; here the attack target's own T(x) pass), the attack, T(x'),
    # T(x - d), then S(x'), S(x - d), S(x) in train().
    forwards = ("t_clean", "t_adv", "t_minus", "s_adv", "s_minus", "s_clean")
    options = {
        "saad_scale": Option(5.0, type=float, low=0, help="SAAD: scale of the entropy weights ('entropy_scale')"),
        "saad_beta": Option(0.0, type=float, low=0,
                            help="SAAD: weight of the clean KL term, by 1 - the rescaled weight (its main.sh: 0)"),
        "saad_lambda": Option(1.0, type=float,
                              help="SAAD: the attack target's first-order coefficient ('lambda_inner')"),
        "igdm_alpha": IGDM_OPTIONS["igdm_alpha"],
    }
    parts = ("kl_adv", "kl_clean", "igdm", "w_mean", "w_max")
    recipe = released("HongsinLee/saad saad.py, main.sh", 200, (100, 150), 2e-4)

    @classmethod
    def swa_start(cls, args) -> int:
        """saad.py averages at the end of every epoch from its --swa_epoch 95 on, counting from 1: after
        the first 94. A run of another length starts at the same fraction of it, as its milestones do
        (rounded up), and averages at least its last epoch."""
        first_averaged = -(-SWA_EPOCH * args.epochs // cls.recipe.epochs)
        return max(first_averaged - 1, 1)

    def __init__(self, config):
        super().__init__(config)
        o = config.options
        self.attack = AttackSpec(inner_loss=kl_sum, init="gauss", train_mode=False, target="teacher_taylor",
                                 taylor=o["saad_lambda"])
        self.scale, self.beta, self.igdm_alpha, self.epochs = o["saad_scale"], o["saad_beta"], o["igdm_alpha"], \
            config.epochs

    def loss(self, out):
        return saad_terms(out.s_clean, out.s_adv, out.s_minus, out.t_clean, out.t_adv, out.t_minus,
                          igdm_weight=self.igdm_alpha * out.epoch / self.epochs, scale=self.scale, beta=self.beta)
