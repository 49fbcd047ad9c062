"""Every method of docs/methods.md sections 3 and 4: losses and their named parts against values
computed by hand (pure-Python math), the attack each one trains on, and how its options resolve on
the command line."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import methods.base as method_base
from attacks import ce_sum, kl_sum, module_mode
from data import Split
from evaluation.accuracy import FeatureMoments, attack_accuracy
from helpers import CIFAR_DEFAULTS, TinyNet, ce, kl, mean, softmax, train_config
from losses import (adaad_loss, ard_loss, batch_covariance, covariance_alignment, gram_alignment, iad_loss,
                    kl_reduced, rslad_loss, trades_loss)
from methods import METHODS, Method, MethodTable, StepOutputs, configure, get_method, method_names, training_step
from methods.distillation import introspection_on
from runtime.errors import UserError
from training.config import build_parser


def tensor(rows, grad=False):
    return torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


def config(method, *flags, dataset="CIFAR10"):
    """The resolved command-line config of `method`, as main.py would build it (B = 4)."""
    return train_config(method, *flags, dataset=dataset)


def loss_of(cfg, out):
    return configure(cfg).loss(out)["loss"]


# N = 2 samples, C = 3 classes.
Y = [0, 2]
S_CLEAN = [[1.0, 0.0, -1.0], [0.5, 0.0, 0.25]]
S_ADV = [[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]]
T_CLEAN = [[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]]
T_ADV = [[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]]
N, C = 2, 3


def outputs(epoch=1, features=None, extra=None):
    return StepOutputs(y=torch.tensor(Y), epoch=epoch, s_clean=tensor(S_CLEAN, True),
                       s_adv=tensor(S_ADV, True), t_clean=tensor(T_CLEAN, True), t_adv=tensor(T_ADV, True),
                       features=features or {}, extra=extra)


def close(value, expected):
    return math.isclose(float(value.detach()), expected, rel_tol=1e-12, abs_tol=1e-15)


# -- Natural, PGD-AT, TRADES ----------------------------------------------------------------------

def test_natural_and_pgdat_are_mean_cross_entropy_on_clean_and_adversarial_logits():
    out = outputs()
    assert close(loss_of(config("Natural"), out), mean([ce(S_CLEAN[i], Y[i]) for i in range(N)]))
    assert close(loss_of(config("PGDAT"), out), mean([ce(S_ADV[i], Y[i]) for i in range(N)]))


@pytest.mark.parametrize("flags, beta", [((), 6.0), (("--trades_beta", "0.5"), 0.5)])
def test_trades_loss_by_hand(flags, beta):
    cfg = config("TRADES", *flags)
    assert cfg.options["trades_beta"] == beta and isinstance(cfg.options["trades_beta"], float)
    expected = (mean([ce(S_CLEAN[i], Y[i]) for i in range(N)])
                + beta * mean([kl(S_CLEAN[i], S_ADV[i]) for i in range(N)]))
    assert close(loss_of(cfg, outputs()), expected)


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
    assert (cfg.options["temp"], cfg.options["ARD_alpha"]) == (30.0, 1.0)
    expected = 900 * sum(kl(T_CLEAN[i], S_ADV[i], 30.0) for i in range(N)) / divisor
    assert close(loss_of(cfg, outputs()), expected)


def iad_trust(i, beta):
    return softmax(T_ADV[i])[Y[i]] ** beta


def test_iad_warm_up_switch_and_its_defaults():
    cfg = config("IAD")
    assert [cfg.options[k] for k in ("temp", "ARD_alpha", "IAD_begin", "IAD_beta")] == [1.0, 1.0, 60, 0.1]
    ard_part = mean([kl(T_CLEAN[i], S_ADV[i]) for i in range(N)])  # tau 1, per-sample mean
    introspection = mean([(1 - iad_trust(i, 0.1)) * kl(S_CLEAN[i], S_ADV[i]) for i in range(N)])
    assert not introspection_on(60, 60) and introspection_on(61, 60)
    assert close(loss_of(cfg, outputs(epoch=1)), ard_part)
    assert close(loss_of(cfg, outputs(epoch=60)), ard_part)  # 0-based epoch 59 < begin
    assert close(loss_of(cfg, outputs(epoch=61)), ard_part + introspection)
    assert close(loss_of(config("IAD", "--IAD_begin", "0"), outputs(epoch=1)), ard_part + introspection)


def test_iad_loss_with_alpha_temperature_and_beta_by_hand():
    cfg = config("IAD", "--ARD_alpha", "0.5", "--temp", "2", "--IAD_beta", "0.5", "--IAD_begin", "3")
    expected = (0.5 * 4 * mean([kl(T_CLEAN[i], S_ADV[i], 2.0) for i in range(N)])
                + 0.5 * mean([(1 - iad_trust(i, 0.5)) * kl(S_CLEAN[i], S_ADV[i]) for i in range(N)])
                + 0.5 * mean([ce(S_CLEAN[i], Y[i]) for i in range(N)]))
    assert close(loss_of(cfg, outputs(epoch=4)), expected)


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
    assert close(loss_of(config("RSLAD", *flags, dataset=dataset), outputs()), expected)


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
    assert close(loss_of(config("AdaAD", *flags, dataset=dataset), outputs()), expected)


def test_adaad_on_tiny_imagenet_uses_the_per_sample_mean():
    cfg = dataclasses.replace(config("AdaAD"), dataset="Tiny_Image")
    assert close(loss_of(cfg, outputs()), adaad_by_hand(1.0, N))


def test_kl_reduced_rejects_an_unknown_reduction():
    with pytest.raises(ValueError, match="reduction"):
        kl_reduced(tensor(T_CLEAN), tensor(S_ADV), "sum")


# -- named parts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("method, flags, parts", [
    ("Natural", (), {"ce": mean([ce(S_CLEAN[i], Y[i]) for i in range(N)])}),
    ("PGDAT", (), {"ce": mean([ce(S_ADV[i], Y[i]) for i in range(N)])}),
    ("TRADES", (), {"ce": mean([ce(S_CLEAN[i], Y[i]) for i in range(N)]),
                    "kl": mean([kl(S_CLEAN[i], S_ADV[i]) for i in range(N)])}),
    ("ARD", ("--ARD_alpha", "0.5", "--temp", "2"),
     {"kl": sum(kl(T_CLEAN[i], S_ADV[i], 2.0) for i in range(N)) / (N * C),
      "ce": mean([ce(S_CLEAN[i], Y[i]) for i in range(N)])}),
    ("ARD", (), {"kl": sum(kl(T_CLEAN[i], S_ADV[i], 30.0) for i in range(N)) / (N * C), "ce": 0.0}),
    ("IAD", ("--IAD_begin", "0"), {"ard": mean([kl(T_CLEAN[i], S_ADV[i]) for i in range(N)]),
                                   "introspection": mean([(1 - softmax(T_ADV[i])[Y[i]] ** 0.1)
                                                          * kl(S_CLEAN[i], S_ADV[i]) for i in range(N)])}),
    ("IAD", (), {"ard": mean([kl(T_CLEAN[i], S_ADV[i]) for i in range(N)]), "introspection": 0.0}),
    ("RSLAD", (), {"kl_adv": sum(kl(T_CLEAN[i], S_ADV[i]) for i in range(N)) / (N * C),
                   "kl_clean": sum(kl(T_CLEAN[i], S_CLEAN[i]) for i in range(N)) / (N * C)}),
    ("AdaAD", ("--AdaAD_alpha", "0.25"), {"kl_adv": sum(kl(T_ADV[i], S_ADV[i]) for i in range(N)) / (N * C),
                                          "kl_clean": sum(kl(T_CLEAN[i], S_CLEAN[i]) for i in range(N)) / (N * C)}),
])
def test_loss_parts_by_hand(method, flags, parts):
    """Each method's named parts (logged per epoch as train_<part>): the unweighted terms of its
    formula, 0 where the configuration switches a term off."""
    configured = configure(config(method, *flags))
    terms = configured.loss(outputs(epoch=1))
    assert set(terms) == {"loss", *configured.parts} and set(configured.parts) == set(parts)
    for name, expected in parts.items():
        assert close(terms[name], expected), name


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


def vargap_with_projector(cfg):
    method = configure(cfg)
    projector = method.extra_module(TinyNet(width=2), TinyNet(width=3))
    assert tuple(projector.weight.shape) == (3, 2) and projector.bias is None
    with torch.no_grad():
        projector.weight.copy_(torch.tensor(PROJECTOR))
    projector.double()
    return method, projector


def features():
    return {key: tensor(rows, True) for key, rows in FEATURES.items()}


@pytest.mark.parametrize("flags, cov_weight, gram_weight", [
    ((), 1.0, 0.0), (("--vg_cov", "2", "--vg_gram", "0.5"), 2.0, 0.5), (("--vg_cov", "0", "--vg_gram", "3"), 0.0, 3.0)])
def test_vargap_loss_is_rslad_plus_alignment_by_hand(flags, cov_weight, gram_weight):
    cfg = config("VarGap", *flags)
    assert (cfg.options["vg_base"], cfg.options["kl_reduction"]) == ("RSLAD", "authors")
    method, projector = vargap_with_projector(cfg)
    expected = rslad_by_hand(N * C) + vargap_alignment_by_hand(cov_weight, gram_weight)
    assert math.isclose(method.loss(outputs(features=features(), extra=projector))["loss"].item(), expected,
                        rel_tol=1e-9)


def test_vargap_with_another_base_uses_its_attack_loss_and_options():
    cfg = config("VarGap", "--vg_base", "ARD", "--temp", "2", "--vg_cov", "0.5")
    assert [cfg.options[k] for k in ("temp", "ARD_alpha", "kl_reduction")] == [2.0, 1.0, "authors"]
    method, projector = vargap_with_projector(cfg)
    assert method.attack is get_method("ARD").attack and method.parts == ("kl", "ce", "cov", "gram")
    assert set(method.forwards) == {"s_clean", "s_adv", "t_clean", "t_adv"} and method.with_features
    expected = 4 * sum(kl(T_CLEAN[i], S_ADV[i], 2.0) for i in range(N)) / (N * C) + vargap_alignment_by_hand(0.5, 0)
    assert math.isclose(method.loss(outputs(features=features(), extra=projector))["loss"].item(), expected,
                        rel_tol=1e-9)


def test_vargap_computes_its_alignment_in_fp32_from_bf16_features():
    cfg = config("VarGap", "--vg_gram", "1")
    method, projector = vargap_with_projector(cfg)
    projector.float()
    bf16 = {key: torch.tensor(rows, dtype=torch.bfloat16) for key, rows in FEATURES.items()}  # all exact in bf16
    expected = rslad_by_hand(N * C) + vargap_alignment_by_hand(1.0, 1.0)
    assert math.isclose(method.loss(outputs(features=bf16, extra=projector))["loss"].item(), expected, rel_tol=1e-6)


def test_vargap_gradients_reach_the_student_and_projector_not_the_teacher():
    cfg = config("VarGap", "--vg_gram", "1")
    method, projector = vargap_with_projector(cfg)
    f = features()
    loss = method.loss(outputs(features=f, extra=projector))["loss"]
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
    assert config("ARD").options["temp"] == 30.0 and config("IAD").options["temp"] == 1.0
    assert config("VarGap", "--vg_base", "ARD").options["temp"] == 30.0
    assert config("VarGap", "--vg_base", "IAD").options["temp"] == 1.0
    assert config("VarGap", "--vg_base", "TRADES").options["trades_beta"] == 6.0
    assert config("RSLAD").options["kl_reduction"] == "authors"
    assert "kl_reduction" not in config("TRADES").options
    help_text = " ".join(build_parser(CIFAR_DEFAULTS, "test").format_help().split())
    assert "[ARD: 30.0, IAD: 1.0, AKD: 1.0, AdaIAD: 30.0, Fair-ARD: 30.0, Fair-IAD: 1.0]" in help_text and "[TRADES: 6.0]" in help_text
    assert "(default: None)" not in help_text


def test_every_method_is_registered():
    assert [m for m in method_names() if get_method(m).needs_teacher is False] == ["Natural", "PGDAT", "TRADES",
                                                                                    "PeerAiD"]


# -- the inner maximisation of each method (docs/methods.md sections 3 and 6.1) -------------------

ATTACKS = {  # inner loss, start, student BatchNorm in train() during the attack, target
    "PGDAT": (ce_sum, "gauss_clamped", False, "labels"),
    "TRADES": (kl_sum, "gauss", False, "student_clean"),
    "ARD": (ce_sum, "uniform_unclamped", True, "labels"),
    "IAD": (ce_sum, "uniform_unclamped", True, "labels"),
    "RSLAD": (kl_sum, "gauss", False, "teacher_clean"),
    "AdaAD": (kl_sum, "gauss", False, "teacher"),
    "DGAD": (kl_sum, "gauss", False, "teacher"),
    "VarGap": (kl_sum, "gauss", False, "teacher_clean"),  # its default base, RSLAD
}


def test_natural_has_no_attack():
    assert get_method("Natural").attack is None


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_configuration(name):
    spec = configure(config(name)).attack
    assert (spec.inner_loss, spec.init, spec.train_mode, spec.target) == ATTACKS[name]


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
    method = configure(config(name, "--num_steps", str(steps)))
    student, teacher = tiny_pair()
    extra = method.extra_module(student, teacher)
    x, y = batch()
    terms, _ = training_step(method, student, teacher if method.needs_teacher else None, x, y, epoch=1, extra=extra)
    student_forwards = sum(key.startswith("s_") for key in method.forward_sequence(1))
    attack_updates = steps if method.attack is not None and method.attack.train_mode else 0
    assert student.bn.num_batches_tracked.item() == attack_updates + student_forwards
    assert teacher.bn.num_batches_tracked.item() == 0 and not teacher.training
    assert student.training
    assert set(terms) == {"loss", *method.parts} and all(v.dim() == 0 for v in terms.values())


def test_ard_attack_moves_running_mean_and_rslad_attack_does_not():
    from attacks import pgd
    x, y = batch()
    for name, moves in (("ARD", True), ("RSLAD", False)):
        spec = get_method(name).attack
        student, teacher = tiny_pair()
        before = student.bn.running_mean.clone()
        target = teacher(x) if spec.target == "teacher_clean" else None
        pgd(student, x, y, eps=8 / 255, step_size=2 / 255, steps=2, loss_fn=spec.inner_loss, init=spec.init,
            target=target, train_mode=spec.train_mode)
        assert (not torch.equal(before, student.bn.running_mean)) == moves, name


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_target(name, monkeypatch):
    """What the step hands the PGD engine as its one target: RSLAD the teacher's clean logits,
    TRADES the student's clean logits in eval() mode, AdaAD/DGAD the teacher itself (evaluated at
    x' every step), PGD-AT/ARD/IAD nothing (labels only); and the run's attack generator."""
    seen = {}

    def fake_pgd(model, x, y, **kwargs):
        seen.update(kwargs, model=model)
        return x.clone()

    monkeypatch.setattr(method_base, "pgd", fake_pgd)
    method = configure(config(name))
    student, teacher = tiny_pair()
    extra = method.extra_module(student, teacher)
    x, y = batch()
    with torch.no_grad(), module_mode(student, False):
        student_eval = student(x)
    generator = torch.Generator()
    training_step(method, student, teacher if method.needs_teacher else None, x, y, epoch=1, extra=extra,
                  generator=generator)
    spec = ATTACKS[name]
    assert seen["model"] is student and seen["generator"] is generator
    assert (seen["loss_fn"], seen["init"], seen["train_mode"]) == spec[:3]
    budget = (0.031, 0.007, 10) if name == "TRADES" else (8 / 255, 2 / 255, 10)  # TRADES's released recipe
    assert (seen["eps"], seen["step_size"], seen["steps"]) == pytest.approx(budget, rel=1e-12)
    if spec[3] == "labels":
        assert seen["target"] is None
    elif spec[3] == "teacher":
        assert seen["target"] is teacher
    else:
        expected = teacher(x) if spec[3] == "teacher_clean" else student_eval
        assert torch.allclose(seen["target"], expected)


def test_pgdat_offers_madrys_uniform_start():
    assert configure(config("PGDAT", "--pgdat_start", "uniform")).attack.init == "uniform"
    assert configure(config("PGDAT")).attack.init == "gauss_clamped"


# Student passes as (mode, input) after the attack's K = 2 steps, from the released training code
# (docs/methods.md section 3): "x" the clean batch, "adv" the adversarial one.
K = 2
SEQUENCES = {
    "Natural": [("train", "x")],
    "PGDAT": [("eval", "adv")] * K + [("train", "adv"), ("train", "x")],
    "TRADES": [("eval", "x")] + [("eval", "adv")] * K + [("train", "x"), ("train", "adv"), ("train", "x")],
    "ARD": [("train", "adv")] * K + [("train", "adv"), ("train", "x")],
    "IAD": [("train", "adv")] * K + [("train", "adv"), ("train", "adv"), ("train", "x")],
    "RSLAD": [("eval", "adv")] * K + [("train", "adv"), ("train", "x")],
    "AdaAD": [("eval", "adv")] * K + [("train", "x"), ("train", "adv")],
    "DGAD": [("eval", "adv")] * K + [("train", "x"), ("train", "adv")],
}


def recorded_passes(name, epoch=1, *flags):
    """Run one step of `name` and record each student forward's mode and input."""
    method = configure(config(name, "--num_steps", str(K), *flags))
    student, teacher = tiny_pair()
    x, y = batch()
    seen = []

    def hook(module, args):
        kind = "x" if torch.equal(args[0], x) else "adv"
        seen.append(("train" if module.training else "eval", kind))
    handle = student.register_forward_pre_hook(hook)
    training_step(method, student, teacher if method.needs_teacher else None, x, y, epoch=epoch,
                  extra=method.extra_module(student, teacher), generator=torch.Generator().manual_seed(0))
    handle.remove()
    return seen


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_each_method_runs_the_released_codes_forward_sequence(name):
    assert recorded_passes(name) == SEQUENCES[name]


