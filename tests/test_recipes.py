"""Each method's released recipe (docs/methods.md section 9), the shared recipe, explicit flags over
either, and the learning rate on both sides of every milestone, by hand."""
import math

import pytest

from helpers import train_config
from runtime.errors import UserError
from training.config import recipe_line
from training.schedule import learning_rate

# epochs, milestones, weight decay, epsilon, step size (1/255 units), bs on CIFAR-10, bs on CIFAR-100
RELEASED = {
    "Natural": (200, (100, 150), 5e-4, 8, 2, 128, 128),
    "PGDAT": (110, (100, 105), 5e-4, 8, 2, 128, 128),
    "TRADES": (76, (74,), 2e-4, 7.905, 1.785, 128, 128),
    "ARD": (200, (100,), 2e-4, 8, 2, 128, 256),
    "IAD": (200, (100,), 2e-4, 8, 2, 128, 128),
    "RSLAD": (300, (215, 260, 285), 2e-4, 8, 2, 128, 128),
    "AdaAD": (200, (100, 150), 5e-4, 8, 2, 128, 128),
    "DGAD": (200, (100, 150), 5e-4, 8, 2, 128, 128),
    "VarGap": (300, (215, 260, 285), 2e-4, 8, 2, 128, 128),  # its default base, RSLAD
}


def resolved(config):
    return (config.epochs, config.milestones, config.weight_decay, config.epsilon, config.step_size, config.bs)


@pytest.mark.parametrize("method", sorted(RELEASED))
def test_released_recipe_of_each_method(method):
    expected = RELEASED[method]
    config = train_config(method, bs=None)
    assert resolved(config) == expected[:6]
    assert config.recipe == "released" and config.recipe_overrides == ()
    assert config.lr_decay == (0.1,) * len(expected[1]) and config.momentum == 0.9 and config.lr_max == 0.1
    assert train_config(method, dataset="CIFAR100", bs=None).bs == expected[6]


def test_trades_budget_is_its_scripts_fractions():
    config = train_config("TRADES", bs=None)
    assert math.isclose(config.epsilon / 255, 0.031) and math.isclose(config.step_size / 255, 0.007)


def test_vargap_takes_its_bases_recipe():
    assert resolved(train_config("VarGap", "--vg_base", "ARD", bs=None)) == RELEASED["ARD"][:6]


@pytest.mark.parametrize("method", sorted(RELEASED))
def test_the_dgad_paper_recipe_trains_every_method_alike(method):
    config = train_config(method, "--recipe", "dgad-paper", bs=None)
    assert resolved(config) == (200, (100, 150), 5e-4, 8, 2, 128)


def test_explicit_flags_override_any_recipe_and_milestones_scale_with_epochs():
    config = train_config("RSLAD", "--recipe", "dgad-paper", "--weight_decay", "2e-4", "--epochs", "100", bs=None)
    assert (config.weight_decay, config.epochs, config.milestones) == (2e-4, 100, (50, 75))
    assert config.recipe_overrides == ("epochs", "weight_decay")
    assert train_config("RSLAD", "--epochs", "30", bs=None).milestones == (22, 26, 29)  # ceil(215/10) ...
    assert train_config("DGAD", "--epochs", "3", bs=None).milestones == (2, 3)  # the old 50%/75% rule
    line = recipe_line(config)
    assert "recipe dgad-paper" in line and "100 epochs" in line and "x0.1/0.1 after epochs 50, 75" in line
    assert "weight decay 0.0002" in line and "(--epochs, --weight_decay from the command line)" in line


def test_arbitrary_milestones_and_factors():
    config = train_config("DGAD", "--milestones", "3,7", "--lr_decay", "0.5,0.2", bs=None)
    assert (config.milestones, config.lr_decay) == ((3, 7), (0.5, 0.2))
    lrs = [learning_rate("piecewise", 0.1, e, 10, config.milestones, config.lr_decay) for e in range(10)]
    assert lrs == pytest.approx([0.1] * 3 + [0.05] * 4 + [0.01] * 3, rel=1e-12)
    assert train_config("DGAD", "--milestones", "5", "--lr_decay", "0.5", bs=None).lr_decay == (0.5,)


@pytest.mark.parametrize("flags, message", [
    (("--lr_decay", "0.1,0.2"), "--lr_decay has 2 factors for 1 milestones"),
    (("--milestones", "100,x"), "--milestones '100,x' is not a comma-separated list"),
])
def test_bad_schedules_are_one_line_errors(flags, message):
    with pytest.raises(UserError, match=message):
        train_config("ARD", *flags, bs=None)


