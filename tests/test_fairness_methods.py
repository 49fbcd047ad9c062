"""Fair-ARD, Fair-IAD, Fair-RSLAD, Fair-MTARD (one class-reweighting plug-in on four bases) and ABSLD: each loss by
hand on small logits, the class weights and the temperatures by hand over two epochs, the attacks and forward
passes by hooks, the state across a checkpoint (and across a resume of main.py, bitwise), one epoch through
main.py and main_tiny.py, and one process against two under torchrun.

Run as a script (`python tests/test_fairness_methods.py OUT`, alone or under torchrun) it is the worker of the last
test: two epochs of each method, whose weights and state process 0 saves."""
import json
import math
import os
import runpy
import shutil
import subprocess
import sys

import pytest
import torch

from attacks import ce_sum, kl_sum, pgd
from helpers import REPO, TinyNet, ce, kl, mean, softmax, train_config
from losses import (absld_temperature_update, absld_terms, ard_terms, class_tempered, class_weights, fair_ard_terms,
                    fair_iad_terms, fair_mtard_terms, fair_rslad_terms, mtard_terms, per_class_sums, weighted_kl)
from methods import StepOutputs, configure, get_method, training_step
from models import build_model
from runtime.errors import UserError

FAIR = ("Fair-ARD", "Fair-IAD", "Fair-RSLAD", "Fair-MTARD")
NEW = FAIR + ("ABSLD",)
Y = [0, 2]
S_CLEAN = [[1.0, 0.0, -1.0], [0.5, 0.0, 0.25]]
S_ADV = [[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]]
T_CLEAN = [[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]]
T_ADV = [[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]]
N_CLEAN = [[0.0, 3.0, 0.0], [1.0, 1.0, 1.0]]
W = [1.5, 0.5]  # the weights of the two samples' classes
N, C = 2, 3


def tensor(rows, grad=False):
    return torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


def outputs(epoch=1):
    return StepOutputs(y=torch.tensor(Y), epoch=epoch, s_clean=tensor(S_CLEAN, True), s_adv=tensor(S_ADV, True),
                       t_clean=tensor(T_CLEAN), t_adv=tensor(T_ADV), n_clean=tensor(N_CLEAN))


def config(method, *flags, **kwargs):
    natural = ("--teacher_st_path", "natural.pth") if get_method(method).needs_natural_teacher else ()
    return train_config(method, *natural, *flags, **kwargs)


def close(value, expected, rel=1e-12):
    return math.isclose(float(value.detach()), expected, rel_tol=rel, abs_tol=1e-15)


def kl_eps(target_row, row):
    """The released KL: sum_c p_c (log(p_c + 1e-5) - log q_c)."""
    p, q = softmax(target_row), softmax(row)
    return sum(pi * (math.log(pi + 1e-5) - math.log(qi)) for pi, qi in zip(p, q))


# -- the pure pieces -----------------------------------------------------------------------------------

def test_per_class_sums_count_exactly_and_sum_floats():
    y = torch.tensor([2, 0, 2, 2])
    counts = per_class_sums(torch.tensor([True, True, False, True]), y, 4)
    assert counts.dtype == torch.long and counts.tolist() == [1, 0, 2, 0]
    assert per_class_sums(torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64), y, 3).tolist() == [1.0, 0.0, 6.5]


def test_class_weights_by_hand_scaled_to_c_then_clamped():
    kappa = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    raw = [(1 / (k + 1e-5)) ** 2 for k in (1.0, 2.0, 4.0, 8.0)]
    scaled = [4 * r / sum(raw) for r in raw]  # 3.01, 0.75, 0.19, 0.05 before the clamp
    expected = [min(max(s, 5 / 6), 5 / 2) for s in scaled]
    assert torch.allclose(class_weights(kappa, 2.0), torch.tensor(expected, dtype=torch.float64), rtol=1e-12)
    assert class_weights(kappa, 2.0).tolist() == [2.5, 5 / 6, 5 / 6, 5 / 6]
    assert class_weights(kappa, 0.0).tolist() == [1.0] * 4  # beta 0: no reweighting
    mild = class_weights(torch.tensor([3.0, 4.0]), 0.5)  # within the bounds: sums to C
    assert math.isclose(float(mild.sum()), 2.0, rel_tol=1e-6) and mild[0] > mild[1]


