"""AutoAttack (pyautoattack, standard, L-inf) through main_eval on a few images of a trained tiny model."""
import json

import pytest
import torch

from evaluation import cli as eval_cli
from helpers import quick_trained_model

CIFAR = {"dataset": "CIFAR10", "datasets": ["CIFAR10", "CIFAR100"]}


@pytest.fixture(scope="module")
def checkpoint(real_data_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("aa") / "model.pth"
    torch.save({"net": quick_trained_model(real_data_dir).state_dict()}, path)
    return str(path)


def evaluate(checkpoint, data_dir, out, *args):
    eval_cli.main(CIFAR, "test", ["--model", "wideresnet10_1", "--model_path", checkpoint, "--data_dir", data_dir,
                                  "--out", str(out), *args])
    with open(out) as f:
        return json.load(f)


def test_all_four_attacks_run_on_points_that_survive_a_tiny_eps(checkpoint, real_data_dir, tmp_path, capsys):
    # At eps 1/255 the correctly classified points stay robust, so every stage of the standard
    # version runs (at 8/255 APGD-CE alone breaks this weak model and AutoAttack skips the rest).
    report = evaluate(checkpoint, real_data_dir, tmp_path / "aa.json", "--attacks", "natural,aa", "--n_ex", "8",
                      "--eps", "1")
    entry = report["radii"]["1"]["results"]["aa"]
    assert entry["attack"] == "AutoAttack" and entry["protocol"] == "paper" and entry["n"] == 8
    params = entry["params"]
    assert params["implementation"] == "pyautoattack" and params["pyautoattack_version"] == "0.2.0"
    assert params["version"] == "standard" and params["norm"] == "Linf" and params["eps"] == pytest.approx(1 / 255)
    assert params["attacks_to_run"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert params["attacks_run"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert set(params["points_perturbed_by_attack"]) <= set(params["attacks_run"])
    natural = report["radii"]["1"]["results"]["natural"]["accuracy"]
    assert natural > 0 and entry["accuracy"] <= natural
    assert entry["correct"] == round(entry["accuracy"] * 8 / 100)
    assert entry["max_linf_perturbation"] <= 1 / 255 + 1e-6
    assert 0 <= entry["pixel_range"][0] and entry["pixel_range"][1] <= 1
    assert entry["seconds"] > 0 and report["versions"]["pyautoattack"] == "0.2.0"
    out = capsys.readouterr().out
    assert "pyautoattack 0.2.0, version='standard', Linf; ran apgd-ce, apgd-t, fab-t, square" in out


def test_at_8_over_255_it_breaks_the_weak_model(checkpoint, real_data_dir, tmp_path):
    report = evaluate(checkpoint, real_data_dir, tmp_path / "aa8.json", "--attacks", "natural", "aa", "--n_ex", "16")
    results = report["radii"]["8"]["results"]
    assert results["aa"]["accuracy"] < results["natural"]["accuracy"]
    assert results["aa"]["params"]["attacks_run"][0] == "apgd-ce"
    assert sum(results["aa"]["params"]["points_perturbed_by_attack"].values()) == \
        results["natural"]["correct"] - results["aa"]["correct"]
    assert results["aa"]["max_linf_perturbation"] <= 8 / 255 + 1e-6