def test_iad_adds_the_introspection_target_pass_after_its_warm_up():
    assert recorded_passes("IAD", 61) == SEQUENCES["IAD"] + [("train", "x")]
    assert recorded_passes("IAD", 60) == SEQUENCES["IAD"]


def test_vargap_runs_its_bases_sequence_then_the_passes_it_lacks():
    method = configure(config("VarGap", "--vg_base", "TRADES"))
    assert method.forward_sequence(1) == ("s_clean", "s_adv", "s_clean", "t_clean", "t_adv")


@pytest.mark.parametrize("init, clamped", [("gauss", False), ("gauss_clamped", True), ("uniform", True),
                                           ("uniform_unclamped", False)])
def test_attack_starts_clamped_or_not(init, clamped):
    """On an all-black and an all-white image, a start left unclamped leaves [0,1] in about half the
    pixels; a clamped one never does. The uniform noise spans eps, the Gaussian one 0.001 sigma."""
    from attacks import init_delta
    eps = 8 / 255
    x = torch.cat([torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16)])
    start = init_delta(x, eps, init, torch.Generator().manual_seed(0))
    outside = ((start < 0) | (start > 1)).float().mean().item()
    assert outside == 0.0 if clamped else 0.4 < outside < 0.6
    spread = (start - x).abs().max().item()
    assert spread <= (eps if init.startswith("uniform") else 0.01) + 1e-7


