"""The engine refuses what cannot produce what a method reports (one line, before any work), and the
fast-tier guards of what would otherwise go wrong silently: the crop range, which epoch each best
checkpoint holds, the resume state, the run identity, resolved defaults, CW-L2's closest example and
DGAD's released arithmetic. No datasets: every test here runs in the fast tier."""
import argparse
import dataclasses
import json
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import CIFAR_DEFAULTS, TinyNet, train_config
from methods import get_method, method_names
from runtime.errors import UserError
from training.config import OPERATIONAL_FLAGS, SEED_MAX, Config, build_parser, default_save_dir, resolve
from training.run_dir import identity_differences


def refused(method, *flags, **kw):
    with pytest.raises(UserError) as error:
        train_config(method, *flags, **kw)
    return str(error.value)


# -- what a method reports always exists ----------------------------------------------------------------

def test_saad_starts_its_average_as_saad_py_does_and_scales_it_with_the_epochs():
    # saad.py averages from epoch 95 (counting from 1) on: after the first 94 of its 200.
    assert train_config("SAAD", bs=None).swa_start == 94
    assert train_config("SAAD", "--epochs", "20", bs=None).swa_start == 9  # from epoch ceil(9.5) = 10 on
    assert train_config("SAAD", "--epochs", "2", bs=None).swa_start == 1  # at least the last epoch
    assert train_config("PeerAiD", bs=None).swa_start == 214  # its first milestone, as its configs
    assert train_config("PeerAiD", "--epochs", "2", bs=None).swa_start == 1  # milestone 2 would leave none


@pytest.mark.parametrize("method", ["SAAD", "PeerAiD"])
def test_a_run_too_short_for_the_reported_average_is_refused_with_the_fix(method):
    message = refused(method, "--epochs", "1")
    assert "reports the weight average" in message and "--epochs 2 or more, or --swa_start 0" in message
    assert train_config(method, "--epochs", "1", "--swa_start", "0").swa_start == 0  # the plain student


@pytest.mark.parametrize("method", method_names())
def test_every_resolved_average_has_an_epoch_to_average(method):
    from training.swa import StudentAverage
    for epochs in (2, 3, 5, 17, 300):
        cfg = train_config(method, "--epochs", str(epochs), "--teacher_st_path", "natural.pth") \
            if get_method(method).needs_natural_teacher else train_config(method, "--epochs", str(epochs))
        assert 0 <= cfg.swa_start < epochs
        if get_method(method).swa_start(argparse.Namespace(**cfg.record())):  # the method averages
            assert cfg.swa_start > 0 and StudentAverage.active(argparse.Namespace(start=cfg.swa_start), epochs)


def test_an_explicit_swa_start_at_or_past_the_end_is_refused_for_any_method():
    for method in ("PGDAT", "SAAD"):
        message = refused(method, "--epochs", "5", "--swa_start", "5")
        assert message.startswith("--swa_start 5 leaves no epoch to average in a 5-epoch run") and \
            "--swa_start 4 or less" in message
    assert train_config("PGDAT", "--epochs", "5", "--swa_start", "4").swa_start == 4


def test_akd_weights_that_leave_a_negative_cross_entropy_weight_are_refused():
    message = refused("AKD", "--AKD_a1", "0.8", "--AKD_a2", "0.3")
    assert "--AKD_a1 0.8 + --AKD_a2 0.3 = 1.1 is above 1" in message and "negative" in message
    assert train_config("AKD", "--AKD_a1", "0.7", "--AKD_a2", "0.3").options["AKD_a2"] == 0.3  # sum 1: no CE


@pytest.mark.parametrize("method", ["AKD", "MTARD"])
def test_the_same_file_as_both_teachers_is_refused(method, tmp_path, monkeypatch):
    teacher = tmp_path / "t.pth"
    teacher.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    for natural in (str(teacher), "t.pth", "./sub/../t.pth"):  # the same file, however it is spelt
        message = refused(method, "--teacher_path", str(teacher), "--teacher_st_path", natural)
        assert "--teacher_path and --teacher_st_path are the same file" in message
    os.symlink(teacher, tmp_path / "link.pth")
    assert "same file" in refused(method, "--teacher_path", "t.pth", "--teacher_st_path", "link.pth")
    assert "same file" in refused(method, "--teacher_path", "missing.pth", "--teacher_st_path", "./missing.pth")
    (tmp_path / "n.pth").write_bytes(b"x")  # a copy is another file
    assert train_config(method, "--teacher_path", "t.pth", "--teacher_st_path", "n.pth").teacher_st_path == "n.pth"


@pytest.mark.parametrize("milestones", ["150,100", "100,100", "0,100", "-5"])
def test_milestones_must_increase_from_1(milestones):
    assert "must be increasing epoch counts >= 1" in refused("DGAD", "--milestones", milestones)


