"""AKD, AdaIAD, MTARD, IGDM and the IGDM plug-in: each loss by hand on small logits (every term,
reduction and weight), the attack and forward sequence of each, the recipes' resolved values, and
MTARD's adaptive weights over batches and across a resume."""
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from attacks import ce_sum, kl_sum
from helpers import REPO, TinyNet, ce, kl, mean, softmax, train_config
from losses import igdm_term, kl_mean_entries_eps, mtard_weight_update
from methods import StepOutputs, configure, training_step
from models import build_model
from runtime.errors import UserError

Y = [0, 2]
S_CLEAN = [[1.0, 0.0, -1.0], [0.5, 0.0, 0.25]]
S_ADV = [[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]]
T_CLEAN = [[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]]
T_ADV = [[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]]
N_CLEAN = [[0.0, 3.0, 0.0], [1.0, 1.0, 1.0]]
N_ADV = [[0.5, 0.5, 2.0], [0.0, 0.0, 1.0]]
S_MINUS = [[0.25, 0.5, 0.0], [-1.0, 0.0, 1.0]]
T_MINUS = [[0.0, 0.0, 1.0], [1.0, 0.5, 0.0]]
N, C = 2, 3


def tensor(rows, grad=False):
    return torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


def outputs(epoch=1):
    return StepOutputs(y=torch.tensor(Y), epoch=epoch, s_clean=tensor(S_CLEAN, True), s_adv=tensor(S_ADV, True),
                       t_clean=tensor(T_CLEAN), t_adv=tensor(T_ADV), n_clean=tensor(N_CLEAN), n_adv=tensor(N_ADV),
                       s_minus=tensor(S_MINUS, True), t_minus=tensor(T_MINUS))


def config(method, *flags, dataset="CIFAR10"):
    return train_config(method, *flags, dataset=dataset)


def close(value, expected, rel=1e-12):
    return math.isclose(float(value.detach()), expected, rel_tol=rel, abs_tol=1e-15)


def minus(a, b):
    return [x - y for x, y in zip(a, b)]


# -- AKD ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, a1, a2, tau", [((), 0.5, 0.25, 1.0),
                                                (("--AKD_a1", "0.3", "--AKD_a2", "0.6", "--temp", "2"), 0.3, 0.6, 2.0)])
def test_akd_loss_by_hand(flags, a1, a2, tau):
    terms = configure(config("AKD", *flags)).loss(outputs())
    ce_adv = mean([ce(S_ADV[i], Y[i]) for i in range(N)])
    kl_robust = mean([kl(T_ADV[i], S_ADV[i], tau) for i in range(N)])
    kl_natural = mean([kl(N_ADV[i], S_ADV[i], tau) for i in range(N)])
    assert close(terms["ce"], ce_adv) and close(terms["kl_robust"], kl_robust)
    assert close(terms["kl_natural"], kl_natural)
    assert close(terms["loss"], (1 - a1 - a2) * ce_adv + tau ** 2 * (a1 * kl_robust + a2 * kl_natural))


def test_akd_needs_and_records_a_natural_teacher():
    cfg = config("AKD")
    assert cfg.teacher_st_model == "wideresnet34_10"
    assert cfg.teacher_st_path == "checkpoints/teachers/CIFAR10/wideresnet34_10_natural.pth"
    assert (cfg.epochs, cfg.milestones, cfg.weight_decay, cfg.bs) == (200, (100,), 2e-4, 4)
    assert configure(cfg).attack.init == "uniform_unclamped" and configure(cfg).attack.train_mode
    with pytest.raises(UserError, match="--teacher_st_model is the second teacher of AKD and MTARD"):
        config("DGAD", "--teacher_st_model", "resnet18")
    with pytest.raises(UserError, match="unknown --teacher_st_model 'nope'"):
        config("AKD", "--teacher_st_model", "nope")


