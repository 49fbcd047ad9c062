"""Every method of SPEC section 2 and 3: losses against values computed by hand (pure-Python math),
the attack each one trains on, and how its options resolve on the command line."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import advkd.methods.base as method_base
from advkd.attacks import ce_sum, kl_sum, module_mode
from advkd.cli import build_parser, resolve
from advkd.data import Split
from advkd.errors import UserError
from advkd.evaluation import FeatureMoments, attack_accuracy
from advkd.losses import (adaad_loss, ard_loss, batch_covariance, covariance_alignment, gram_alignment, iad_loss,
                          kl_reduced, rslad_loss, trades_loss)
from advkd.methods import StepOutputs, get_method, method_names, training_step
from advkd.methods.distillation import introspection_on

CIFAR_DEFAULTS = {"dataset": "CIFAR10", "datasets": ["CIFAR10", "CIFAR100"], "teacher_model": "wideresnet34_10"}


# -- hand references: plain Python floats, no torch ------------------------------------------------

def softmax(row, temperature=1.0):
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def kl(target_row, row, temperature=1.0):
    p, q = softmax(target_row, temperature), softmax(row, temperature)
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def ce(row, label):
    return -math.log(softmax(row)[label])


def mean(values):
    return sum(values) / len(values)


def tensor(rows, grad=False):
    return torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


def config(method, *flags, dataset="CIFAR10"):
    """The resolved command-line config of `method`, as main.py would build it."""
    args = ["--method", method, "--dataset", dataset, "--model", "wideresnet10_1", "--teacher_model",
            "wideresnet10_1", "--bs", "4", *flags]
    return resolve(build_parser(CIFAR_DEFAULTS, "test").parse_args(args))


# N = 2 samples, C = 3 classes.
Y = [0, 2]
S_CLEAN = [[1.0, 0.0, -1.0], [0.5, 0.0, 0.25]]
S_ADV = [[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]]
T_CLEAN = [[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]]
T_ADV = [[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]]
N, C = 2, 3


def outputs(epoch=1, features=None, extra=None):
    return StepOutputs(y=torch.tensor(Y), batch_size=4, epoch=epoch, s_clean=tensor(S_CLEAN, True),
                       s_adv=tensor(S_ADV, True), t_clean=tensor(T_CLEAN, True), t_adv=tensor(T_ADV, True),
                       features=features or {}, extra=extra)


def close(value, expected):
    return math.isclose(float(value.detach()), expected, rel_tol=1e-12, abs_tol=1e-15)


# -- Natural, PGD-AT, TRADES ----------------------------------------------------------------------

def test_natural_and_pgdat_are_mean_cross_entropy_on_clean_and_adversarial_logits():
    out = outputs()
    assert close(get_method("Natural").loss(out, config("Natural")), mean([ce(S_CLEAN[i], Y[i]) for i in range(N)]))
    assert close(get_method("PGDAT").loss(out, config("PGDAT")), mean([ce(S_ADV[i], Y[i]) for i in range(N)]))


@pytest.mark.parametrize("flags, beta", [((), 6.0), (("--trades_beta", "0.5"), 0.5)])
def test_trades_loss_by_hand(flags, beta):
    cfg = config("TRADES", *flags)
    assert cfg.trades_beta == beta and isinstance(cfg.trades_beta, float)
    expected = (mean([ce(S_CLEAN[i], Y[i]) for i in range(N)])
                + beta * mean([kl(S_CLEAN[i], S_ADV[i]) for i in range(N)]))
    assert close(get_method("TRADES").loss(outputs(), cfg), expected)


def test_trades_kl_keeps_the_gradient_of_its_clean_target():
    # d/ds_j KL(softmax(s) || softmax(s')) = p_j (log p_j - log q_j - KL), here averaged over N = 2.
    s_clean, s_adv = tensor(S_CLEAN, True), tensor(S_ADV, True)
    y = torch.tensor(Y)
    robust_part = trades_loss(s_clean, s_adv, y, beta=1.0) - F.cross_entropy(s_clean, y)
    (grad,) = torch.autograd.grad(robust_part, s_clean)
    for i in range(N):
        p, q = softmax(S_CLEAN[i]), softmax(S_ADV[i])
        divergence = kl(S_CLEAN[i], S_ADV[i])
        for j in range(C):
            assert math.isclose(grad[i, j].item(), p[j] * (math.log(p[j]) - math.log(q[j]) - divergence) / N,
                                rel_tol=1e-9, abs_tol=1e-15)


# -- ARD, IAD -------------------------------------------------------------------------------------

def test_ard_loss_reductions_temperature_and_alpha_by_hand():
    s_clean, s_adv, t_clean, y = tensor(S_CLEAN), tensor(S_ADV), tensor(T_CLEAN), torch.tensor(Y)
    kl_sum_tau2 = sum(kl(T_CLEAN[i], S_ADV[i], 2.0) for i in range(N))
    ce_clean = mean([ce(S_CLEAN[i], Y[i]) for i in range(N)])
    assert close(ard_loss(s_clean, s_adv, t_clean, y, 1.0, 2.0, "entries"), 4 * kl_sum_tau2 / (N * C))
    assert close(ard_loss(s_clean, s_adv, t_clean, y, 1.0, 2.0, "batchmean"), 4 * kl_sum_tau2 / N)
    assert close(ard_loss(s_clean, s_adv, t_clean, y, 0.75, 2.0, "entries"),
                 0.75 * 4 * kl_sum_tau2 / (N * C) + 0.25 * ce_clean)


@pytest.mark.parametrize("flags, divisor", [((), N * C), (("--kl_reduction", "batchmean"), N)])
def test_ard_method_defaults_tau_30_alpha_1_and_reduction(flags, divisor):
    cfg = config("ARD", *flags)
    assert (cfg.temp, cfg.ARD_alpha) == (30.0, 1.0)
    expected = 900 * sum(kl(T_CLEAN[i], S_ADV[i], 30.0) for i in range(N)) / divisor
    assert close(get_method("ARD").loss(outputs(), cfg), expected)


def iad_trust(i, beta):
    return softmax(T_ADV[i])[Y[i]] ** beta


def test_iad_warm_up_switch_and_its_defaults():
    cfg = config("IAD")
    assert (cfg.temp, cfg.ARD_alpha, cfg.IAD_begin, cfg.IAD_beta) == (1.0, 1.0, 60, 0.1)
    ard_part = mean([kl(T_CLEAN[i], S_ADV[i]) for i in range(N)])  # tau 1, per-sample mean
    introspection = mean([(1 - iad_trust(i, 0.1)) * kl(S_CLEAN[i], S_ADV[i]) for i in range(N)])
    method = get_method("IAD")
    assert not introspection_on(60, 60) and introspection_on(61, 60)
    assert close(method.loss(outputs(epoch=1), cfg), ard_part)
    assert close(method.loss(outputs(epoch=60), cfg), ard_part)  # 0-based epoch 59 < begin
    assert close(method.loss(outputs(epoch=61), cfg), ard_part + introspection)
    cfg.IAD_begin = 0
    assert close(method.loss(outputs(epoch=1), cfg), ard_part + introspection)


def test_iad_loss_with_alpha_temperature_and_beta_by_hand():
    cfg = config("IAD", "--ARD_alpha", "0.5", "--temp", "2", "--IAD_beta", "0.5", "--IAD_begin", "3")
    expected = (0.5 * 4 * mean([kl(T_CLEAN[i], S_ADV[i], 2.0) for i in range(N)])
                + 0.5 * mean([(1 - iad_trust(i, 0.5)) * kl(S_CLEAN[i], S_ADV[i]) for i in range(N)])
                + 0.5 * mean([ce(S_CLEAN[i], Y[i]) for i in range(N)]))
    assert close(get_method("IAD").loss(outputs(epoch=4), cfg), expected)


def test_iad_trust_weights_carry_no_gradient_and_the_self_target_keeps_its_own():
    out = outputs()
    args = (out.s_clean, out.s_adv, out.t_clean, out.t_adv, out.y)
    loss = iad_loss(*args, alpha=1.0, temperature=1.0, beta=0.1, introspect=True)
    grad_s_clean, grad_t_adv = torch.autograd.grad(loss, [out.s_clean, out.t_adv], allow_unused=True)
    assert grad_t_adv is None
    assert grad_s_clean.abs().sum() > 0
    warm_up = iad_loss(*args, alpha=1.0, temperature=1.0, beta=0.1, introspect=False)
    assert torch.autograd.grad(warm_up, [out.s_clean], allow_unused=True) == (None,)


# -- RSLAD, AdaAD ---------------------------------------------------------------------------------

def rslad_by_hand(divisor):
    return (5 / 6 * sum(kl(T_CLEAN[i], S_ADV[i]) for i in range(N))
            + 1 / 6 * sum(kl(T_CLEAN[i], S_CLEAN[i]) for i in range(N))) / divisor


@pytest.mark.parametrize("dataset, flags, expected", [
    ("CIFAR10", (), rslad_by_hand(N * C)),
    ("CIFAR100", (), 10 * rslad_by_hand(N * C)),  # the authors' CIFAR-100 code scales the N*C mean by 10
    ("CIFAR10", ("--kl_reduction", "batchmean"), rslad_by_hand(N)),
    ("CIFAR100", ("--kl_reduction", "batchmean"), rslad_by_hand(N)),
])
def test_rslad_loss_by_hand(dataset, flags, expected):
    assert close(get_method("RSLAD").loss(outputs(), config("RSLAD", *flags, dataset=dataset)), expected)


def test_rslad_and_adaad_never_send_gradient_into_the_teacher():
    out = outputs()
    for loss in (rslad_loss(out.s_clean, out.s_adv, out.t_clean, "entries"),
                 adaad_loss(out.s_clean, out.s_adv, out.t_clean, out.t_adv, 0.5, "entries")):
        assert torch.autograd.grad(loss, [out.t_clean, out.t_adv], allow_unused=True) == (None, None)


def adaad_by_hand(alpha, divisor):
    return (alpha * sum(kl(T_ADV[i], S_ADV[i]) for i in range(N))
            + (1 - alpha) * sum(kl(T_CLEAN[i], S_CLEAN[i]) for i in range(N))) / divisor


@pytest.mark.parametrize("dataset, flags, expected", [
    ("CIFAR10", (), adaad_by_hand(1.0, N * C)),
    ("CIFAR100", (), adaad_by_hand(1.0, N)),  # the authors use the per-sample mean on CIFAR-100
    ("CIFAR10", ("--kl_reduction", "batchmean"), adaad_by_hand(1.0, N)),
    ("CIFAR10", ("--AdaAD_alpha", "0.25"), adaad_by_hand(0.25, N * C)),
])
def test_adaad_loss_by_hand(dataset, flags, expected):
    assert close(get_method("AdaAD").loss(outputs(), config("AdaAD", *flags, dataset=dataset)), expected)


def test_adaad_on_tiny_imagenet_uses_the_per_sample_mean():
    cfg = config("AdaAD")
    cfg.dataset = "Tiny_Image"
    assert close(get_method("AdaAD").loss(outputs(), cfg), adaad_by_hand(1.0, N))


def test_kl_reduced_rejects_an_unknown_reduction():
    with pytest.raises(ValueError, match="reduction"):
        kl_reduced(tensor(T_CLEAN), tensor(S_ADV), "sum")


# -- VarGap ---------------------------------------------------------------------------------------

def test_covariance_and_gram_alignment_by_hand():
    # Cov of rows (1,0), (3,2): centred +-(1,1), /(N-1) = [[2,2],[2,2]]; of (0,0), (1,1): [[.5,.5],[.5,.5]].
    student, teacher = tensor([[1.0, 0.0], [3.0, 2.0]]), tensor([[0.0, 0.0], [1.0, 1.0]])
    assert batch_covariance(student).tolist() == [[2.0, 2.0], [2.0, 2.0]]
    assert close(covariance_alignment(student, teacher), 4 * 1.5 ** 2 / 2 ** 2)
    # Normalised rows: student (1,0), (0,1) -> G = I; teacher (1,0), (1,0) -> G = all ones.
    assert close(gram_alignment(tensor([[2.0, 0.0], [0.0, 3.0]]), tensor([[1.0, 0.0], [5.0, 0.0]])), 2 / 2 ** 2)


def covariance_by_hand(rows):
    n, d = len(rows), len(rows[0])
    means = [mean([r[k] for r in rows]) for k in range(d)]
    return [[sum((r[a] - means[a]) * (r[b] - means[b]) for r in rows) / (n - 1) for b in range(d)] for a in range(d)]


def gram_by_hand(rows):
    unit = [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in rows]
    return [[sum(a * b for a, b in zip(r, s)) for s in unit] for r in unit]


def squared_distance(a, b):
    return sum((x - y) ** 2 for ra, rb in zip(a, b) for x, y in zip(ra, rb))


FEATURES = {"s_clean": [[1.0, 0.5], [0.0, 2.0]], "s_adv": [[2.0, 1.0], [1.0, 0.0]],
            "t_clean": [[0.5, 1.5, 0.0], [1.0, 0.0, 2.0]], "t_adv": [[0.0, 1.0, 1.0], [3.0, 0.5, 0.0]]}
PROJECTOR = [[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]]  # (d_T = 3, d_S = 2)


def vargap_alignment_by_hand(cov_weight, gram_weight):
    total = 0.0
    for s, t in (("s_clean", "t_clean"), ("s_adv", "t_adv")):
        projected = [[sum(w * v for w, v in zip(row, f)) for row in PROJECTOR] for f in FEATURES[s]]
        total += cov_weight * squared_distance(covariance_by_hand(projected), covariance_by_hand(FEATURES[t])) / 9
        total += gram_weight * squared_distance(gram_by_hand(FEATURES[s]), gram_by_hand(FEATURES[t])) / N ** 2
    return total


class TinyNet(nn.Module):
    """conv -> BatchNorm -> ReLU -> pool -> linear, with the `return_features` interface of every model."""

    def __init__(self, width=4, num_classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)
        self.feature_dim = width

    def forward(self, x, return_features=False):
        features = F.relu(self.bn(self.conv(x))).mean((2, 3))
        logits = self.fc(features)
        return (logits, features) if return_features else logits


def vargap_with_projector(cfg):
    method = get_method("VarGap")
    projector = method.extra_module(TinyNet(width=2), TinyNet(width=3))
    assert tuple(projector.weight.shape) == (3, 2) and projector.bias is None
    with torch.no_grad():
        projector.weight.copy_(torch.tensor(PROJECTOR))
    projector.double()
    return method.for_config(cfg), projector


def features():
    return {key: tensor(rows, True) for key, rows in FEATURES.items()}


@pytest.mark.parametrize("flags, cov_weight, gram_weight", [
    ((), 1.0, 0.0), (("--vg_cov", "2", "--vg_gram", "0.5"), 2.0, 0.5), (("--vg_cov", "0", "--vg_gram", "3"), 0.0, 3.0)])
def test_vargap_loss_is_rslad_plus_alignment_by_hand(flags, cov_weight, gram_weight):
    cfg = config("VarGap", *flags)
    assert (cfg.vg_base, cfg.kl_reduction) == ("RSLAD", "authors")
    method, projector = vargap_with_projector(cfg)
    expected = rslad_by_hand(N * C) + vargap_alignment_by_hand(cov_weight, gram_weight)
    assert math.isclose(method.loss(outputs(features=features(), extra=projector), cfg).item(), expected,
                        rel_tol=1e-9)


def test_vargap_with_another_base_uses_its_attack_loss_and_options():
    cfg = config("VarGap", "--vg_base", "ARD", "--temp", "2", "--vg_cov", "0.5")
    assert (cfg.temp, cfg.ARD_alpha, cfg.kl_reduction) == (2.0, 1.0, "authors")
    method, projector = vargap_with_projector(cfg)
    assert method.attack is get_method("ARD").attack
    assert set(method.forwards) == {"s_clean", "s_adv", "t_clean", "t_adv"} and method.with_features
    expected = 4 * sum(kl(T_CLEAN[i], S_ADV[i], 2.0) for i in range(N)) / (N * C) + vargap_alignment_by_hand(0.5, 0)
    assert math.isclose(method.loss(outputs(features=features(), extra=projector), cfg).item(), expected,
                        rel_tol=1e-9)


def test_vargap_computes_its_alignment_in_fp32_from_bf16_features():
    cfg = config("VarGap", "--vg_gram", "1")
    method, projector = vargap_with_projector(cfg)
    projector.float()
    bf16 = {key: torch.tensor(rows, dtype=torch.bfloat16) for key, rows in FEATURES.items()}  # all exact in bf16
    expected = rslad_by_hand(N * C) + vargap_alignment_by_hand(1.0, 1.0)
    assert math.isclose(method.loss(outputs(features=bf16, extra=projector), cfg).item(), expected, rel_tol=1e-6)


def test_vargap_gradients_reach_the_student_and_projector_not_the_teacher():
    cfg = config("VarGap", "--vg_gram", "1")
    method, projector = vargap_with_projector(cfg)
    f = features()
    loss = method.loss(outputs(features=f, extra=projector), cfg)
    grads = torch.autograd.grad(loss, [f["s_clean"], f["s_adv"], f["t_clean"], f["t_adv"],
                                       projector.weight], allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in (grads[0], grads[1], grads[4]))
    assert grads[2] is None and grads[3] is None


def test_vargap_says_it_is_approximate_in_help_and_config():
    description = get_method("VarGap").describe()
    assert "approximate re-implementation" in description["summary"]
    assert "approximate re-implementation" in description["paper"]
    help_text = " ".join(build_parser(CIFAR_DEFAULTS, "test").format_help().split())
    for flag in ("--vg_base", "--vg_cov", "--vg_gram"):
        flag_help = help_text.rsplit(flag + " ", 1)[1][:200]  # the option list, not the usage line
        assert "approximate re-implementation" in flag_help, flag


# -- options on the command line ------------------------------------------------------------------

@pytest.mark.parametrize("method, flags, message", [
    ("RSLAD", ("--temp", "4"), "--temp is not used by --method RSLAD"),
    ("IAD", ("--kl_reduction", "batchmean"), "--kl_reduction is not used by --method IAD"),
    ("Natural", ("--trades_beta", "1"), "--trades_beta is not used by --method Natural"),
    ("TRADES", ("--vg_cov", "1"), "--vg_cov is not used by --method TRADES"),
    ("VarGap", ("--temp", "4"), "--temp is not used by --method VarGap"),  # the default base RSLAD has no tau
    ("VarGap", ("--vg_base", "TRADES", "--kl_reduction", "batchmean"), "--kl_reduction is not used"),
])
def test_an_option_the_method_does_not_read_is_rejected(method, flags, message):
    with pytest.raises(UserError, match=message):
        config(method, *flags)


def test_shared_option_names_keep_each_methods_default():
    assert config("ARD").temp == 30.0 and config("IAD").temp == 1.0
    assert config("VarGap", "--vg_base", "ARD").temp == 30.0
    assert config("VarGap", "--vg_base", "IAD").temp == 1.0
    assert config("VarGap", "--vg_base", "TRADES").trades_beta == 6.0
    assert config("RSLAD").kl_reduction == "authors"
    assert config("TRADES").kl_reduction is None
    help_text = " ".join(build_parser(CIFAR_DEFAULTS, "test").format_help().split())
    assert "[ARD: 30.0, IAD: 1.0]" in help_text and "[TRADES: 6.0]" in help_text
    assert "(default: None)" not in help_text


def test_every_method_is_registered():
    assert set(method_names()) >= {"Natural", "PGDAT", "TRADES", "ARD", "IAD", "RSLAD", "AdaAD", "DGAD", "VarGap"}
    assert [m for m in method_names() if get_method(m).needs_teacher is False] == ["Natural", "PGDAT", "TRADES"]


# -- the inner maximisation of each method (SPEC section 2) ---------------------------------------

ATTACKS = {  # inner loss, init, student BatchNorm in train() during the attack, reference
    "PGDAT": (ce_sum, "uniform", False, None),
    "TRADES": (kl_sum, "gauss", False, "student_clean"),
    "ARD": (ce_sum, "uniform", True, None),
    "IAD": (ce_sum, "uniform", True, None),
    "RSLAD": (kl_sum, "gauss", False, "teacher_clean"),
    "AdaAD": (kl_sum, "gauss", False, "teacher_adv"),
    "DGAD": (kl_sum, "gauss", False, "teacher_adv"),
    "VarGap": (kl_sum, "gauss", False, "teacher_clean"),  # its default base, RSLAD
}


def test_natural_has_no_attack():
    assert get_method("Natural").attack is None


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_configuration(name):
    spec = get_method(name).for_config(config(name)).attack
    assert (spec.inner_loss, spec.init, spec.train_mode, spec.reference) == ATTACKS[name]


def batch(n=4, size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=generator), torch.randint(0, 3, (n,), generator=generator)


def tiny_pair(seed=0):
    torch.manual_seed(seed)
    student, teacher = TinyNet(), TinyNet()
    teacher.eval().requires_grad_(False)
    return student, teacher


@pytest.mark.parametrize("name", ["Natural"] + sorted(ATTACKS))
def test_batchnorm_statistics_move_only_in_train_mode_attacks(name):
    """ARD and IAD attack with the student in train(): each of the K steps updates its BatchNorm
    running statistics; every other attack runs it in eval() and leaves them alone. The training
    forwards (one per student logit the loss reads) update them once each; the teacher never."""
    steps = 3
    cfg = config(name, "--num_steps", str(steps))
    method = get_method(name)
    student, teacher = tiny_pair()
    extra = method.extra_module(student, teacher)
    x, y = batch()
    training_step(method, student, teacher if method.needs_teacher else None, x, y, cfg, epoch=1, extra=extra)
    configured = method.for_config(cfg)
    student_forwards = len({"s_clean", "s_adv"} & set(configured.forwards))
    attack_updates = steps if configured.attack is not None and configured.attack.train_mode else 0
    assert student.bn.num_batches_tracked.item() == attack_updates + student_forwards
    assert teacher.bn.num_batches_tracked.item() == 0 and not teacher.training
    assert student.training


def test_ard_attack_moves_running_mean_and_rslad_attack_does_not():
    from advkd.attacks import pgd
    x, y = batch()
    for name, moves in (("ARD", True), ("RSLAD", False)):
        spec = get_method(name).attack
        student, teacher = tiny_pair()
        before = student.bn.running_mean.clone()
        reference = teacher(x) if spec.reference == "teacher_clean" else None
        pgd(student, x, y, eps=8 / 255, step_size=2 / 255, steps=2, loss_fn=spec.inner_loss, init=spec.init,
            reference=reference, train_mode=spec.train_mode)
        assert (not torch.equal(before, student.bn.running_mean)) == moves, name


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_reference_and_teacher(name, monkeypatch):
    """What the step hands the PGD engine: RSLAD the teacher's clean logits, TRADES the student's
    clean logits in eval() mode, AdaAD/DGAD the teacher itself (recomputed at x' every step)."""
    seen = {}

    def fake_pgd(model, x, y, **kwargs):
        seen.update(kwargs, model=model)
        return x.clone()

    monkeypatch.setattr(method_base, "pgd", fake_pgd)
    cfg = config(name)
    method = get_method(name)
    student, teacher = tiny_pair()
    extra = method.extra_module(student, teacher)
    x, y = batch()
    with torch.no_grad(), module_mode(student, False):
        student_eval = student(x)
    training_step(method, student, teacher if method.needs_teacher else None, x, y, cfg, epoch=1, extra=extra)
    spec = ATTACKS[name]
    assert seen["model"] is student
    assert (seen["loss_fn"], seen["init"], seen["train_mode"]) == spec[:3]
    assert (seen["eps"], seen["step_size"], seen["steps"]) == (8 / 255, 2 / 255, 10)
    reference = {"teacher_clean": teacher(x), "student_clean": student_eval}.get(spec[3])
    if reference is None:
        assert seen["reference"] is None
    else:
        assert torch.allclose(seen["reference"], reference)
    assert seen["teacher"] is (teacher if spec[3] == "teacher_adv" else None)


# -- the variance gap of the per-epoch evaluation -------------------------------------------------

def test_attack_accuracy_accumulates_features_of_the_inputs_it_classifies():
    torch.manual_seed(0)
    model = TinyNet().eval()
    generator = torch.Generator().manual_seed(1)
    split = Split(torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8, generator=generator),
                  torch.randint(0, 3, (10,), generator=generator))
    calls = []

    def attack(m, x, y):
        calls.append(x.shape[0])
        return 1 - x

    clean_moments, adv_moments = FeatureMoments(), FeatureMoments()
    clean = attack_accuracy(model, split, 4, moments=clean_moments)
    robust = attack_accuracy(model, split, 4, attack=attack, moments=adv_moments)
    assert calls == [4, 4, 2]  # one attack per batch, none extra
    images = split.images.double() / 255
    model.double()
    with torch.no_grad():
        for moments, inputs, accuracy in ((clean_moments, images, clean), (adv_moments, 1 - images, robust)):
            logits, f = model(inputs, return_features=True)
            assert moments.count == 10
            assert math.isclose(moments.trace_cov(), f.var(0, unbiased=True).sum().item(), rel_tol=1e-5)
            assert accuracy == 100.0 * (logits.argmax(1) == split.labels).sum().item() / 10