def test_absld_temperature_update_by_hand():
    tau = torch.tensor([1.0, 1.0, 0.6, 4.95])
    losses = torch.tensor([1.0, 3.0, 8.0, 0.0], dtype=torch.float64)  # mean 3, gaps -2, 0, 5, -3
    updated = absld_temperature_update(tau, losses, 0.1, 0.5, 5.0)
    assert torch.allclose(updated, torch.tensor([1.04, 1.0, 0.5, 5.0]))  # 0.6 - 0.1 clamped up, 4.95 + 0.06 down
    assert updated.dtype == torch.float32
    assert torch.equal(absld_temperature_update(tau, torch.full((4,), 2.0, dtype=torch.float64), 0.1, 0.5, 5.0), tau)


# -- the losses by hand ----------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction, divisor", [("entries", N * C), ("batchmean", N)])
@pytest.mark.parametrize("alpha", [1.0, 0.75])
def test_fair_ard_loss_by_hand(reduction, divisor, alpha):
    terms = fair_ard_terms(tensor(S_CLEAN), tensor(S_ADV), tensor(T_CLEAN), torch.tensor(Y), tensor(W), alpha=alpha,
                           temperature=2.0, reduction=reduction)
    kl_w = sum(W[i] * kl(T_CLEAN[i], S_ADV[i], 2.0) for i in range(N)) / divisor
    ce_w = mean([W[i] * ce(S_CLEAN[i], Y[i]) for i in range(N)]) if alpha != 1 else 0.0
    assert close(terms["kl"], kl_w) and close(terms["ce"], ce_w)
    assert close(terms["loss"], alpha * 4 * kl_w + (1 - alpha) * ce_w)


def test_unit_weights_give_the_base_losses_bitwise():
    s_clean, s_adv, t_clean, t_adv, y = tensor(S_CLEAN), tensor(S_ADV), tensor(T_CLEAN), tensor(T_ADV), torch.tensor(Y)
    ones = torch.ones(N, dtype=torch.float64)
    for reduction in ("entries", "batchmean"):
        fair = fair_ard_terms(s_clean, s_adv, t_clean, y, ones, alpha=0.5, temperature=3.0, reduction=reduction)
        base = ard_terms(s_clean, s_adv, t_clean, y, alpha=0.5, temperature=3.0, reduction=reduction)
        assert all(torch.equal(fair[k], base[k]) for k in base)
    state = (torch.tensor(0.4, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64),
             torch.tensor(0.2, dtype=torch.float64))
    fair = fair_mtard_terms(s_clean, s_adv, t_adv, tensor(N_CLEAN), ones, *state, rate=0.5)
    base = mtard_terms(s_clean, s_adv, t_adv, tensor(N_CLEAN), *state, rate=0.5)
    assert fair.keys() == base.keys() and all(torch.allclose(fair[k], base[k], rtol=1e-14) for k in base)
    with pytest.raises(ValueError, match="reduction must be one of"):
        weighted_kl(t_clean, s_adv, ones, "sum")


@pytest.mark.parametrize("introspect", [False, True])
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_fair_iad_loss_by_hand(introspect, alpha):
    terms = fair_iad_terms(tensor(S_CLEAN), tensor(S_ADV), tensor(T_CLEAN), tensor(T_ADV), torch.tensor(Y),
                           tensor(W), alpha=alpha, temperature=2.0, beta=0.1, introspect=introspect)
    ard = alpha * 4 * mean([W[i] * kl(T_CLEAN[i], S_ADV[i], 2.0) for i in range(N)])
    introspection = 0.0
    if introspect:  # Fair-IAD.py: the CE is on S(x'), and only after the warm-up
        ard += (1 - alpha) * mean([W[i] * ce(S_ADV[i], Y[i]) for i in range(N)])
        introspection = mean([W[i] * (1 - softmax(T_ADV[i])[Y[i]] ** 0.1) * kl(S_CLEAN[i], S_ADV[i])
                              for i in range(N)])
    assert close(terms["ard"], ard) and close(terms["introspection"], introspection)
    assert close(terms["loss"], ard + alpha * introspection)


def test_fair_iad_keeps_the_gradient_of_its_self_target_and_not_of_the_teacher():
    s_clean, t_adv = tensor(S_CLEAN, True), tensor(T_ADV, True)
    terms = fair_iad_terms(s_clean, tensor(S_ADV, True), tensor(T_CLEAN), t_adv, torch.tensor(Y), tensor(W),
                           alpha=1.0, temperature=1.0, beta=0.1, introspect=True)
    terms["loss"].backward()
    assert s_clean.grad.abs().sum() > 0 and t_adv.grad is None