# -- AdaIAD ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("epoch, introspect", [(60, False), (61, True)])
def test_adaiad_loss_by_hand(epoch, introspect):
    cfg = config("AdaIAD", "--ARD_alpha", "0.8")
    assert (cfg.options["temp"], cfg.options["IAD_begin"], cfg.options["IAD_beta"]) == (30.0, 60, 0.1)
    terms = configure(cfg).loss(outputs(epoch))
    tau, alpha, beta = 30.0, 0.8, 0.1
    distil = alpha * tau ** 2 * mean([kl(T_ADV[i], S_ADV[i], tau) for i in range(N)]) \
        + (1 - alpha) * mean([ce(S_CLEAN[i], Y[i]) for i in range(N)])
    trust = [softmax(T_ADV[i])[Y[i]] ** beta for i in range(N)]
    introspection = mean([(1 - trust[i]) * kl(S_CLEAN[i], S_ADV[i]) for i in range(N)]) if introspect else 0.0
    assert close(terms["ard"], distil) and close(terms["introspection"], introspection)
    assert close(terms["loss"], distil + alpha * introspection)
    assert (cfg.epochs, cfg.milestones, cfg.weight_decay) == (200, (100, 150), 5e-4)


# -- MTARD ----------------------------------------------------------------------------------------------

def mtard_kl(target, logits):
    """MTARD's KL by hand: mean over the N*C entries of p (log(p + 1e-5) - log q)."""
    total = 0.0
    for t_row, s_row in zip(target, logits):
        p, q = softmax(t_row), softmax(s_row)
        total += sum(pi * (math.log(pi + 1e-5) - math.log(qi)) for pi, qi in zip(p, q))
    return total / (len(target) * len(target[0]))


def test_mtard_kl_keeps_the_released_epsilon():
    assert close(kl_mean_entries_eps(tensor(T_ADV), tensor(S_ADV)), mtard_kl(T_ADV, S_ADV))


@pytest.mark.parametrize("dataset, scale", [("CIFAR10", 1.0), ("CIFAR100", 10.0)])
def test_mtard_first_batch_keeps_half_and_half_and_references_its_losses(dataset, scale):
    method = configure(config("MTARD", dataset=dataset))
    terms = method.loss(outputs())
    kl_adv, kl_nat = scale * mtard_kl(T_ADV, S_ADV), scale * mtard_kl(N_CLEAN, S_CLEAN)
    assert close(terms["kl_adv"], kl_adv) and close(terms["kl_nat"], kl_nat) and close(terms["w_adv"], 0.5)
    assert close(terms["loss"], 0.5 * kl_adv + 0.5 * kl_nat)
    state = method.state_dict()
    assert close(state["w_nat"], 0.5) and close(state["first_adv"], kl_adv) and close(state["first_nat"], kl_nat)


def test_mtard_weights_move_towards_the_teacher_whose_loss_fell_less():
    method = configure(config("MTARD"))
    method.loss(outputs())  # the references
    first_adv, first_nat = mtard_kl(T_ADV, S_ADV), mtard_kl(N_CLEAN, S_CLEAN)
    second = outputs()
    second.s_adv = tensor(T_ADV, True)  # the adversarial KL falls to about 0 (the 1e-5 keeps it > 0) ...
    terms = method.loss(second)
    r_adv, r_nat = mtard_kl(T_ADV, T_ADV) / first_adv, mtard_kl(N_CLEAN, S_CLEAN) / first_nat
    w_nat = 0.5 - 0.025 * (0.5 - r_nat / (r_adv + r_nat))  # ... so the natural teacher gains weight
    assert close(method.state_dict()["w_nat"], w_nat) and close(terms["w_adv"], 1 - w_nat, rel=1e-7)
    assert close(terms["loss"], (1 - w_nat) * mtard_kl(T_ADV, T_ADV) + w_nat * mtard_kl(N_CLEAN, S_CLEAN), rel=1e-7)


def test_mtard_weight_rate_decays_with_the_learning_rate():
    method = configure(config("MTARD"))
    assert [method.rate_at(e) for e in (1, 215, 216, 261, 286)] == pytest.approx([0.025, 0.025, 0.0025, 2.5e-4,
                                                                                  2.5e-5])
    cfg = config("MTARD")
    assert (cfg.epochs, cfg.milestones, cfg.weight_decay, cfg.teacher_st_model) == (300, (215, 260, 285), 2e-4,
                                                                                    "wideresnet34_10")
    assert configure(cfg).attack.inner_loss is ce_sum and configure(cfg).attack.init == "gauss"


def test_mtard_weight_update_with_a_power():
    w = mtard_weight_update(torch.tensor(0.4, dtype=torch.float64), torch.tensor(1.0), torch.tensor(3.0),
                            torch.tensor(2.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64),
                            rate=0.5, power=2.0)
    r_adv, r_nat = 0.5 ** 2, 1.5 ** 2
    assert close(w, 0.4 - 0.5 * (0.4 - r_nat / (r_adv + r_nat)))