def test_a_milestone_at_or_past_the_last_epoch_warns(capsys):
    assert train_config("DGAD", "--epochs", "10", "--milestones", "5,10").milestones == (5, 10)
    assert "--milestones 5,10 reaches --epochs 10" in capsys.readouterr().err
    train_config("DGAD", "--epochs", "3")  # scaled milestones (2, 3) are the recipe's own: no warning
    assert capsys.readouterr().err == ""


def test_stop_after_is_a_positive_count_or_left_out():
    assert train_config("PGDAT").stop_after is None and train_config("PGDAT", "--stop_after", "1").stop_after == 1
    for value in ("0", "-1"):
        assert "--stop_after must be >= 1" in refused("PGDAT", "--stop_after", value)


def test_seeds_outside_what_the_runs_generators_take_are_refused():
    from runtime.device import make_generator
    from training.networks import STREAM_SEED_OFFSETS, SWA_SEED_OFFSET
    for seed in (-1, SEED_MAX + 1, 2**64):
        assert refused("PGDAT", "--seed", str(seed)).startswith("--seed must be an integer in 0..")
    assert train_config("PGDAT", "--seed", str(SEED_MAX)).seed == SEED_MAX
    for offset in (*STREAM_SEED_OFFSETS.values(), SWA_SEED_OFFSET):  # the largest accepted seed seeds every stream
        make_generator(torch.device("cpu"), SEED_MAX + offset)