@pytest.mark.parametrize("reduction, divisor", [("entries", N * C), ("batchmean", N)])
def test_fair_rslad_loss_by_hand(reduction, divisor):
    terms = fair_rslad_terms(tensor(S_CLEAN), tensor(S_ADV), tensor(T_CLEAN), tensor(W), reduction=reduction,
                             scale=10.0)
    kl_adv = sum(W[i] * kl_eps(T_CLEAN[i], S_ADV[i]) for i in range(N)) / divisor
    kl_clean = sum(W[i] * kl_eps(T_CLEAN[i], S_CLEAN[i]) for i in range(N)) / divisor
    assert close(terms["kl_adv"], kl_adv) and close(terms["kl_clean"], kl_clean)
    assert close(terms["loss"], 10 * (5 / 6 * kl_adv + 1 / 6 * kl_clean))


@pytest.mark.parametrize("natural", [False, True])
def test_fair_mtard_loss_by_hand_over_two_batches(natural):
    """The first batch's weighted losses are the references (the weights stay 1/2); the second batch moves them."""
    target = N_CLEAN if natural else T_ADV
    kl_adv = sum(W[i] * kl_eps(T_ADV[i], S_ADV[i]) for i in range(N)) / (N * C)
    kl_nat = sum(W[i] * kl_eps(target[i], S_CLEAN[i]) for i in range(N)) / (N * C)
    half = torch.tensor(0.5, dtype=torch.float64)
    first = fair_mtard_terms(tensor(S_CLEAN), tensor(S_ADV), tensor(T_ADV), tensor(target), tensor(W), half, None,
                             None, rate=0.025)
    assert close(first["kl_adv"], kl_adv) and close(first["kl_nat"], kl_nat) and close(first["w_adv"], 0.5)
    assert close(first["loss"], 0.5 * kl_adv + 0.5 * kl_nat)
    second = fair_mtard_terms(tensor(S_CLEAN), tensor(S_ADV), tensor(T_ADV), tensor(target), tensor(W),
                              first["next_w_nat"], first["first_adv"] / 2, first["first_nat"], rate=0.025)
    r_adv, r_nat = 2.0, 1.0  # the adversarial loss is twice its (halved) reference
    w_nat = 0.5 - 0.025 * (0.5 - r_nat / (r_adv + r_nat))
    assert close(second["next_w_nat"], w_nat) and close(second["loss"], (1 - w_nat) * kl_adv + w_nat * kl_nat)


@pytest.mark.parametrize("flags", [(), ("--fair_mtard_target", "natural")])
def test_fair_mtard_method_reads_the_released_target_or_mtards(flags):
    terms = configure(config("Fair-MTARD", *flags)).loss(outputs())
    target = N_CLEAN if flags else T_ADV
    assert close(terms["kl_nat"], sum(kl_eps(target[i], S_CLEAN[i]) for i in range(N)) / (N * C))
    assert close(terms["class_w_min"], 1.0) and close(terms["class_w_max"], 1.0)


def test_absld_loss_by_hand():
    tau_adv, tau_nat = torch.tensor([2.0, 1.0, 0.5]), torch.tensor([1.0, 1.0, 4.0])
    terms = absld_terms(tensor(S_CLEAN), tensor(S_ADV), tensor(T_CLEAN), torch.tensor(Y), tau_adv, tau_nat)
    tempered = lambda row, tau: [v / tau for v in row]  # noqa: E731
    kl_adv = sum(kl_eps(tempered(T_CLEAN[i], float(tau_adv[Y[i]])), S_ADV[i]) for i in range(N)) / (N * C)
    kl_clean = sum(kl_eps(tempered(T_CLEAN[i], float(tau_nat[Y[i]])), S_CLEAN[i]) for i in range(N)) / (N * C)
    assert close(terms["kl_adv"], kl_adv) and close(terms["kl_clean"], kl_clean)
    assert close(terms["loss"], 5 / 6 * kl_adv + 1 / 6 * kl_clean)
    assert torch.equal(class_tempered(tensor(T_CLEAN), torch.tensor(Y), tau_adv),
                       tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 6.0]]))


# -- the class weights and the temperatures over two epochs, by hand --------------------------------------

def attack_logits(correct_rows, y):
    """Logits of one attack iterate classifying exactly `correct_rows` correctly."""
    logits = torch.zeros(len(y), C, dtype=torch.float64)
    for i, label in enumerate(y):
        logits[i, label if i in correct_rows else (label + 1) % C] = 1.0
    return logits