def test_mtard_state_round_trips_through_a_checkpoint():
    method = configure(config("MTARD"))
    method.loss(outputs())
    method.loss(outputs())
    restored = configure(config("MTARD"))
    restored.load_state_dict({k: v.clone() for k, v in method.state_dict().items()})
    assert torch.equal(restored.loss(outputs())["loss"], method.loss(outputs())["loss"])
    assert configure(config("MTARD")).state_dict() == {}  # nothing before the first batch


# -- IGDM -----------------------------------------------------------------------------------------------

def igdm_by_hand():
    return mean([kl(minus(T_ADV[i], T_MINUS[i]), minus(S_ADV[i], S_MINUS[i])) for i in range(N)])


def test_igdm_term_by_hand():
    assert close(igdm_term(tensor(S_ADV), tensor(S_MINUS), tensor(T_ADV), tensor(T_MINUS)), igdm_by_hand())


@pytest.mark.parametrize("epoch", [1, 100, 200])
def test_igdm_method_loss_by_hand(epoch):
    cfg = config("IGDM")
    assert (cfg.options["igdm_alpha"], cfg.options["igdm_horizon"]) == (1.0, 200)
    assert (cfg.epsilon, cfg.step_size, cfg.epochs, cfg.milestones, cfg.weight_decay) == (2.0, 8.0, 200, (100, 150),
                                                                                          2e-4)
    terms = configure(cfg).terms(outputs(epoch))
    kl_adv = mean([kl(T_ADV[i], S_ADV[i]) for i in range(N)])
    assert close(terms["kl_adv"], kl_adv) and close(terms["igdm"], igdm_by_hand())
    assert close(terms["loss"], kl_adv + 1.0 * epoch / 200 * igdm_by_hand())


def test_the_igdm_plug_in_adds_its_term_to_any_distillation_method():
    plain = configure(config("RSLAD"))
    plugged = configure(config("RSLAD", "--igdm_alpha", "3", "--igdm_horizon", "10"))
    assert plain.logged_parts() == ("kl_adv", "kl_clean") and plugged.logged_parts() == ("kl_adv", "kl_clean", "igdm")
    base, terms = plain.terms(outputs(5)), plugged.terms(outputs(5))
    assert close(terms["loss"], float(base["loss"].detach()) + 3 * 5 / 10 * igdm_by_hand())
    assert plugged.passes(1) == ("s_adv", "s_clean", "t_clean", "t_adv", "s_minus", "t_minus")
    assert configure(config("AdaAD", "--igdm_alpha", "1")).passes(1) == ("s_clean", "s_adv", "t_clean", "t_adv",
                                                                        "s_minus", "t_minus")
    with pytest.raises(UserError, match="--igdm_alpha is not used by --method TRADES"):
        config("TRADES", "--igdm_alpha", "1")
    with pytest.raises(UserError, match="--igdm_alpha is not used by --method VarGap"):
        config("VarGap", "--igdm_alpha", "1")


# -- attacks and forward sequences, recorded by hooks ---------------------------------------------------

K = 2


def recorded(name, epoch=1, *flags):
    """One step of `name`: each student forward's mode and input, and each teacher's inputs."""
    method = configure(config(name, "--num_steps", str(K), *flags))
    torch.manual_seed(0)
    student, teacher, natural = TinyNet(), TinyNet().eval().requires_grad_(False), \
        TinyNet().eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 8, 8, generator=generator), torch.randint(0, 3, (4,), generator=generator)
    seen = []

    def watch(who):
        def hook(module, args):
            kind = "x" if torch.equal(args[0], x) else "other"  # x' or x - d
            if who == "student":
                seen.append((who, "train" if module.training else "eval", kind))
            else:
                seen.append((who, kind))
        return hook
    handles = [student.register_forward_pre_hook(watch("student")), teacher.register_forward_pre_hook(watch("T")),
               natural.register_forward_pre_hook(watch("N"))]
    _, out = training_step(method, student, teacher, x, y, epoch=epoch, generator=torch.Generator().manual_seed(1),
                           natural_teacher=natural if method.needs_natural_teacher else None)
    for handle in handles:
        handle.remove()
    return seen, out