def test_a_bad_flag_is_one_line_and_torchruns_error_file_names_it(tmp_path, monkeypatch, capsys):
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    with pytest.raises(SystemExit) as stop:
        build_parser(CIFAR_DEFAULTS, "test").parse_args(["--epochs", "six"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: argument --epochs: invalid int value: 'six'")
    shown = json.loads(error_file.read_text())["message"]  # what torchrun's report prints as the cause
    assert shown["extraInfo"]["py_callstack"] == err.strip() and int(shown["extraInfo"]["timestamp"]) > 0


# -- the crop range ---------------------------------------------------------------------------------------

def test_every_crop_offset_and_both_flips_occur_on_both_axes():
    from data.loader import random_crop_flip
    padding, size, n = 4, 8, 400
    images = (torch.arange(size * size, dtype=torch.uint8) + 1).reshape(1, 1, size, size).repeat(n, 3, 1, 1)
    out = random_crop_flip(images, torch.Generator().manual_seed(0), padding=padding)
    padded = F.pad(images[0], (padding,) * 4)
    seen = set()
    for image in out:  # each output is exactly one crop of the padded image (pixels are distinct)
        found = [(dy, dx, flip) for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
                 for flip in (False, True)
                 if torch.equal(image, padded[:, dy:dy + size, dx:dx + size].flip(2) if flip
                                else padded[:, dy:dy + size, dx:dx + size])]
        assert len(found) == 1
        seen.add(found[0])
    offsets = range(2 * padding + 1)
    assert {dy for dy, _, _ in seen} == set(offsets) and {dx for _, dx, _ in seen} == set(offsets)
    assert {flip for _, _, flip in seen} == {False, True}


# -- which epoch each checkpoint holds ----------------------------------------------------------------------

def test_each_best_file_follows_its_own_accuracy():
    from training.loop import checkpoints_to_save
    from training.run_dir import RunState
    state = RunState()
    rows = [{"epoch": 1, "test_clean_acc": 50.0, "test_PGD10_acc": 20.0},
            {"epoch": 2, "test_clean_acc": 60.0, "test_PGD10_acc": 18.0},  # clean peaks later
            {"epoch": 3, "test_clean_acc": 55.0, "test_PGD10_acc": 25.0},  # PGD-10 peaks here
            {"epoch": 4, "test_clean_acc": 58.0, "test_PGD10_acc": 25.0,  # a tie is no better
             "test_clean_acc_swa": 40.0, "test_PGD10_acc_swa": 30.0},
            {"epoch": 5, "test_clean_acc": 1.0, "test_PGD10_acc": 1.0,
             "test_clean_acc_swa": 41.0, "test_PGD10_acc_swa": 29.0}]
    written = {row["epoch"]: checkpoints_to_save(state, row) for row in rows}
    holder = {}
    for epoch, files in written.items():
        for name, average in files:
            holder[name] = (epoch, average)
    assert holder == {"best_PGD10_acc_model.pth": (3, None), "best_clean_acc_model.pth": (2, None),
                      "swa_model.pth": (5, "swa"), "best_PGD10_acc_swa_model.pth": (4, "swa")}
    assert (state.best_pgd, state.best_clean, state.best_pgd_swa) == (25.0, 60.0, 30.0)


# -- the resume state ----------------------------------------------------------------------------------------

def make_trainee(seed):
    from training.networks import Trainee, run_generators
    from training.swa import StudentAverage
    torch.manual_seed(seed)
    student, extra = TinyNet(), nn.Linear(3, 3)
    optimizer = torch.optim.SGD(list(student.parameters()) + list(extra.parameters()), lr=0.1, momentum=0.9,
                                weight_decay=5e-4)
    generators = run_generators(torch.device("cpu"), seed)
    generators["swa"] = torch.Generator().manual_seed(seed + 7)
    return Trainee(student, None, extra, optimizer, generators, average=StudentAverage(student, 1, generators["swa"]))


def test_last_pth_round_trips_the_optimizer_the_random_streams_and_the_average(tmp_path):
    from runtime.checkpoints import atomic_save, safe_load
    from runtime.device import capture_rng_state
    from training.run_dir import checkpoint_payload
    trainee = make_trainee(0)
    x = torch.rand(4, 3, 8, 8)
    for _ in range(2):  # momentum buffers, streams drawn from, an average with a count
        trainee.optimizer.zero_grad()
        (trainee.student(x).sum() + trainee.extra(torch.ones(3)).sum()).backward()
        trainee.optimizer.step()
        trainee.average.model.update_parameters(trainee.student)
        for generator in trainee.generators.values():
            torch.rand(5, generator=generator)
    torch.rand(3)  # the global stream too
    path = str(tmp_path / "last.pth")
    atomic_save(checkpoint_payload(trainee, None, {"model": "tiny", "num_classes": 3}, trainee.resume_state()), path)
    expected_rng = capture_rng_state(trainee.generators)

    resumed = make_trainee(1)  # another start: every piece must come from the file
    torch.manual_seed(123)
    resumed.load(safe_load(path), path, "tiny")
    a, b = trainee.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        assert torch.equal(a["state"][key]["momentum_buffer"], b["state"][key]["momentum_buffer"])
    got_rng = capture_rng_state(resumed.generators)
    assert torch.equal(got_rng["torch"], expected_rng["torch"]) and got_rng["python"] == expected_rng["python"]
    assert torch.equal(got_rng["numpy"][1], expected_rng["numpy"][1])
    for name, generator in trainee.generators.items():
        assert torch.equal(resumed.generators[name].get_state(), generator.get_state()), name
        assert torch.equal(torch.rand(4, generator=resumed.generators[name]), torch.rand(4, generator=generator))
    assert torch.equal(torch.rand(2), (torch.set_rng_state(expected_rng["torch"]), torch.rand(2))[1])
    for mine, theirs in ((trainee.student, resumed.student), (trainee.extra, resumed.extra),
                         (trainee.average.model, resumed.average.model)):
        assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in mine.state_dict().items())
    assert resumed.average.averaged == 2


# -- the run identity ------------------------------------------------------------------------------------------

def test_operational_flags_are_the_named_few():
    # Every other Config field defines the run; a change here must be deliberate.
    assert OPERATIONAL_FLAGS == {"save_dir", "resume", "overwrite", "stop_after", "gpu_id", "eval_bs", "nan_policy",
                                 "data_dir", "download", "deterministic", "channels_last", "compile", "teacher_path",
                                 "teacher_st_path", "recipe_overrides", "dist_timeout", "teacher_source",
                                 "teacher_st_source", "tensorboard", "wandb"}


def changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, tuple):
        return value + (value[-1] * 2 + 1 if value and isinstance(value[-1], (int, float)) else "x",)
    return f"{value}x"


def test_every_defining_setting_changes_the_folder_hash_and_the_resume_identity():
    args = build_parser(CIFAR_DEFAULTS, "test").parse_args(
        ["--method", "AKD", "--model", "wideresnet10_1", "--teacher_model", "wideresnet10_1", "--save_dir", "x"])
    config = resolve(args)
    options = get_method("AKD").options_for(args)
    defining = [f.name for f in dataclasses.fields(Config) if f.name not in OPERATIONAL_FLAGS | {"options"}]
    defining += list(config.options)
    assert {"seed", "epochs", "swa_start", "sync_bn", "teacher_st_model", "precision", "recipe", "AKD_a2"} <= \
        set(defining) and len(defining) == len(dataclasses.fields(Config)) - len(OPERATIONAL_FLAGS) - 1 + 5
    base_folder, base_record = default_save_dir(args, options), config.record()
    for name in defining:
        if name == "recipe_source":  # follows from --recipe and --method, which are checked themselves
            continue
        other = argparse.Namespace(**vars(args))
        setattr(other, name, "MTARD" if name == "method" else changed(getattr(args, name)))
        assert default_save_dir(other, options) != base_folder, name
        differences = identity_differences(base_record, dict(base_record, **{name: getattr(other, name)}))
        assert len(differences) == 1 and differences[0].startswith(f"--{name} "), name


