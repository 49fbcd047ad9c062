"""A resume continues only the run it was made by: every flag that changes what the run computes,
and the teacher file's content, must match; operational flags may change."""
import hashlib
import os
import shutil

import pytest
import torch

import main as main_script
from models import build_model
from training.cli import main as cli_run
from training.run_dir import identity_differences


def checksums(folder):
    return {name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(folder))}


def test_identity_differences_name_each_flag_old_and_new():
    saved = {"epsilon": 8.0, "milestones": (1, 2), "seed": 42, "save_dir": "a", "teacher_sha256": "ab"}
    record = {"epsilon": 4.0, "milestones": [1, 2], "seed": 42, "save_dir": "b", "teacher_sha256": "cd"}
    assert identity_differences(saved, record) == ["--epsilon 8.0 (now 4.0)", "teacher file sha256 'ab' (now 'cd')"]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, real_data_dir):
    root = tmp_path_factory.mktemp("identity")
    torch.manual_seed(0)
    teacher = root / "teacher.pth"
    torch.save(build_model("wideresnet10_1", 10).state_dict(), teacher)
    args = ["--model", "wideresnet10_1", "--teacher_model", "wideresnet10_1", "--teacher_path", str(teacher),
            "--data_dir", real_data_dir, "--train_subset", "32", "--test_subset", "16", "--bs", "16",
            "--num_steps", "1", "--epochs", "2", "--save_dir", str(root / "run")]
    assert cli_run(main_script.DEFAULTS, "test", args + ["--stop_after", "1"]) == 0
    return root, args


CHANGES = [
    (("--epsilon", "4"), "--epsilon 8.0 (now 4.0)"),
    (("--step_size", "1"), "--step_size 2.0 (now 1.0)"),
    (("--num_steps", "2"), "--num_steps 1 (now 2)"),
    (("--seed", "1"), "--seed 42 (now 1)"),
    (("--lr_max", "0.05"), "--lr_max 0.1 (now 0.05)"),
    (("--train_subset", "48"), "--train_subset 32 (now 48)"),
    (("--ALP_beta", "1"), "--ALP_beta 5.0 (now 1.0)"),
    (("--weight_decay", "2e-4"), "--weight_decay 0.0005 (now 0.0002)"),
]


@pytest.mark.parametrize("change, message", CHANGES)
def test_a_resume_with_another_defining_flag_is_refused_and_touches_nothing(stopped_run, change, message, capsys):
    root, args = stopped_run
    before = checksums(root / "run")
    with pytest.raises(SystemExit) as stop:
        cli_run(main_script.DEFAULTS, "test", args + ["--resume", *change])
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "is another run" in errors[0]
    assert checksums(root / "run") == before


def test_a_replaced_teacher_file_is_noticed(stopped_run, tmp_path, capsys):
    root, args = stopped_run
    before = checksums(root / "run")
    other = tmp_path / "teacher.pth"
    torch.manual_seed(1)
    torch.save(build_model("wideresnet10_1", 10).state_dict(), other)
    changed = [str(other) if a.endswith("teacher.pth") else a for a in args]
    with pytest.raises(SystemExit):
        cli_run(main_script.DEFAULTS, "test", changed + ["--resume"])
    assert "teacher file sha256" in capsys.readouterr().err
    assert checksums(root / "run") == before


def test_the_resume_command_is_shell_quoted():
    from training.cli import resume_command
    assert resume_command("/x/main.py", ["--save_dir", "my runs/a b", "--overwrite", "--epochs", "2"]) == \
        "python main.py --save_dir 'my runs/a b' --epochs 2 --resume"


def test_operational_flags_and_a_moved_teacher_may_change(stopped_run, tmp_path):
    root, args = stopped_run
    stale = root / "run" / ".last.pth.x1y2.tmp"  # what a save killed mid-write leaves
    stale.write_bytes(b"partial")
    moved = tmp_path / "moved.pth"
    shutil.copy(args[args.index("--teacher_path") + 1], moved)
    changed = [str(moved) if a.endswith("teacher.pth") else a for a in args]
    assert cli_run(main_script.DEFAULTS, "test", changed + ["--resume", "--eval_bs", "8", "--nan_policy", "skip"]) == 0
    assert not stale.exists() and not (root / "run" / ".lock").exists()


def test_a_second_process_on_a_busy_run_folder_is_refused_naming_the_holder(tmp_path, real_data_dir):
    import signal
    import subprocess
    import sys

    from helpers import REPO
    torch.manual_seed(0)
    torch.save(build_model("wideresnet10_1", 10).state_dict(), tmp_path / "teacher.pth")
    args = ["main.py", "--model", "wideresnet10_1", "--teacher_model", "wideresnet10_1",
            "--teacher_path", str(tmp_path / "teacher.pth"), "--data_dir", real_data_dir, "--train_subset", "64",
            "--test_subset", "16", "--bs", "16", "--num_steps", "1", "--epochs", "40", "--save_dir",
            str(tmp_path / "run")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    first = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stdout:
            if line.startswith("epoch 1/40"):
                break
        second = subprocess.run([sys.executable, *args, "--resume"], cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        assert f"is in use by another run (pid {first.pid} on " in second.stderr
        assert "Traceback" not in second.stderr and first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=300)
    assert first.returncode == 143
    assert not (tmp_path / "run" / ".lock").exists()
    third = subprocess.run([sys.executable, *args, "--resume", "--stop_after", "1"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr
