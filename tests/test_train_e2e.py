"""main.py and main_tiny.py end to end on small real subsets with a small teacher."""
import csv
import json
import os

import torch

from models import build_model
from helpers import run_script

SMALL = ["--model", "wideresnet10_1", "--teacher_model", "wideresnet10_1", "--bs", "32", "--num_steps", "2",
         "--train_subset", "96", "--test_subset", "64"]
FIELDS = ["epoch", "lr", "train_loss", "train_acc", "test_clean_acc", "test_PGD10_acc", "epoch_seconds",
          "images_per_second"]


def rows(save_dir):
    with open(os.path.join(save_dir, "results.csv")) as f:
        return list(csv.DictReader(f))


def test_main_two_epochs_writes_every_file_and_resume_continues(tmp_path, real_data_dir, small_teacher):
    save_dir = str(tmp_path / "run")
    args = ["main.py", *SMALL, "--teacher_path", small_teacher, "--data_dir", real_data_dir, "--epochs", "2",
            "--save_dir", save_dir]
    first = run_script(*args, "--stop_after", "1")
    assert first.returncode == 0, first.stderr
    assert "epoch 1/2" in first.stdout and "epoch 2/2" not in first.stdout
    assert [r["epoch"] for r in rows(save_dir)] == ["1"]

    second = run_script(*args, "--resume")
    assert second.returncode == 0, second.stderr
    assert "resumed" in second.stdout and "epoch 2/2" in second.stdout and "epoch 1/2" not in second.stdout

    assert sorted(os.listdir(save_dir)) == ["best_PGD10_acc_model.pth", "best_clean_acc_model.pth", "config.json",
                                            "last.pth", "results.csv"]
    table = rows(save_dir)
    assert set(FIELDS) <= set(table[0]) and [r["epoch"] for r in table] == ["1", "2"]
    assert [float(r["lr"]) for r in table] == [0.1, 0.01]  # piecewise over 2 epochs
    for name in ("best_PGD10_acc_model.pth", "best_clean_acc_model.pth"):
        ckpt = torch.load(os.path.join(save_dir, name), weights_only=True)
        assert {"net", "clean_acc", "PGD10_acc", "epoch", "config"} <= set(ckpt)
        build_model("wideresnet10_1", 10).load_state_dict(ckpt["net"])
    last = torch.load(os.path.join(save_dir, "last.pth"), weights_only=True)
    assert {"net", "optimizer", "epoch", "clean_acc", "PGD10_acc", "best", "rng", "config", "arch"} <= set(last)
    assert last["epoch"] == 2 and last["PGD10_acc"] == float(table[-1]["test_PGD10_acc"])
    assert last["best"]["PGD10_acc"] == max(float(r["test_PGD10_acc"]) for r in table)
    assert set(last["rng"]["generators"]) == {"data", "attack", "eval"}
    assert [k for k in table[0] if k.startswith("train_L") or k == "train_st_fraction"] == \
        ["train_L_ST", "train_L_AT", "train_L_PCR", "train_st_fraction"]
    assert all(0 <= float(r["train_st_fraction"]) <= 1 and float(r["train_L_AT"]) > 0 for r in table)
    config = json.load(open(os.path.join(save_dir, "config.json")))
    assert config["method"] == "DGAD" and config["ALP_beta"] == 5.0 and config["mbv2_loss"] == "fixed"
    assert config["recipe"] == "released" and "kunsaram01/DGAD" in config["recipe_source"]
    assert (config["milestones"], config["lr_decay"], config["weight_decay"]) == ([1, 2], [0.1, 0.1], 5e-4)
    assert "epochs" in config["recipe_overrides"]
    assert first.stdout.splitlines()[:2] == [f"run folder: {save_dir}", first.stdout.splitlines()[1]]
    assert first.stdout.splitlines()[1].startswith("recipe released (kunsaram01/DGAD")
    assert {"git_commit", "torch_version", "device"} <= set(config)


def test_main_tiny_one_epoch(tmp_path, real_data_dir):
    teacher = tmp_path / "presnet.pth"
    torch.save(build_model("wideresnet10_1", 200).state_dict(), teacher)
    save_dir = str(tmp_path / "tiny")
    result = run_script("main_tiny.py", "--model", "wideresnet10_1", "--teacher_model", "wideresnet10_1",
                        "--teacher_path", str(teacher), "--data_dir", real_data_dir, "--epochs", "1", "--bs", "16",
                        "--num_steps", "1", "--train_subset", "32", "--test_subset", "16", "--save_dir", save_dir)
    assert result.returncode == 0, result.stderr
    assert rows(save_dir)[0]["epoch"] == "1"
    config = json.load(open(os.path.join(save_dir, "config.json")))
    assert config["dataset"] == "Tiny_Image" and config["num_classes"] == 200 and config["ALP_beta"] == 15.0


def test_default_save_dir_and_teacher_path_follow_the_flags(tmp_path, real_data_dir):
    # Run from a scratch folder: the defaults are relative to where the user runs main.py.
    result = run_script(os.path.join(os.path.dirname(os.path.dirname(__file__)), "main.py"), "--data_dir",
                        real_data_dir, "--epochs", "1", cwd=str(tmp_path))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert errors[0].startswith("error: teacher checkpoint not found: checkpoints/teachers/CIFAR10/wideresnet34_10.pth")
    assert "checkpoints/README.md" in errors[0] and "--method TRADES" in errors[0]
    assert not os.path.exists(tmp_path / "checkpoints")