def test_mobilenet_authors_expression_only_with_pcr_on_cifar():
    authors = ("--mbv2_loss", "authors")
    assert configure(train_config("DGAD", *authors, model="mobilenetV2")).formula == "authors"
    assert configure(train_config("DGAD", *authors, "--alp", "off", model="mobilenetV2")).formula == "fixed"
    tiny = dataclasses.replace(train_config("DGAD", *authors, model="mobilenetV2"), dataset="Tiny_Image")
    assert configure(tiny).formula == "fixed"
    assert configure(train_config("DGAD", *authors)).formula == "fixed"  # resnet18: no such case
    assert configure(train_config("DGAD", model="mobilenetV2")).formula == "fixed"  # the default


# -- the methods table ----------------------------------------------------------------------------

def test_the_table_lists_every_method_in_help_order_and_refuses_a_name_twice():
    assert method_names() == ["Natural", "PGDAT", "TRADES", "ARD", "IAD", "RSLAD", "AKD", "AdaAD", "AdaIAD", "MTARD",
                              "IGDM", "PeerAiD", "SAAD", "Fair-ARD", "Fair-IAD", "Fair-RSLAD", "Fair-MTARD", "ABSLD",
                              "DGAD", "VarGap"]
    with pytest.raises(ValueError, match="'DGAD' is registered twice"):
        METHODS.register(type("Again", (Method,), {"name": "DGAD"}))
    with pytest.raises(ValueError, match="'X' is registered twice"):
        MethodTable([type("A", (Method,), {"name": "X"}), type("B", (Method,), {"name": "X"})])
    assert method_names()[-1] == "VarGap"  # the refused registration left the table as it was


def test_a_configured_method_is_bound_once_and_reads_no_config_per_batch():
    cfg = config("DGAD", "--ALP_beta", "2", "--alp", "off", "--no_map")
    method = configure(cfg)
    assert (method.beta, method.use_pcr, method.use_map, method.use_els, method.configured_batch) == \
        (2.0, False, False, True, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.bs = 8


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