@pytest.mark.parametrize("name, expected", [
    ("AKD", [("student", "train", "other")] * K + [("student", "train", "other"), ("T", "other"), ("N", "other")]),
    ("MTARD", [("student", "eval", "other")] * K + [("N", "x"), ("student", "train", "other"), ("T", "other"),
                                                    ("student", "train", "x")]),
    ("AdaIAD", [("student", "eval", "other"), ("T", "other")] * K + [("student", "train", "x"),
                                                                      ("student", "train", "other"), ("T", "other"),
                                                                      ("student", "train", "x")]),
    ("IGDM", [("student", "eval", "other"), ("T", "other")] * K + [("T", "other"), ("T", "other"),
                                                                    ("student", "train", "other"),
                                                                    ("student", "train", "other")]),
])
def test_each_new_method_runs_the_released_codes_passes(name, expected):
    seen, out = recorded(name)
    assert seen == expected
    assert (out.n_adv is not None) == (name == "AKD") and (out.n_clean is not None) == (name == "MTARD")


def test_adaiad_adds_the_introspection_target_after_its_warm_up():
    before, _ = recorded("AdaIAD", 60)
    after, _ = recorded("AdaIAD", 61)
    assert after == before + [("student", "train", "x")]


def test_igdm_minus_pass_is_x_minus_the_perturbation_unclamped():
    method = configure(config("IGDM", "--num_steps", "1"))
    torch.manual_seed(0)
    student, teacher = TinyNet(), TinyNet().eval().requires_grad_(False)
    inputs = []
    student.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone())
                                      if module.training else None)
    x = torch.zeros(2, 3, 4, 4)  # at 0, x - d leaves [0, 1]
    training_step(method, student, teacher, x, torch.tensor([0, 1]), epoch=1,
                  generator=torch.Generator().manual_seed(1))
    x_adv, x_minus = inputs
    assert torch.allclose(x_minus, -x_adv) and x_minus.min() < 0


def test_attacks_of_the_new_methods():
    specs = {name: configure(config(name)).attack for name in ("AKD", "AdaIAD", "MTARD", "IGDM")}
    assert (specs["AKD"].inner_loss, specs["AKD"].init, specs["AKD"].train_mode) == (ce_sum, "uniform_unclamped", True)
    assert (specs["MTARD"].inner_loss, specs["MTARD"].init, specs["MTARD"].train_mode, specs["MTARD"].target) == \
        (ce_sum, "gauss", False, "labels")
    for name in ("AdaIAD", "IGDM"):
        assert (specs[name].inner_loss, specs[name].init, specs[name].train_mode, specs[name].target) == \
            (kl_sum, "gauss", False, "teacher")
    peer, saad = configure(config("PeerAiD")).attack, configure(config("SAAD", "--saad_lambda", "0.5")).attack
    assert (peer.inner_loss, peer.init, peer.train_mode, peer.target) == (kl_sum, "gauss", False, "peer_clean")
    assert (saad.inner_loss, saad.init, saad.train_mode, saad.target, saad.taylor) == (kl_sum, "gauss", False,
                                                                                        "teacher_taylor", 0.5)


# -- two teachers and MTARD's state across a resume, through main.py -----------------------------------