def fair_step(method, epoch, y, correct_per_iterate):
    """One step of a Fair method with its attack's iterates classified as given, then its loss."""
    method.begin_step(epoch)
    yt = torch.tensor(y)
    for rows in correct_per_iterate:
        method.attack.inner_loss(attack_logits(rows, y), yt, torch.zeros(len(y), C, dtype=torch.float64))
    n = len(y)
    out = StepOutputs(y=yt, epoch=epoch, s_clean=torch.zeros(n, C, dtype=torch.float64, requires_grad=True),
                      s_adv=torch.zeros(n, C, dtype=torch.float64, requires_grad=True),
                      t_clean=torch.zeros(n, C, dtype=torch.float64), t_adv=torch.zeros(n, C, dtype=torch.float64),
                      n_clean=torch.zeros(n, C, dtype=torch.float64))
    return method.loss(out)


def weights_by_hand(kappa_sums, seen, beta=2.0):
    kappa = [k / (seen / C) for k in kappa_sums]
    raw = [(1 / (k + 1e-5)) ** beta for k in kappa]
    return [min(max(C * r / sum(raw), 5 / 6), 5 / 2) for r in raw]


@pytest.mark.parametrize("name", FAIR)
def test_fair_class_weights_by_hand_over_two_epochs(name):
    """Epoch 1 weighs every class 1 and counts, per class, the attack's iterates classified correctly; the first
    step of epoch 2 turns the counts into weights, which weigh epoch 2's samples; epoch 3 takes epoch 2's counts."""
    method = configure(config(name, "--num_steps", "2"))
    y = [0, 1, 2, 2]
    # epoch 1: two steps, two iterates each; class 0 right four times, class 1 once, class 2 (two samples) twice
    fair_step(method, 1, y, [{0, 1, 2}, {0, 3}])
    fair_step(method, 1, y, [{0}, {0}])
    assert method.reweighting.kappa.tolist() == [4, 1, 2] and int(method.reweighting.seen) == 8
    assert method.reweighting.weights.tolist() == [1.0] * 3
    terms = fair_step(method, 2, y, [{1}, {1, 2}])  # epoch 2's first step: the weights, then its counts
    expected = weights_by_hand([4, 1, 2], 8)
    assert torch.allclose(method.reweighting.weights, torch.tensor(expected), rtol=1e-6)
    assert close(terms["class_w_max"], max(expected), rel=1e-6) and close(terms["class_w_min"], min(expected), 1e-6)
    assert method.reweighting.kappa.tolist() == [0, 2, 1] and int(method.reweighting.seen) == 4
    fair_step(method, 3, y, [])
    assert torch.allclose(method.reweighting.weights, torch.tensor(weights_by_hand([0, 2, 1], 4)), rtol=1e-6)


def test_fair_weights_weigh_each_sample_by_its_class():
    method = configure(config("Fair-RSLAD"))
    method.begin_step(1)
    method.loss(outputs(1))  # epoch 1 sets the classes up; now weights of our choosing
    method.reweighting.weights = torch.tensor([1.5, 9.0, 0.5])
    terms = method.loss(outputs(1))
    expected = fair_rslad_terms(tensor(S_CLEAN), tensor(S_ADV), tensor(T_CLEAN), tensor(W), "entries")
    assert close(terms["loss"], float(expected["loss"]))


def test_fair_beta_is_read_by_the_fair_methods_only():
    assert configure(config("Fair-ARD", "--fair_beta", "0.5")).reweighting.beta == 0.5
    assert config("Fair-IAD").options["fair_beta"] == 2.0  # the released README's --beta 2.0
    with pytest.raises(UserError, match="--fair_beta is not used by --method ARD"):
        config("ARD", "--fair_beta", "1")
    with pytest.raises(UserError, match="--fair_mtard_target is not used by --method Fair-ARD"):
        config("Fair-ARD", "--fair_mtard_target", "natural")
    with pytest.raises(UserError, match="--fair_beta must be >= 0"):
        config("Fair-ARD", "--fair_beta", "-1")


def absld_step(method, epoch, s_adv, s_clean, y):
    method.begin_step(epoch)
    out = StepOutputs(y=torch.tensor(y), epoch=epoch, s_adv=tensor(s_adv, True), s_clean=tensor(s_clean, True),
                      t_clean=tensor([[1.0, 0.0, 0.0]] * len(y)))
    return method.loss(out)