# The learning rate on both sides of each milestone, counting epochs from 1 as the README does.
BOUNDARIES = {
    "DGAD": {100: 0.1, 101: 0.01, 150: 0.01, 151: 0.001, 200: 0.001},
    "PGDAT": {100: 0.1, 101: 0.01, 105: 0.01, 106: 0.001, 110: 0.001},
    "TRADES": {74: 0.1, 75: 0.01, 76: 0.01},  # train_trades_cifar10.py: epoch >= 75 (from 1) at 0.01
    "ARD": {100: 0.1, 101: 0.01, 151: 0.01, 200: 0.01},  # 0.01 from epoch 100 (from 0) on, never lower
    "RSLAD": {215: 0.1, 216: 0.01, 260: 0.01, 261: 0.001, 285: 0.001, 286: 0.0001, 300: 0.0001},
    "IAD": {100: 0.1, 101: 0.01, 200: 0.01},
    "AdaAD": {100: 0.1, 101: 0.01, 150: 0.01, 151: 0.001},
    "Natural": {100: 0.1, 101: 0.01, 150: 0.01, 151: 0.001},
}


@pytest.mark.parametrize("method", sorted(BOUNDARIES))
def test_learning_rate_at_each_milestones_boundary(method):
    config = train_config(method, bs=None)
    for epoch, lr in BOUNDARIES[method].items():
        got = learning_rate(config.lr_schedule, config.lr_max, epoch - 1, config.epochs, config.milestones,
                            config.lr_decay)
        assert got == pytest.approx(lr, rel=1e-12), (method, epoch)


def test_cosine_keeps_the_authors_floor():
    assert learning_rate("cosine", 0.1, 0, 200) == pytest.approx(0.1)
    assert learning_rate("cosine", 0.1, 100, 200) == pytest.approx(0.05)
    assert learning_rate("cosine", 0.1, 199, 200) == 1e-4  # 0.05 (1 + cos(199 pi / 200)) = 6.2e-6, floored
    assert learning_rate("constant", 0.1, 150, 200) == 0.1


def test_the_config_records_the_recipe_and_every_resolved_value():
    record = train_config("RSLAD", "--epochs", "30", bs=None).record()
    assert record["recipe"] == "released" and "zibojia/RSLAD" in record["recipe_source"]
    assert (record["epochs"], record["milestones"], record["lr_decay"], record["weight_decay"]) == \
        (30, (22, 26, 29), (0.1, 0.1, 0.1), 2e-4)
    assert record["recipe_overrides"] == ("epochs",)


def test_per_epoch_pgd10_is_at_8_over_255_whatever_the_training_radius(monkeypatch):
    from training import loop
    seen = {}
    monkeypatch.setattr(loop, "pgd_ce_attack", lambda eps, step, steps, generator: seen.update(
        eps=eps, step=step, steps=steps))
    loop.per_epoch_attack(train_config("DGAD", "--epsilon", "4", "--step_size", "1"), None)
    assert seen == {"eps": 8 / 255, "step": 2 / 255, "steps": 10}
    loop.per_epoch_attack(train_config("TRADES", "--eval_epsilon", "16", "--eval_step_size", "4"), None)
    assert seen == {"eps": 16 / 255, "step": 4 / 255, "steps": 10}


@pytest.mark.parametrize("flag", ["--epsilon", "--step_size", "--eval_epsilon", "--eval_step_size"])
def test_a_fraction_where_1_255_units_are_expected_is_refused_with_the_fix(flag):
    with pytest.raises(UserError, match=f"{flag} 0.031 is below 1: {flag} counts 1/255 pixel units.* as {flag} "):
        train_config("DGAD", flag, "0.031")


@pytest.mark.parametrize("flags, message", [
    (("--lr_max", "nan"), "--lr_max must be a finite number"),
    (("--lr_max", "-0.1"), "--lr_max must be > 0"),
    (("--momentum", "1"), r"--momentum must be in \[0, 1\)"),
    (("--momentum", "-0.5"), r"--momentum must be in \[0, 1\)"),
    (("--weight_decay=-1e-4",), "--weight_decay must be >= 0"),
    (("--epsilon", "inf"), "--epsilon must be a finite number"),
    (("--ALP_beta", "nan"), "--ALP_beta must be a finite number"),
    (("--lr_decay", "0"), "--lr_decay factors must be finite and > 0"),
    (("--resume", "--overwrite"), "pass one of them"),
    (("--ALP_beta=-1",), "--ALP_beta must be >= 0, got -1"),
])
def test_numeric_flags_are_checked_before_any_work(flags, message):
    with pytest.raises(UserError, match=message):
        train_config("DGAD", *flags)


