"""A 9-hour run survives: each fault is provoked for real and what survives is checked."""
import csv
import math
import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import main as main_script
from runtime import checkpoints as checkpoint
from training.cli import main as cli_run
from data import load_split
from methods import get_method
from models import build_model
from helpers import REPO

TIMING = ("epoch_seconds", "images_per_second")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "wrn10_1.pth"
    torch.manual_seed(0)
    torch.save(build_model("wideresnet10_1", 10).state_dict(), path)
    return str(path)


def tiny_args(real_data_dir, teacher, save_dir, epochs=3):
    return ["--model", "wideresnet10_1", "--teacher_model", "wideresnet10_1", "--teacher_path", teacher,
            "--data_dir", real_data_dir, "--train_subset", "96", "--test_subset", "32", "--bs", "16",
            "--num_steps", "1", "--epochs", str(epochs), "--save_dir", str(save_dir), "--deterministic"]


def start(args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "main.py", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_line(proc, text, timeout=300):
    deadline = time.time() + timeout
    for line in proc.stdout:
        if text in line:
            return
        assert time.time() < deadline, f"no {text!r} in time"
    raise AssertionError(f"process ended before printing {text!r}: {proc.stderr.read()}")


def finish(args):
    proc = start(args)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return out


def results_without_timing(save_dir):
    with open(os.path.join(save_dir, "results.csv")) as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def final_weights(save_dir):
    return torch.load(os.path.join(save_dir, "last.pth"), weights_only=True)["net"]


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory, real_data_dir, teacher):
    save_dir = tmp_path_factory.mktemp("unbroken") / "run"
    finish(tiny_args(real_data_dir, teacher, save_dir))
    return save_dir