def temperatures_by_hand(tau, class_losses, rate, low=0.5, high=5.0):
    average = mean(class_losses)
    largest = max(abs(v - average) for v in class_losses)
    return [min(max(t - rate * (v - average) / largest, low), high) for t, v in zip(tau, class_losses)]


@pytest.mark.parametrize("mode", ["released", "separate"])
def test_absld_temperatures_by_hand_over_two_epochs(mode):
    """Each epoch sums CE(S(x'), y) and CE(S(x), y) per class; the next epoch's first step moves each class's
    temperature by rate * (its loss - the mean) / the largest gap, the rate decayed at a milestone before that
    epoch's update (milestone 1: the first update already uses 0.1 * 0.1). 'released' tempers the teacher by the
    product of the two temperatures, 'separate' each term by its own."""
    method = configure(config("ABSLD", "--epochs", "4", "--milestones", "1", "--absld_temperatures", mode))
    y = [0, 1, 2]
    adv = [[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]]
    clean = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    absld_step(method, 1, adv, clean, y)
    absld_step(method, 1, adv, clean, y)
    loss_adv = [2 * ce(adv[i], y[i]) for i in range(3)]
    loss_nat = [2 * ce(clean[i], y[i]) for i in range(3)]
    assert torch.allclose(method.loss_adv, torch.tensor(loss_adv, dtype=torch.float64), rtol=1e-12)
    tau_adv, tau_nat = temperatures_by_hand([1.0] * 3, loss_adv, 0.01), temperatures_by_hand([1.0] * 3, loss_nat, 0.01)
    terms = absld_step(method, 2, clean, adv, y)  # swapped: epoch 2's losses differ
    assert torch.allclose(method.tau_adv, torch.tensor(tau_adv), rtol=1e-6)
    assert torch.allclose(method.tau_nat, torch.tensor(tau_nat), rtol=1e-6)
    effective = [a * b for a, b in zip(tau_adv, tau_nat)] if mode == "released" else tau_adv
    assert close(terms["tau_min"], min(effective), 1e-6) and close(terms["tau_max"], max(effective), 1e-6)
    tau_adv = temperatures_by_hand(tau_adv, [ce(clean[i], y[i]) for i in range(3)], 0.01)
    absld_step(method, 3, clean, adv, y)
    assert torch.allclose(method.tau_adv, torch.tensor(tau_adv), rtol=1e-6)


def test_absld_options_are_checked():
    with pytest.raises(UserError, match="--absld_tau_min 3 is above --absld_tau_max 2"):
        config("ABSLD", "--absld_tau_min", "3", "--absld_tau_max", "2")
    with pytest.raises(UserError, match="--absld_tau_min must be > 0"):
        config("ABSLD", "--absld_tau_min", "0")


# -- attacks and forward passes, by hooks ----------------------------------------------------------------

K = 2


def recorded(name, epoch=1, *flags, method=None, batch_seed=0):
    """One training step of `name`: each student forward's mode and input, each teacher's inputs."""
    method = method or configure(config(name, "--num_steps", str(K), *flags))
    torch.manual_seed(0)
    student, teacher, natural = TinyNet(), TinyNet().eval().requires_grad_(False), \
        TinyNet().eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(batch_seed)
    x, y = torch.rand(4, 3, 8, 8, generator=generator), torch.randint(0, 3, (4,), generator=generator)
    seen, logits = [], []

    def watch(who):
        def hook(module, args):
            kind = "x" if torch.equal(args[0], x) else "other"
            seen.append((who, "train" if module.training else "eval", kind) if who == "student" else (who, kind))
        return hook
    handles = [student.register_forward_pre_hook(watch("student")), teacher.register_forward_pre_hook(watch("T")),
               natural.register_forward_pre_hook(watch("N")),
               student.register_forward_hook(lambda module, args, out: logits.append(out.detach()))]
    terms, out = training_step(method, student, teacher, x, y, epoch=epoch, generator=torch.Generator().manual_seed(1),
                               natural_teacher=natural if method.needs_natural_teacher else None)
    for handle in handles:
        handle.remove()
    return seen, out, method, (student, teacher, x, y, logits)