@pytest.mark.parametrize("method, flags, message", [
    ("ARD", ("--temp", "0"), "--temp must be > 0, got 0"),
    ("ARD", ("--ARD_alpha", "1.5"), "--ARD_alpha must be <= 1, got 1.5"),
    ("AdaAD", ("--AdaAD_alpha=-0.1",), "--AdaAD_alpha must be >= 0"),
    ("IAD", ("--IAD_begin=-1",), "--IAD_begin must be >= 0, got -1"),
    ("TRADES", ("--trades_beta=-6",), "--trades_beta must be >= 0"),
    ("VarGap", ("--vg_cov=-1",), "--vg_cov must be >= 0"),
])
def test_method_options_are_checked_against_their_range(method, flags, message):
    with pytest.raises(UserError, match=message):
        train_config(method, *flags)


def test_prefix_abbreviations_are_off():
    from helpers import CIFAR_DEFAULTS
    from training.config import build_parser
    with pytest.raises(SystemExit):
        build_parser(CIFAR_DEFAULTS, "test").parse_args(["--eps", "8"])  # not --epsilon


def test_the_default_folder_names_every_defining_flag_or_hashes_it():
    def folder(*flags):
        from helpers import CIFAR_DEFAULTS
        from training.config import build_parser, resolve
        return resolve(build_parser(CIFAR_DEFAULTS, "test").parse_args(["--method", "RSLAD", *flags])).save_dir
    base = folder()
    assert base.startswith("checkpoints/CIFAR10/RSLAD/resnet18_T-wideresnet34_10_eps8_k10_a2_bs128_lr0.1_piecewise")
    assert folder("--test_subset", "100") != base and "test100" in folder("--test_subset", "100")
    assert folder("--eval_epsilon", "4") != base and folder("--momentum", "0.8") != base
    assert folder("--eval_bs", "64", "--gpu_id", "1") == base  # operational flags share the folder


@pytest.mark.parametrize("method", ["Fair-ARD", "Fair-IAD", "Fair-RSLAD", "Fair-MTARD"])
def test_the_fair_scripts_sgd_is_nesterovs_and_a_flag_overrides_it(method):
    config = train_config(method, bs=None)
    assert config.nesterov is True and config.recipe_overrides == ()
    assert "momentum 0.9 (Nesterov)" in recipe_line(config)
    off = train_config(method, "--no-nesterov", bs=None)
    assert off.nesterov is False and off.recipe_overrides == ("nesterov",)
    assert train_config(method, "--recipe", "dgad-paper", bs=None).nesterov is False


@pytest.mark.parametrize("method", sorted(RELEASED) + ["ABSLD"])
def test_every_other_released_sgd_is_plain_momentum(method):
    config = train_config(method, bs=None)
    assert config.nesterov is False and "Nesterov" not in recipe_line(config)
    assert train_config(method, "--nesterov", bs=None).recipe_overrides == ("nesterov",)


def test_the_optimizer_takes_nesterovs_step_by_hand():
    import torch
    from training.schedule import build_optimizer
    for nesterov, expected in ((False, 1.0 - 0.1 * 2.0), (True, 1.0 - 0.1 * (2.0 + 0.9 * 2.0))):
        w = torch.nn.Parameter(torch.tensor([1.0]))
        optimizer = build_optimizer(train_config("Fair-ARD", "--nesterov" if nesterov else "--no-nesterov",
                                                 "--weight_decay", "0"), [w])
        (2.0 * w).sum().backward()  # gradient 2; first step: buf = g, Nesterov's update g + 0.9 buf
        optimizer.step()
        assert w.item() == pytest.approx(expected, abs=1e-7)


def test_nesterov_without_momentum_is_a_one_line_error():
    with pytest.raises(UserError, match="--nesterov needs a momentum"):
        train_config("Fair-ARD", "--momentum", "0", bs=None)
    assert train_config("ARD", "--momentum", "0", bs=None).nesterov is False