def assert_same_run(save_dir, reference_dir):
    assert results_without_timing(save_dir) == results_without_timing(reference_dir)
    a, b = final_weights(save_dir), final_weights(reference_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# 1. exact resume after kill -9
def test_kill_9_mid_epoch_then_resume_matches_an_unbroken_run(tmp_path, real_data_dir, teacher, unbroken):
    args = tiny_args(real_data_dir, teacher, tmp_path / "run")
    proc = start(args)
    wait_for_line(proc, "epoch 1/3")
    time.sleep(0.5)  # into epoch 2
    proc.kill()
    proc.wait()
    assert torch.load(tmp_path / "run" / "last.pth", weights_only=True)["epoch"] == 1
    out = finish(args + ["--resume"])
    assert "resumed" in out and "epoch 1/3" not in out
    assert_same_run(tmp_path / "run", unbroken)


# 6. SIGINT / SIGTERM finish the step, save last.pth, and say how to resume
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_mid_epoch_and_resume_is_exact(tmp_path, real_data_dir, teacher, unbroken, sig, code):
    args = tiny_args(real_data_dir, teacher, tmp_path / "run")
    proc = start(args)
    wait_for_line(proc, "epoch 1/3")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    assert "last.pth is saved. Resume with: python main.py" in err and err.rstrip().endswith("--resume")
    assert "Traceback" not in err
    out = finish(args + ["--resume"])
    assert "resumed" in out
    assert_same_run(tmp_path / "run", unbroken)


# 2. atomic checkpoints
def test_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    checkpoint.atomic_save({"epoch": 1, "w": torch.ones(3)}, path)
    before = open(path, "rb").read()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", disk_full)  # the data is half on disk when this fires
    with pytest.raises(checkpoint.UserError, match="No space left on device.*previous file is intact"):
        checkpoint.atomic_save({"epoch": 2, "w": torch.zeros(1000)}, path)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["last.pth"]  # no temporary file left behind


def test_run_stops_cleanly_when_a_save_fails(tmp_path, real_data_dir, teacher, monkeypatch, capsys):
    save_dir = tmp_path / "run"
    real_replace = os.replace
    calls = {"last": 0}

    def replace(src, dst):
        if str(dst).endswith("last.pth"):
            calls["last"] += 1
            if calls["last"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(SystemExit) as stop:
        cli_run(main_script.DEFAULTS, "test", tiny_args(real_data_dir, teacher, save_dir, epochs=2))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "error: could not write" in err and "last.pth" in err and "Traceback" not in err
    assert torch.load(save_dir / "last.pth", weights_only=True)["epoch"] == 1
    assert not [f for f in os.listdir(save_dir) if f.endswith(".tmp")]


# 3. no silent overwrite
def test_existing_run_is_not_overwritten_without_a_flag(tmp_path, real_data_dir, teacher, capsys):
    args = tiny_args(real_data_dir, teacher, tmp_path / "run", epochs=1)
    assert cli_run(main_script.DEFAULTS, "test", args) == 0
    before = {f: open(tmp_path / "run" / f, "rb").read() for f in os.listdir(tmp_path / "run")}
    with pytest.raises(SystemExit) as stop:
        cli_run(main_script.DEFAULTS, "test", args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert {f: open(tmp_path / "run" / f, "rb").read() for f in os.listdir(tmp_path / "run")} == before
    assert cli_run(main_script.DEFAULTS, "test", args + ["--overwrite"]) == 0


# 4. safe loading
class CreatesMarker:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_that_runs_code_is_refused(tmp_path, real_data_dir, capsys):
    marker = tmp_path / "marker"
    evil = tmp_path / "teacher.pth"
    torch.save({"net": build_model("wideresnet10_1", 10).state_dict(), "payload": CreatesMarker(str(marker))}, evil)
    with pytest.raises(SystemExit) as stop:
        cli_run(main_script.DEFAULTS, "test", tiny_args(real_data_dir, str(evil), tmp_path / "run", epochs=1))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "refused to load" in err and "io.open" in err and "nothing in it was run" in err
    assert not marker.exists() and not (tmp_path / "run").exists()


# 5. numerical faults
def inject_nan(monkeypatch, epoch, step):
    method = get_method("DGAD")
    real_loss = method.loss
    seen = {"step": 0, "epoch": None}

    def loss(self, out):
        terms = real_loss(self, out)
        seen["step"] = seen["step"] + 1 if seen["epoch"] == out.epoch else 1
        seen["epoch"] = out.epoch
        if (out.epoch, seen["step"]) == (epoch, step):
            terms["loss"] = terms["loss"] * float("nan")
        return terms
    monkeypatch.setattr(method, "loss", loss)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, real_data_dir, teacher,
                                                                    monkeypatch, capsys):
    inject_nan(monkeypatch, epoch=2, step=3)
    with pytest.raises(SystemExit) as stop:
        cli_run(main_script.DEFAULTS, "test", tiny_args(real_data_dir, teacher, tmp_path / "run"))
    assert stop.value.code == 2
    assert "non-finite loss at epoch 2 step 3" in capsys.readouterr().err
    last = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert last["epoch"] == 1 and last["in_progress"] is None
    assert all(torch.isfinite(v).all() for v in last["net"].values() if v.is_floating_point())


def test_nan_policy_skip_drops_the_bad_batch(tmp_path, real_data_dir, teacher, monkeypatch, capsys):
    inject_nan(monkeypatch, epoch=1, step=2)
    args = tiny_args(real_data_dir, teacher, tmp_path / "run", epochs=1) + ["--nan_policy", "skip"]
    assert cli_run(main_script.DEFAULTS, "test", args) == 0
    assert "1 non-finite steps skipped" in capsys.readouterr().out
    assert all(torch.isfinite(v).all() for v in final_weights(tmp_path / "run").values() if v.is_floating_point())


# 7. bad input: one line, non-zero exit, no traceback, nothing written
def bad_input_cases(tmp_path, real_data_dir, teacher):
    other_arch = tmp_path / "resnet.pth"
    torch.save(build_model("wideresnet10_2", 10).state_dict(), other_arch)
    other_classes = tmp_path / "c100.pth"
    torch.save(build_model("wideresnet10_1", 100).state_dict(), other_classes)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(open(teacher, "rb").read()[:5000])
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint\n")
    (tmp_path / "tiny" / "tiny-imagenet-200").mkdir(parents=True)
    (tmp_path / "tiny" / "tiny-imagenet-200" / "wnids.txt").write_text("n01443537\n")
    return {
        "missing teacher": (["--teacher_path", str(tmp_path / "nope.pth")], "teacher checkpoint not found"),
        "teacher is a folder": (["--teacher_path", str(tmp_path)], "is a directory, not a checkpoint file"),
        "text teacher": (["--teacher_path", str(notes)], "is not a checkpoint: it looks like a text file"),
        "too large a model": (["--model", "wideresnet34_100000"], "--model wideresnet34_100000 is too large to "
                                                                 "allocate"),
        "fraction epsilon": (["--epsilon", "0.031"], "--epsilon 0.031 is below 1"),
        "nan lr": (["--lr_max", "nan"], "--lr_max must be a finite number"),
        "other architecture": (["--teacher_path", str(other_arch)], "does not fit architecture teacher wideresnet10_1"),
        "other class count": (["--teacher_path", str(other_classes)], "is for 100 classes but teacher .* 10"),
        "truncated": (["--teacher_path", str(truncated)], "truncated or corrupt"),
        "missing dataset": (["--data_dir", str(tmp_path / "empty")], "CIFAR10 not found: expected .*cifar-10-batches-py"),
        "negative epsilon": (["--epsilon", "-8"], "--epsilon and --step_size must be >= 0"),
        "zero steps": (["--num_steps", "0"], "--num_steps must be >= 1 for --method DGAD"),
        "zero batch": (["--bs", "0"], "--bs must be >= 1"),
        "zero epochs": (["--epochs", "0"], "--epochs must be >= 1"),
        "unwritable save_dir": (["--save_dir", str(a_file / "run")], "is not writable"),
        "foreign option": (["--trades_beta", "6"], "--trades_beta is not used by --method DGAD"),
    }


def test_bad_inputs(tmp_path, real_data_dir, teacher, capsys):
    for name, (extra, message) in bad_input_cases(tmp_path, real_data_dir, teacher).items():
        save_dir = tmp_path / f"run_{name.replace(' ', '_')}"
        args = tiny_args(real_data_dir, teacher, save_dir, epochs=1) + extra
        with pytest.raises(SystemExit) as stop:
            cli_run(main_script.DEFAULTS, "test", args)
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert stop.value.code == 2, name
        assert len(errors) == 1 and "Traceback" not in err, (name, err)
        import re
        assert re.search(message, errors[0]), (name, errors[0])
        assert not save_dir.exists(), name


@pytest.mark.slow  # a subprocess
def test_incomplete_tiny_imagenet_layout(tmp_path):
    (tmp_path / "tiny-imagenet-200").mkdir()
    (tmp_path / "tiny-imagenet-200" / "wnids.txt").write_text("n01443537\n")
    result = subprocess.run([sys.executable, "main_tiny.py", "--data_dir", str(tmp_path), "--method", "DGAD",
                             "--teacher_path", __file__, "--save_dir", str(tmp_path / "run")],
                            cwd=REPO, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "incomplete Tiny ImageNet layout: missing" in result.stderr and "n01443537" in result.stderr
    assert not (tmp_path / "run").exists()


def test_step_larger_than_epsilon_warns(tmp_path, real_data_dir, teacher, capsys):
    args = tiny_args(real_data_dir, teacher, tmp_path / "run", epochs=1) + ["--epsilon", "1", "--step_size", "2"]
    assert cli_run(main_script.DEFAULTS, "test", args) == 0
    assert "warning: --step_size 2 is larger than --epsilon 1" in capsys.readouterr().err


def test_subset_larger_than_the_split_is_clamped_with_a_warning(real_data_dir, capsys):
    split = load_split("CIFAR10", real_data_dir, "test", "cpu", subset=20000)
    assert len(split) == 10000
    assert "--test_subset 20000 is larger than the test split (10000 images)" in capsys.readouterr().err


def test_gpu_id_that_does_not_exist(monkeypatch):
    from runtime.device import resolve_device
    from runtime.errors import UserError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match="--gpu_id 3 names no GPU: this machine has 2"):
        resolve_device(3)


def test_evaluation_halves_its_batch_until_it_fits(monkeypatch, capsys):
    from data import Split
    from evaluation.accuracy import pgd_ce_attack
    from helpers import TinyNet
    from training import loop
    generator = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=generator),
                  torch.randint(0, 3, (40,), generator=generator))
    real = loop.attack_accuracy
    sizes = []

    def attack_accuracy(model, split, batch_size, **kw):
        sizes.append(batch_size)
        if batch_size > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(model, split, batch_size, **kw)
    monkeypatch.setattr(loop, "attack_accuracy", attack_accuracy)
    attack = pgd_ce_attack(8 / 255, 2 / 255, 2, generator=torch.Generator().manual_seed(1))
    (clean, robust, gap, *_), batch_size = loop.evaluate(TinyNet(), split, 64, attack)
    assert sizes == [64, 32, 16, 16] and batch_size == 16
    assert 0 <= robust <= clean <= 100 and math.isfinite(gap)
    assert "--eval_bs lowered to 16" in capsys.readouterr().err