# -- resolved defaults -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset, beta", [("CIFAR10", 5.0), ("CIFAR100", 5.0), ("Tiny_Image", 15.0)])
def test_dgad_beta_by_dataset(dataset, beta):
    parser = build_parser({"dataset": dataset, "datasets": ["CIFAR10", "CIFAR100", "Tiny_Image"],
                           "teacher_model": "wideresnet34_10"}, "test")
    config = resolve(parser.parse_args(["--save_dir", "x"]))
    assert (config.method, config.options["ALP_beta"], config.epochs, config.milestones) == ("DGAD", beta, 200,
                                                                                             (100, 150))


def test_akd_and_mtard_natural_teacher_defaults():
    for method in ("AKD", "MTARD"):
        assert resolve(build_parser(CIFAR_DEFAULTS, "test").parse_args(
            ["--method", method, "--save_dir", "x"])).teacher_st_model == "wideresnet34_10"


# -- CW-L2 keeps the closest success -------------------------------------------------------------------------------

class Recorder(nn.Module):
    """A linear two-class model that keeps every input it is given (CW-L2's iterates)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))
            self.linear.bias.copy_(torch.tensor([2.05, 0.0]))
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.linear(x.flatten(1))


def test_cw_l2_returns_the_closest_successful_iterate_not_the_last():
    from attacks.cw import cw_l2, from_tanh_space, misclassified_by, to_tanh_space
    model = Recorder()
    x, y = torch.full((1, 1, 2, 2), 0.5), torch.tensor([0])  # class 0 leads by 0.05
    # A large constant and step: Adam's momentum carries the iterate past the boundary, farther than needed.
    x_adv = cw_l2(model, x, y, c=100.0, confidence=0.0, lr=0.05, max_iterations=30, abort_early=False)
    x0 = from_tanh_space(to_tanh_space(x))
    successes = [(float((seen - x0).pow(2).sum()), seen) for seen in model.seen
                 if misclassified_by(model.linear(seen.flatten(1)), y, 0.0).item()]
    assert len(successes) > 1
    closest = min(successes, key=lambda pair: pair[0])
    assert successes[-1][0] > closest[0] * 1.5  # the case would catch "the last success"
    assert torch.equal(x_adv, closest[1])


# -- DGAD's released arithmetic, bitwise --------------------------------------------------------------------------

def released_dgad(s_clean, s_adv, t_clean, t_adv, y, beta, bs):
    """The DGAD branch of the released main.py (after the label swaps, which tests/test_dgad_loss.py checks),
    written as it is there: Python floats from .item(), reciprocals, float32 tensors."""
    kl = nn.KLDivLoss(reduction="none")
    lam = torch.zeros(len(y))
    st = t_clean.argmax(1) != y
    lam[st] = 1.0
    num_lambda = lam.sum().item()
    loss_clean = (1 / (num_lambda + 1e-10)) * torch.sum(
        lam * kl(F.log_softmax(s_clean, dim=1), F.softmax(t_clean, dim=1)).sum(dim=1))
    loss_adv = (1 / (len(y) - num_lambda)) * torch.sum(
        (1 - lam) * kl(F.log_softmax(s_adv, dim=1), F.softmax(t_adv, dim=1)).sum(dim=1))
    loss_alp = nn.MSELoss()(F.softmax(s_adv, dim=1), F.softmax(s_clean, dim=1))
    return (num_lambda / bs) * loss_clean + ((bs - num_lambda) / bs) * loss_adv + beta * loss_alp


@pytest.mark.parametrize("teacher_wrong", [0, 3, 7])
def test_dgad_loss_equals_the_released_expression_bitwise(teacher_wrong):
    from losses.dgad import dgad_terms
    n, classes = 16, 10
    for seed in range(20):  # a division instead of the reciprocal differs in the last bit on about half of them
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, classes, (n,), generator=g)
        t_clean = torch.randn(n, classes, generator=g)
        t_clean[torch.arange(n), y] = 10.0  # right everywhere...
        t_clean[:teacher_wrong, (y[:teacher_wrong] + 1) % classes] = 20.0  # ...but on the first rows
        s_clean, s_adv, t_adv = (torch.randn(n, classes, generator=g) for _ in range(3))
        ours = dgad_terms(s_clean, s_adv, t_clean, t_adv, y, beta=5.0, batch_size=32, use_els=False)
        assert ours["loss"].dtype == torch.float32
        assert torch.equal(ours["loss"], released_dgad(s_clean, s_adv, t_clean, t_adv, y, 5.0, 32)), seed