def run_main(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, "main.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize("method", ["MTARD", "AKD", "PeerAiD", "AdaIAD", "IGDM"])
def test_two_teacher_and_online_peer_runs_resume_exactly(method, tmp_path, real_data_dir, small_teacher):
    teachers = [] if method == "PeerAiD" else ["--teacher_model", "wideresnet10_1", "--teacher_path", small_teacher]
    if method in ("MTARD", "AKD"):  # a copy: the same file as both teachers is refused
        shutil.copyfile(small_teacher, tmp_path / "natural.pth")
        teachers += ["--teacher_st_model", "wideresnet10_1", "--teacher_st_path", str(tmp_path / "natural.pth")]
    if method == "AdaIAD":
        teachers += ["--IAD_begin", "1"]  # the introspection term from epoch 2, after the resume
    common = ["--method", method, "--model", "wideresnet10_1", *teachers,
              "--data_dir", real_data_dir, "--train_subset", "64", "--test_subset", "32", "--bs", "16",
              "--num_steps", "1", "--epochs", "2", "--deterministic"]
    run_main(*common, "--save_dir", str(tmp_path / "unbroken"))
    run_main(*common, "--save_dir", str(tmp_path / "broken"), "--stop_after", "1")
    resumed = run_main(*common, "--save_dir", str(tmp_path / "broken"), "--resume")
    assert "resumed" in resumed.stdout
    a = torch.load(os.path.join(tmp_path, "unbroken", "last.pth"), weights_only=True)
    b = torch.load(os.path.join(tmp_path, "broken", "last.pth"), weights_only=True)
    assert all(torch.equal(a["net"][k], b["net"][k]) for k in a["net"])
    if method == "PeerAiD":  # the peer's weights (and its momentum, in the one optimiser) resume too
        assert all(torch.equal(a["extra"][k], b["extra"][k]) for k in a["extra"])
    if method not in ("MTARD", "AKD"):
        return
    assert a["config"]["teacher_st_sha256"] == b["config"]["teacher_st_sha256"] is not None
    if method == "MTARD":
        assert a["method_state"].keys() == {"w_nat", "first_adv", "first_nat"}
        assert all(torch.equal(a["method_state"][k], b["method_state"][k]) for k in a["method_state"])
        assert [row["train_w_adv"] for row in a["history"]] == [row["train_w_adv"] for row in b["history"]]
    other = tmp_path / "other.pth"
    torch.manual_seed(5)
    torch.save({"net": build_model("wideresnet10_1", 10).state_dict()}, other)
    changed = [str(other) if previous == "--teacher_st_path" else value
               for previous, value in zip([None] + common, common)]
    refused = subprocess.run([sys.executable, "main.py", *changed, "--save_dir", str(tmp_path / "broken"), "--resume"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "natural teacher file sha256" in refused.stderr, refused.stderr


# -- DGAD with IAD's introspection (DGAD_IAD1) ----------------------------------------------------------

def swapped_teacher(rows, y, adversarial):
    """ELS by hand (docs/methods.md section 2.3) on one row list."""
    out = []
    for row, label in zip(rows, y):
        row = list(row)
        if adversarial:
            best = max((c for c in range(C) if c != label), key=lambda c: row[c])
            if row[label] < row[best]:
                row[label], row[best] = row[best], row[label]
        else:
            top = max(range(C), key=lambda c: row[c])
            if top != label:
                row[label], row[top] = row[top], row[label]
        out.append(row)
    return out


def test_dgad_iad_intent_adds_the_weighted_introspection_on_the_at_set():
    cfg = config("DGAD", "--dgad_iad", "intent", "--IAD_begin", "0")
    method = configure(cfg)
    assert method.logged_parts() == ("L_ST", "L_AT", "L_PCR", "st_fraction", "L_IAD")
    base = configure(config("DGAD")).loss(outputs(1))
    terms = method.loss(outputs(1))
    st = [max(range(C), key=lambda c: T_CLEAN[i][c]) != Y[i] for i in range(N)]  # MAP: teacher wrong on x
    t_adv = swapped_teacher(T_ADV, Y, adversarial=True)
    at = [i for i in range(N) if not st[i]]
    self_at = sum((1 - softmax(t_adv[i])[Y[i]] ** 0.1) * kl(S_CLEAN[i], S_ADV[i]) for i in at) / max(len(at), 1)
    n_st = sum(st)
    assert close(terms["L_IAD"], self_at)
    assert close(terms["loss"], float(base["loss"].detach()) + (4 - n_st) / 4 * self_at)  # B = --bs 4


def test_dgad_iad_authors_compares_each_pass_with_itself_and_adds_two_passes():
    method = configure(config("DGAD", "--dgad_iad", "authors"))
    assert method.forward_sequence(60) == ("s_clean", "s_adv", "t_clean", "t_adv")
    assert method.forward_sequence(61) == ("s_clean", "s_adv", "t_clean", "t_adv", "s_clean", "s_adv")
    plain = configure(config("DGAD")).loss(outputs(61))
    terms = method.loss(outputs(61))
    assert abs(float(terms["L_IAD"].detach())) < 1e-15  # KL of a distribution with itself, up to rounding
    assert close(terms["loss"], float(plain["loss"].detach()))
    assert float(method.loss(outputs(1))["L_IAD"]) == 0.0  # the warm-up
    assert configure(config("DGAD")).logged_parts() == ("L_ST", "L_AT", "L_PCR", "st_fraction")


# -- PeerAiD --------------------------------------------------------------------------------------------

P_ADV = [[1.0, -1.0, 0.5], [0.0, 0.5, 2.0]]


@pytest.mark.parametrize("dataset, T, lambdas, gammas", [
    ("CIFAR10", 5.0, (0.0, 1.0, 1.0), (1.0, 0.1)),
    ("CIFAR100", 5.0, (0.0, 1.0, 1.0), (1.0, 1.0)),
])
def test_peeraid_loss_by_hand(dataset, T, lambdas, gammas):
    cfg = config("PeerAiD", dataset=dataset)
    assert (cfg.options["peer_T"], cfg.options["peer_T_re"]) == (T, 1.0)
    out = outputs()
    out.p_adv = tensor(P_ADV, True)
    terms = configure(cfg).loss(out)

    def kl_entries(target, logits, tau):
        return sum(kl(target[i], logits[i], tau) for i in range(N)) / (N * C)
    ce_s = mean([ce(S_ADV[i], Y[i]) for i in range(N)])
    ce_p = mean([ce(P_ADV[i], Y[i]) for i in range(N)])
    student = lambdas[0] * ce_s + T ** 2 * (lambdas[1] * kl_entries(P_ADV, S_ADV, T)
                                            + lambdas[2] * kl_entries(S_CLEAN, S_ADV, T))
    peer = gammas[0] * ce_p + gammas[1] * kl_entries(S_ADV, P_ADV, 1.0)
    assert close(terms["loss"], student + peer)
    assert close(terms["kl_self"], kl_entries(S_CLEAN, S_ADV, T))
    assert close(terms["peer_kl"], kl_entries(S_ADV, P_ADV, 1))
    predicted = [max(range(C), key=lambda c: P_ADV[i][c]) for i in range(N)]
    assert close(terms["peer_acc"], 100.0 * mean([float(predicted[i] == Y[i]) for i in range(N)]))


def test_peeraid_gradients_reach_the_student_through_the_peers_kl_and_not_the_peer_through_its_target():
    cfg = config("PeerAiD", "--peer_lamb2", "0", "--peer_lamb3", "0", "--peer_gamma1", "0")
    out = outputs()
    out.p_adv = tensor(P_ADV, True)
    loss = configure(cfg).loss(out)["loss"]  # only the peer's KL to the student's S(x')
    g_student, g_peer = torch.autograd.grad(loss, [out.s_adv, out.p_adv])
    assert g_student.abs().sum() > 0 and g_peer.abs().sum() > 0  # the student's prediction is not detached
    cfg = config("PeerAiD", "--peer_lamb3", "0", "--peer_gamma1", "0", "--peer_gamma2", "0")
    out = outputs()
    out.p_adv = tensor(P_ADV, True)
    (g_peer,) = torch.autograd.grad(configure(cfg).loss(out)["loss"], [out.p_adv], allow_unused=True)
    assert g_peer is None or g_peer.abs().sum() == 0  # the peer is the student's target only, detached


def test_peeraid_attacks_from_the_peers_clean_eval_prediction_and_trains_the_peer_on_x_adv():
    cfg = config("PeerAiD", "--num_steps", "2")
    method = configure(cfg)
    assert (cfg.teacher_path, cfg.epochs, cfg.milestones, cfg.weight_decay) == (None, 300, (214, 259, 284), 2e-4)
    torch.manual_seed(0)
    student, peer = TinyNet(), TinyNet()
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 8, 8, generator=generator), torch.randint(0, 3, (4,), generator=generator)
    seen = []
    for who, net in (("student", student), ("peer", peer)):
        net.register_forward_pre_hook(lambda module, args, who=who: seen.append(
            (who, "train" if module.training else "eval", "x" if torch.equal(args[0], x) else "adv",
             torch.is_grad_enabled())))
    _, out = training_step(method, student, None, x, y, epoch=1, extra=peer, generator=torch.Generator().manual_seed(1))
    assert seen == [("peer", "eval", "x", False)] + [("student", "eval", "adv", True)] * 2 + [
        ("peer", "train", "adv", True), ("student", "train", "adv", True), ("student", "train", "adv", True),
        ("student", "train", "x", True)]
    assert out.p_adv.requires_grad


# -- SAAD -----------------------------------------------------------------------------------------------

def entropy(row):
    p = softmax(row)
    return -sum(pi * math.log(pi) for pi in p)


@pytest.mark.parametrize("epoch, beta", [(1, 0.0), (150, 0.5)])
def test_saad_loss_by_hand(epoch, beta):
    cfg = config("SAAD", "--saad_beta", str(beta))
    assert (cfg.options["saad_scale"], cfg.options["saad_lambda"], cfg.options["igdm_alpha"]) == (5.0, 1.0, 1.0)
    assert config("SAAD", dataset="CIFAR100").options["igdm_alpha"] == 10.0
    assert (cfg.swa_start, cfg.epochs, cfg.milestones, cfg.weight_decay, cfg.epsilon) == (94, 200, (100, 150), 2e-4, 8)
    terms = configure(cfg).loss(outputs(epoch))
    h = [entropy(T_ADV[i]) for i in range(N)]
    w = [5.0 * (h[i] - min(h)) for i in range(N)]
    w_scaled = [(w[i] - min(w)) / (max(w) - min(w) + 1e-8) for i in range(N)]
    a = 1.0 * epoch / 200
    per_sample = [w[i] * (kl(T_ADV[i], S_ADV[i]) + a * kl(minus(T_ADV[i], T_MINUS[i]), minus(S_ADV[i], S_MINUS[i])))
                  + beta * (1 - w_scaled[i]) * kl(T_CLEAN[i], S_CLEAN[i]) for i in range(N)]
    assert close(terms["loss"], mean(per_sample)) and close(terms["w_mean"], mean(w)) and close(terms["w_max"], max(w))
    assert min(w) == 0.0  # the most confident teacher prediction gets no adversarial weight


def test_saad_attack_target_is_the_teacher_moved_along_its_input_gradient():
    from methods.base import taylor_target
    torch.manual_seed(0)
    teacher = TinyNet().eval().requires_grad_(False)
    x, y = torch.rand(3, 3, 8, 8), torch.tensor([0, 1, 2])
    target = taylor_target(teacher, x, y, taylor=2.0)
    step = 1e-3 * torch.randn(3, 3, 8, 8)
    x_req = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(teacher(x_req).gather(1, y[:, None]).sum(), [x_req])
    expected = teacher(x).clone()
    for i in range(3):
        expected[i, y[i]] += 2.0 * (g[i] * step[i]).sum()
    assert torch.allclose(target(x + step), expected, atol=1e-6)
    x_adv = (x + step).requires_grad_(True)  # the attack's gradient flows through the first-order change
    (grad,) = torch.autograd.grad(target(x_adv)[torch.arange(3), y].sum(), [x_adv])
    assert torch.allclose(grad, 2.0 * g, atol=1e-6)


def test_saad_runs_the_released_passes_and_attacks_in_eval():
    seen, out = recorded("SAAD")
    # T(x) with an input gradient for the attack's target, which is also the loss's T(x) (saad.py runs
    # T(x) a second time, without gradient: the same values), the attack, T(x'), T(x - d), S(x'),
    # S(x - d), S(x).
    assert seen == [("T", "x")] + [("student", "eval", "other")] * K + [
        ("T", "other"), ("T", "other"), ("student", "train", "other"), ("student", "train", "other"),
        ("student", "train", "x")]
    assert out.s_minus is not None and out.t_minus is not None


# -- the student's weight average (--swa_start) ---------------------------------------------------------

def test_the_weight_average_is_the_mean_of_the_students_and_gets_its_own_batchnorm_statistics():
    from data import Split
    from training.swa import StudentAverage
    torch.manual_seed(0)
    student = TinyNet()
    generator = torch.Generator().manual_seed(2)
    split = Split(torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8, generator=generator),
                  torch.randint(0, 3, (12,), generator=generator))
    average = StudentAverage(student, start=1, generator=torch.Generator().manual_seed(3))
    assert not average.active(1) and average.active(2)
    snapshots = []
    for _ in range(3):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p))
        snapshots.append({k: v.clone() for k, v in student.named_parameters()})
        average.update(student, split, batch_size=4)
    assert average.averaged == 3
    for name, value in average.model.module.named_parameters():
        assert torch.allclose(value, sum(s[name] for s in snapshots) / 3, atol=1e-6), name
    bn = average.model.module.bn
    assert not torch.equal(bn.running_mean, student.bn.running_mean) and bn.num_batches_tracked == 3


