"""Every method trains one epoch end to end through main.py on a tiny real CIFAR-10 subset; a TRADES
run makes the teacher that the distillation runs load with --teacher_path.

The TRADES run goes through main.py in a subprocess, exactly as a user runs it; the others run
main.py's own entry point (its DEFAULTS and `run`) in this process, which saves one torch import
(several seconds) per method."""
import csv
import json
import math
import os
import runpy
import shutil

import pytest

from runtime.checkpoints import load_weights, safe_load
from methods import get_method
from models import build_model
from helpers import REPO, run_script

MODEL = "wideresnet10_1"
TINY = ("--model", MODEL, "--train_subset", "64", "--test_subset", "32", "--bs", "32", "--eval_bs", "32",
        "--num_steps", "2", "--epochs", "1")


def run_main_in_process(*args):
    main = runpy.run_path(os.path.join(REPO, "main.py"))  # its DEFAULTS and entry, without __main__
    try:
        return main["main"](main["DEFAULTS"], "test", list(args))
    except SystemExit as exc:  # a UserError exits 2
        return exc.code


def check_run(save_dir, method):
    """One results row with a finite variance gap, the method recorded in config.json, and a
    best checkpoint that loads into a plain student."""
    with open(os.path.join(save_dir, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    assert math.isfinite(float(rows[0]["test_variance_gap"]))
    assert math.isfinite(float(rows[0]["train_loss"]))
    with open(os.path.join(save_dir, "config.json")) as f:
        config = json.load(f)
    described = get_method(method).describe()
    assert (config["method"], config["paper"], config["summary"]) == (method, described["paper"],
                                                                      described["summary"])
    best = os.path.join(save_dir, "best_PGD10_acc_model.pth")
    load_weights(build_model(MODEL, 10), best, name=MODEL, path=best)
    return rows[0], config, safe_load(best)


@pytest.fixture(scope="module")
def trades_teacher(real_data_dir, tmp_path_factory):
    save_dir = str(tmp_path_factory.mktemp("trades"))
    result = run_script("main.py", "--method", "TRADES", *TINY, "--data_dir", real_data_dir, "--save_dir", save_dir,
                        "--overwrite")
    assert result.returncode == 0, result.stderr
    _, config, _ = check_run(save_dir, "TRADES")
    assert config["trades_beta"] == 6.0 and config["teacher_path"] is None
    return os.path.join(save_dir, "best_PGD10_acc_model.pth")


def test_trades_teacher_is_loaded_by_a_following_dgad_run(trades_teacher, real_data_dir, tmp_path, capsys):
    code = run_main_in_process("--method", "DGAD", *TINY, "--teacher_model", MODEL, "--teacher_path", trades_teacher,
                               "--data_dir", real_data_dir, "--save_dir", str(tmp_path))
    assert code == 0, capsys.readouterr().err
    _, config, _ = check_run(str(tmp_path), "DGAD")
    assert config["teacher_path"] == trades_teacher


@pytest.mark.parametrize("method, flags, recorded", [
    ("Natural", (), {}),
    ("PGDAT", (), {}),
    ("ARD", (), {"temp": 30.0, "ARD_alpha": 1.0, "kl_reduction": "authors"}),
    ("IAD", ("--IAD_begin", "0"), {"temp": 1.0, "IAD_begin": 0, "IAD_beta": 0.1}),  # introspection on at once
    ("RSLAD", ("--kl_reduction", "batchmean"), {"kl_reduction": "batchmean"}),
    ("AdaAD", (), {"AdaAD_alpha": 1.0, "kl_reduction": "authors"}),
    ("AKD", (), {"AKD_a1": 0.5, "AKD_a2": 0.25, "temp": 1.0, "teacher_st_model": MODEL}),
    ("AdaIAD", ("--IAD_begin", "0"), {"temp": 30.0, "ARD_alpha": 1.0, "IAD_begin": 0, "IAD_beta": 0.1}),
    ("MTARD", (), {"MTARD_rate": 0.025, "MTARD_power": 1.0, "weight_decay": 2e-4}),
    ("IGDM", (), {"igdm_alpha": 1.0, "igdm_horizon": 200, "epsilon": 2.0, "step_size": 8.0}),
    ("DGAD", ("--igdm_alpha", "2"), {"igdm_alpha": 2.0, "ALP_beta": 5.0}),  # the IGDM plug-in on DGAD
    ("DGAD", ("--dgad_iad", "intent", "--IAD_begin", "0"), {"dgad_iad": "intent"}),
    # A 1-epoch run has no weight average to report: these two report the plain student instead.
    ("PeerAiD", ("--swa_start", "0"), {"peer_T": 5.0, "peer_lamb1": 0.0, "peer_gamma2": 0.1, "teacher_path": None}),
    ("SAAD", ("--swa_start", "0"), {"saad_scale": 5.0, "saad_beta": 0.0, "igdm_alpha": 1.0, "swa_start": 0}),
    ("VarGap", ("--vg_gram", "1"), {"vg_base": "RSLAD", "vg_cov": 1.0, "vg_gram": 1.0, "kl_reduction": "authors"}),
])
def test_every_method_trains_one_epoch_through_main(method, flags, recorded, trades_teacher, real_data_dir,
                                                    tmp_path, capsys):
    teacher = ("--teacher_model", MODEL, "--teacher_path", trades_teacher) if get_method(method).needs_teacher else ()
    if get_method(method).needs_natural_teacher:  # any other checkpoint of the architecture will do here
        natural = str(tmp_path.parent / f"{tmp_path.name}_natural.pth")
        shutil.copyfile(trades_teacher, natural)
        teacher += ("--teacher_st_model", MODEL, "--teacher_st_path", natural)
    code = run_main_in_process("--method", method, *TINY, *teacher, *flags, "--data_dir", real_data_dir,
                               "--save_dir", str(tmp_path))
    assert code == 0, capsys.readouterr().err
    row, config, best = check_run(str(tmp_path), method)
    assert {key: config[key] for key in recorded} == recorded
    parts = list(get_method(method).parts or config["loss_parts"])
    parts += ["L_IAD"] if config.get("dgad_iad", "off") != "off" else []
    parts += ["igdm"] if config.get("igdm_alpha") and "igdm" not in get_method(method).parts else []
    assert [key[len("train_"):] for key in row if key.startswith("train_") and key not in ("train_loss", "train_acc")] \
        == parts == config["loss_parts"]
    if method == "VarGap":
        # The projector (student width -> teacher width) is saved beside the plain student weights.
        assert "approximate re-implementation" in config["summary"]
        assert tuple(best["extra"]["weight"].shape) == (64, 64)
        assert tuple(safe_load(os.path.join(str(tmp_path), "last.pth"))["extra"]["weight"].shape) == (64, 64)
    elif method == "PeerAiD":  # the peer, trained beside the student, is saved (and resumed) with it
        peer = safe_load(os.path.join(str(tmp_path), "last.pth"))["extra"]
        build_model(MODEL, 10).load_state_dict(peer)
        assert 0 <= float(row["train_peer_acc"]) <= 100
    else:
        assert "extra" not in best


def test_an_option_of_another_method_stops_the_run_before_anything_is_written(tmp_path, capsys):
    save_dir = tmp_path / "run"
    code = run_main_in_process("--method", "PGDAT", *TINY, "--trades_beta", "3", "--save_dir", str(save_dir))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --trades_beta is not used by --method PGDAT")
    assert len(err.strip().splitlines()) == 1 and not save_dir.exists()