ATTACK = [("student", "eval", "other")] * K
TRAIN_ATTACK = [("student", "train", "other")] * K
SEQUENCES = {
    # T(x) once before the attack (the teacher is frozen: where it runs changes nothing), then each released script's
    "Fair-ARD": [("T", "x")] + TRAIN_ATTACK + [("student", "train", "other"), ("student", "train", "x")],
    "Fair-IAD": [("T", "x")] + TRAIN_ATTACK + [("student", "train", "other"), ("student", "train", "x"),
                                               ("student", "train", "other"), ("T", "other")],
    "Fair-RSLAD": [("T", "x")] + ATTACK + [("student", "train", "other"), ("student", "train", "x")],
    "Fair-MTARD": ATTACK + [("N", "x"), ("student", "train", "other"), ("T", "other"), ("student", "train", "x")],
    "ABSLD": [("T", "x")] + ATTACK + [("student", "train", "other"), ("student", "train", "x")],
}


@pytest.mark.parametrize("name", NEW)
def test_each_method_runs_the_released_scripts_passes(name):
    seen, _, method, _ = recorded(name)
    assert seen == SEQUENCES[name]
    assert recorded(name, 61)[0] == SEQUENCES[name]  # no pass added after IAD's warm-up: Fair-IAD runs S(x) always


@pytest.mark.parametrize("name", FAIR)
def test_fair_attacks_are_their_bases_and_count_the_iterates_classified_correctly(name):
    base = get_method(name[len("Fair-"):]).attack
    _, out, method, (student, teacher, x, y, logits) = recorded(name)
    spec = method.attack
    assert (spec.init, spec.train_mode, spec.target) == (base.init, base.train_mode, base.target)
    assert spec.inner_loss is not base.inner_loss and get_method(name).attack is base  # the class keeps the base's
    correct = [0] * 3
    for step_logits in logits[:K]:  # the attack's iterates x'_0 .. x'_{K-1}, before each step
        for label, guess in zip(y.tolist(), step_logits.argmax(1).tolist()):
            correct[label] += label == guess
    assert method.reweighting.kappa.tolist() == correct and int(method.reweighting.seen) == 4


def test_absld_attack_maximises_the_kl_to_the_class_tempered_teacher():
    method = configure(config("ABSLD", "--num_steps", str(K)))
    method.begin_step(1)
    method.start(3, torch.device("cpu"))
    method.tau_adv, method.tau_nat = torch.tensor([0.5, 2.0, 1.0]), torch.tensor([1.0, 3.0, 0.7])
    seen, out, _, (student, teacher, x, y, logits) = recorded("ABSLD", method=method)
    attacked = logits[K]  # the S(x') pass after the attack
    torch.manual_seed(0)
    fresh = TinyNet()
    target = class_tempered(teacher(x), y, method.tau_adv * method.tau_nat)  # the released product
    x_adv = pgd(fresh, x, y, eps=8 / 255, step_size=2 / 255, steps=K, loss_fn=kl_sum, init="gauss",
                generator=torch.Generator().manual_seed(1), target=target)
    assert torch.allclose(fresh.train()(x_adv), attacked, atol=1e-6)
    assert (method.attack.init, method.attack.train_mode, method.attack.target) == ("gauss", False, "teacher_clean")


def test_absld_attack_of_an_epochs_first_step_uses_the_temperatures_of_the_epoch_before():
    """The temperatures move at the start of the step (`begin_step`), before its attack reads them."""
    method = configure(config("ABSLD", "--num_steps", str(K)))
    recorded("ABSLD", 1, method=method, batch_seed=1)
    ahead = configure(config("ABSLD", "--num_steps", str(K)))
    ahead.load_state_dict({k: v.clone() for k, v in method.state_dict().items()})
    ahead.begin_step(2)
    assert not torch.equal(ahead.tau_adv, method.tau_adv)
    _, _, _, (student, teacher, x, y, logits) = recorded("ABSLD", 2, method=method)
    torch.manual_seed(0)
    fresh = TinyNet()
    target = class_tempered(teacher(x), y, ahead.tau_adv * ahead.tau_nat)
    x_adv = pgd(fresh, x, y, eps=8 / 255, step_size=2 / 255, steps=K, loss_fn=kl_sum, init="gauss",
                generator=torch.Generator().manual_seed(1), target=target)
    assert torch.allclose(fresh.train()(x_adv), logits[K], atol=1e-6)
    assert torch.equal(method.tau_adv, ahead.tau_adv)


def test_the_bases_attack_specs_are_untouched():
    assert get_method("ARD").attack.inner_loss is ce_sum and get_method("MTARD").attack.inner_loss is ce_sum
    assert get_method("ABSLD").attack.inner_loss is kl_sum


# -- state across a checkpoint ---------------------------------------------------------------------------