def test_swa_runs_write_the_average_beside_the_student_and_resume_exactly(tmp_path, real_data_dir, small_teacher):
    import csv
    common = ["--method", "SAAD", "--model", "wideresnet10_1", "--teacher_model", "wideresnet10_1", "--teacher_path",
              small_teacher, "--data_dir", real_data_dir, "--train_subset", "64", "--test_subset", "32", "--bs", "16",
              "--num_steps", "1", "--epochs", "3", "--swa_start", "1", "--deterministic"]
    unbroken = run_main(*common, "--save_dir", str(tmp_path / "unbroken"))
    assert "SWA clean" in unbroken.stdout.splitlines()[-1] and "SWA clean" not in unbroken.stdout.split("epoch 2/3")[0]
    run_main(*common, "--save_dir", str(tmp_path / "broken"), "--stop_after", "2")
    run_main(*common, "--save_dir", str(tmp_path / "broken"), "--resume")
    with open(tmp_path / "unbroken" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["test_PGD10_acc_swa"] == "" and rows[1]["test_PGD10_acc_swa"] != ""
    assert {"swa_model.pth", "best_PGD10_acc_swa_model.pth"} <= set(os.listdir(tmp_path / "unbroken"))
    for name in ("swa_model.pth", "last.pth"):
        a = torch.load(tmp_path / "unbroken" / name, weights_only=True)
        b = torch.load(tmp_path / "broken" / name, weights_only=True)
        assert all(torch.equal(a["net"][k], b["net"][k]) for k in a["net"]), name
    swa = torch.load(tmp_path / "unbroken" / "swa_model.pth", weights_only=True)
    build_model("wideresnet10_1", 10).load_state_dict(swa["net"])  # a plain student
    assert swa["PGD10_acc"] == float(rows[-1]["test_PGD10_acc_swa"])
    last = torch.load(tmp_path / "unbroken" / "last.pth", weights_only=True)
    assert int(last["swa"]["n_averaged"]) == 2


@pytest.mark.parametrize("method", ["AKD", "AdaIAD", "MTARD", "IGDM", "PeerAiD", "SAAD"])
def test_each_new_method_trains_one_epoch_through_main_tiny(method, tmp_path, real_data_dir, capsys):
    import json
    import runpy
    teacher = tmp_path / "teacher.pth"
    torch.manual_seed(0)
    torch.save({"net": build_model("wideresnet10_1", 200).state_dict()}, teacher)
    flags = ["--method", method, "--model", "wideresnet10_1", "--data_dir", real_data_dir, "--epochs", "1", "--bs",
             "16", "--num_steps", "1", "--train_subset", "32", "--test_subset", "16", "--save_dir", str(tmp_path / "r")]
    if method != "PeerAiD":
        flags += ["--teacher_model", "wideresnet10_1", "--teacher_path", str(teacher)]
    if method in ("AKD", "MTARD"):
        shutil.copyfile(teacher, tmp_path / "natural.pth")
        flags += ["--teacher_st_model", "wideresnet10_1", "--teacher_st_path", str(tmp_path / "natural.pth")]
    if method in ("PeerAiD", "SAAD"):  # one epoch leaves no weight average to report
        flags += ["--swa_start", "0"]
    entry = runpy.run_path(os.path.join(REPO, "main_tiny.py"))
    assert entry["main"](entry["DEFAULTS"], "test", flags) == 0, capsys.readouterr().err
    config = json.load(open(tmp_path / "r" / "config.json"))
    assert config["dataset"] == "Tiny_Image" and config["method"] == method
    if method == "PeerAiD":  # its Tiny ImageNet script's weights
        assert (config["peer_T"], config["peer_lamb2"], config["peer_lamb3"], config["peer_gamma2"]) == (1.0, 35.0,
                                                                                                       20.0, 100.0)


def test_the_reported_checkpoint_of_an_averaging_method_is_its_average_unless_it_had_none():
    from reporting.runs import reported_checkpoint
    assert reported_checkpoint("SAAD") == "swa_model.pth" and reported_checkpoint("SAAD", 95) == "swa_model.pth"
    assert reported_checkpoint("PeerAiD", 214) == "best_PGD10_acc_swa_model.pth"
    assert reported_checkpoint("PeerAiD", 0) == "best_PGD10_acc_model.pth"
    assert reported_checkpoint("MTARD") == "best_PGD10_acc_model.pth" and reported_checkpoint("Natural", 5) == \
        "best_clean_acc_model.pth"
