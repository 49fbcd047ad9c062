"""The issue's three evaluation commands, as written plus --data_dir/--n_ex/--attacks, on checkpoints
that main.py / main_tiny.py just produced on small subsets; and every default attack of both
protocols on a tiny model, in one run each."""
import json
import os

import pytest

from helpers import run_script

FAST = ["--attacks", "natural,fgsm,pgd10", "--n_ex", "4", "--bs", "4"]  # the rest run below on a tiny model


def train(script, model, save_dir, data_dir, train_subset=16):
    result = run_script(script, "--method", "PGDAT", "--model", model, "--data_dir", data_dir,
                        "--train_subset", str(train_subset), "--test_subset", "4", "--epochs", "1",
                        "--bs", str(min(train_subset, 16)), "--num_steps", "1", "--save_dir", save_dir)
    assert result.returncode == 0, result.stderr
    return os.path.join(save_dir, "best_PGD10_acc_model.pth")


def check_report(path, dataset, model, protocol, attacks, n):
    with open(path) as f:
        report = json.load(f)
    assert report["complete"] and report["dataset"] == dataset and report["model"] == model
    radius = report["radii"]["8"]
    assert report["protocol"] == protocol and radius["attacks"] == attacks and report["n_examples"] == n
    for entry in radius["results"].values():
        assert entry["n"] == n and entry["protocol"] == protocol and 0 <= entry["accuracy"] <= 100
    return report, radius


@pytest.mark.parametrize("script, dataset, model", [
    ("main_eval.py", "CIFAR10", "resnet18"),
    ("main_eval.py", "CIFAR10", "mobilenetV2"),
    ("main_eval_tinyimagenet.py", "Tiny_Image", "resnet18"),
])
def test_the_issue_commands_on_checkpoints_from_main(tmp_path, real_data_dir, script, dataset, model):
    tiny = dataset == "Tiny_Image"
    checkpoint = train("main_tiny.py" if tiny else "main.py", model, str(tmp_path / "run"), real_data_dir,
                       train_subset=8 if tiny else 16)
    result = run_script(script, "--dataset", dataset, "--model", model, "--model_path", checkpoint,
                        "--data_dir", real_data_dir, *FAST)
    assert result.returncode == 0, result.stderr
    assert "PGD-10       paper" in result.stdout and "variance gap" in result.stdout
    report, _ = check_report(checkpoint + ".eval.paper.json", dataset, model, "paper", ["natural", "fgsm", "pgd10"], 4)
    assert report["num_classes"] == (200 if tiny else 10)
    assert report["checkpoint"]["arch"] == model and report["checkpoint"]["method"] == "PGDAT"


def test_every_default_attack_of_both_protocols_on_a_tiny_model(tmp_path, real_data_dir):
    checkpoint = train("main.py", "wideresnet10_1", str(tmp_path / "run"), real_data_dir)
    for protocol, attacks in [("paper", ["natural", "fgsm", "pgd10", "cw_l2", "aa"]),
                              ("standard", ["natural", "fgsm", "pgd20", "cw_inf", "aa"])]:
        result = run_script("main_eval.py", "--model", "wideresnet10_1", "--model_path", checkpoint,
                            "--data_dir", real_data_dir, "--n_ex", "4", "--protocol", protocol)
        assert result.returncode == 0, result.stderr
        assert "pyautoattack 0.2.0, version='standard', Linf" in result.stdout
        _, radius = check_report(f"{checkpoint}.eval.{protocol}.json", "CIFAR10", "wideresnet10_1", protocol,
                                 attacks, 4)
        assert radius["results"]["aa"]["params"]["attacks_to_run"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
        assert radius["variance_gap"]["adversarial_inputs"] == attacks[2]