def internal_state(method):
    """What the method holds between steps, as plain values (not through its state_dict)."""
    if method.name == "ABSLD":
        held = [method.tau_adv, method.tau_nat, method.loss_adv, method.loss_nat, method.epoch]
    else:
        r = method.reweighting
        held = [r.weights, r.kappa, r.seen, r.epoch] + ([method.w_nat, *method.first] if method.name == "Fair-MTARD"
                                                         else [])
    return [value.tolist() if torch.is_tensor(value) else value for value in held]


@pytest.mark.parametrize("name", NEW)
def test_state_round_trips_and_continues_exactly(name):
    """A method restored from another's state (mid-epoch, and at an epoch's end) continues as the original."""
    original = configure(config(name, "--num_steps", str(K)))
    assert original.state_dict() == {}  # nothing before the first step
    recorded(name, 1, method=original)
    restored = configure(config(name, "--num_steps", str(K)))
    restored.load_state_dict({k: v.clone() for k, v in original.state_dict().items()})
    assert internal_state(restored) == internal_state(original)
    changed = False
    for epoch in (1, 2, 3):  # mid-epoch 1, then epochs 2 and 3 from the restored statistics (another batch each)
        a = recorded(name, epoch, method=original, batch_seed=epoch)[1]
        b = recorded(name, epoch, method=restored, batch_seed=epoch)[1]
        assert torch.equal(a.s_adv, b.s_adv)
        state_a, state_b = original.state_dict(), restored.state_dict()
        assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
        assert internal_state(restored) == internal_state(original)
        moved = original.tau_adv if name == "ABSLD" else original.reweighting.weights
        changed = changed or not torch.equal(moved, torch.ones(3))
    assert changed  # the training steps of the later epochs moved the weights or temperatures
    keys = set(original.state_dict())
    assert keys == ({"tau_adv", "tau_nat", "loss_adv", "loss_nat", "epoch"} if name == "ABSLD" else
                    {"class_weights", "class_kappa", "class_seen", "class_epoch"}
                    | ({"w_nat", "first_adv", "first_nat"} if name == "Fair-MTARD" else set()))


# -- through main.py and main_tiny.py --------------------------------------------------------------------

def run_main(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, "main.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    return result


def teacher_flags(name, teacher, folder):
    flags = ["--teacher_model", "wideresnet10_1", "--teacher_path", teacher]
    if get_method(name).needs_natural_teacher:  # a copy: the same file as both teachers is refused
        shutil.copyfile(teacher, folder / "natural.pth")
        flags += ["--teacher_st_model", "wideresnet10_1", "--teacher_st_path", str(folder / "natural.pth")]
    return flags


@pytest.mark.parametrize("name", NEW)
def test_main_trains_two_epochs_and_a_resume_is_bitwise(name, tmp_path, real_data_dir, small_teacher):
    common = ["--method", name, "--model", "wideresnet10_1", *teacher_flags(name, small_teacher, tmp_path),
              "--data_dir", real_data_dir, "--train_subset", "64", "--test_subset", "32", "--bs", "16",
              "--num_steps", "1", "--epochs", "2", "--deterministic"]
    run_main(*common, "--save_dir", str(tmp_path / "unbroken"))
    run_main(*common, "--save_dir", str(tmp_path / "broken"), "--stop_after", "1")
    assert "resumed" in run_main(*common, "--save_dir", str(tmp_path / "broken"), "--resume").stdout
    a = torch.load(tmp_path / "unbroken" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "broken" / "last.pth", weights_only=True)
    assert all(torch.equal(a["net"][k], b["net"][k]) for k in a["net"])
    assert a["method_state"].keys() == b["method_state"].keys()
    assert all(torch.equal(a["method_state"][k], b["method_state"][k]) for k in a["method_state"])
    moved = a["method_state"]["tau_adv"] if name == "ABSLD" else a["method_state"]["class_weights"]
    assert moved.shape == (10,) and not torch.equal(moved, torch.ones(10))  # epoch 2 used new weights/temperatures
    parts = ("tau_min", "tau_max") if name == "ABSLD" else ("class_w_min", "class_w_max")
    assert [[row[f"train_{p}"] for p in parts] for row in a["history"]] == \
        [[row[f"train_{p}"] for p in parts] for row in b["history"]]
    assert a["history"][0][f"train_{parts[0]}"] == 1.0  # the first epoch: all ones
    assert json.load(open(tmp_path / "unbroken" / "config.json"))["method"] == name


@pytest.mark.parametrize("name", NEW)
def test_each_method_trains_one_epoch_through_main_tiny(name, tmp_path, real_data_dir, capsys):
    teacher = tmp_path / "teacher.pth"
    torch.manual_seed(0)
    torch.save({"net": build_model("wideresnet10_1", 200).state_dict()}, teacher)
    flags = ["--method", name, "--model", "wideresnet10_1", *teacher_flags(name, str(teacher), tmp_path),
             "--data_dir", real_data_dir, "--epochs", "1", "--bs", "16", "--num_steps", "1", "--train_subset", "32",
             "--test_subset", "16", "--save_dir", str(tmp_path / "r")]
    entry = runpy.run_path(os.path.join(REPO, "main_tiny.py"))
    assert entry["main"](entry["DEFAULTS"], "test", flags) == 0, capsys.readouterr().err
    config_json = json.load(open(tmp_path / "r" / "config.json"))
    assert config_json["dataset"] == "Tiny_Image" and config_json["method"] == name
    state = torch.load(tmp_path / "r" / "last.pth", weights_only=True)["method_state"]
    assert next(iter(v for k, v in state.items() if k in ("class_weights", "tau_adv"))).shape == (200,)


# -- one process against two (torchrun) ------------------------------------------------------------------

@pytest.mark.slow  # processes
def test_two_epochs_on_two_processes_equal_one(tmp_path):
    """Two epochs (two steps each, 7 then 3 images) of each method on a network without BatchNorm: the class
    counts are summed over the processes exactly, so the weights and temperatures of epoch 2, the student and
    the method's state agree with one process."""
    from test_distributed import job_env, torchrun_retrying_gloo_abort
    one, two = str(tmp_path / "one.pt"), str(tmp_path / "two.pt")
    single = subprocess.run([sys.executable, __file__, one], cwd=REPO, env=job_env(), capture_output=True, text=True,
                            timeout=300)
    assert single.returncode == 0, single.stderr
    code, _, err = torchrun_retrying_gloo_abort(__file__, two)
    assert code == 0, err
    a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    assert set(a) == set(b) == set(NEW)
    for name in NEW:
        for key, value in a[name]["weights"].items():
            assert torch.allclose(b[name]["weights"][key], value, rtol=1e-5, atol=1e-7), (name, key)
        state_a, state_b = a[name]["method_state"], b[name]["method_state"]
        assert state_a.keys() == state_b.keys()
        for key, value in state_a.items():
            if value.dtype in (torch.int64, torch.bool):  # counts: exact
                assert torch.equal(state_b[key], value), (name, key)
            else:
                assert torch.allclose(state_b[key], value, rtol=1e-5), (name, key)
        moved = state_a["tau_adv"] if name == "ABSLD" else state_a["class_weights"]
        assert not torch.equal(moved, torch.ones_like(moved)), name  # epoch 2 had its own weights/temperatures
        assert b[name]["losses"] == pytest.approx(a[name]["losses"], rel=1e-5)


def worker(out_path):
    """Two epochs of each new method (the distributed worker's networks and images), process 0 saving the
    student's weights, the method's state and each epoch's mean loss."""
    from distributed_worker import NoNormNet, images
    from runtime.distributed import join
    from data import Shard, TrainBatches
    from training.loop import train_one_epoch
    from training.networks import Trainee, frozen, run_generators
    from training.schedule import build_optimizer
    from training.signals import GracefulStop
    world = join(5.0, use_cuda=False)
    results = {}
    for name in NEW:
        cfg = config(name, "--num_steps", "2", "--epochs", "2", bs=7)
        method = configure(cfg)
        torch.manual_seed(0)
        student = NoNormNet()
        natural = frozen(NoNormNet(width=5)) if method.needs_natural_teacher else None
        trainee = Trainee(student, frozen(NoNormNet(width=8)), None, build_optimizer(cfg, list(student.parameters())),
                          run_generators("cpu", 3), natural_teacher=natural, method=method)
        trainee.distribute(world, torch.device("cpu"))
        batches = TrainBatches(images(10, 1), cfg.bs, trainee.generators["data"], shard=Shard(world.rank, world.size))
        losses = [train_one_epoch(method, trainee, batches, epoch, 0.1, cfg, None, GracefulStop(), None, world).loss
                  for epoch in (1, 2)]
        results[name] = {"weights": {k: v.clone() for k, v in student.state_dict().items()}, "losses": losses,
                         "method_state": method.state_dict()}
    if world.main:
        torch.save(results, out_path)
    world.leave()


if __name__ == "__main__":
    worker(sys.argv[1])
