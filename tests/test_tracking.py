"""Live tracking (--tensorboard, --wandb): one interface for the loop, every results.csv column logged each epoch
and the step loss every 50 steps without a host read at the step itself, TensorBoard's event file read back with
its own EventAccumulator, W&B offline (no network) continuing the same run on resume, and missing packages named
with the command that installs them."""
import csv
import glob
import os

import pytest
import torch

from helpers import run_script, train_config
from runtime.errors import UserError
from training import tracking
from training.tracking import LOSS_EVERY, LOSS_TAG, Tracker, Trackers


class Recorder(Tracker):
    def __init__(self):
        self.logged, self.closed = [], False

    def log(self, values, step):
        self.logged.append((step, dict(values)))

    def close(self):
        self.closed = True


def test_no_tracker_asked_is_no_work():
    trackers = Trackers()
    assert not trackers
    trackers.step(LOSS_EVERY, torch.tensor(1.0))
    trackers.epoch({"epoch": 1}, 10)
    assert trackers.pending == []


def test_the_loss_is_logged_every_50_steps_one_period_late_and_the_rest_at_the_epochs_end():
    recorder = Recorder()
    trackers = Trackers([recorder], fields=["epoch", "lr", "test_clean_acc", "test_clean_acc_swa"])
    for step in range(1, 2 * LOSS_EVERY + 1):
        trackers.step(step, torch.tensor(float(step)))
        if step == LOSS_EVERY:  # queued, not read yet: reading it now would wait for the device
            assert recorder.logged == []
    assert recorder.logged == [(LOSS_EVERY, {LOSS_TAG: float(LOSS_EVERY)})]
    trackers.epoch({"epoch": 1, "lr": 0.1, "test_clean_acc": 12.5, "test_clean_acc_swa": "", "other": 3.0},
                   2 * LOSS_EVERY)
    assert recorder.logged[1:] == [(2 * LOSS_EVERY, {LOSS_TAG: float(2 * LOSS_EVERY)}),
                                   (2 * LOSS_EVERY, {"epoch": 1.0, "lr": 0.1, "test_clean_acc": 12.5})]
    trackers.close()
    assert recorder.closed


def test_a_missing_package_is_one_line_with_the_install_command(monkeypatch):
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    for flags, name in ((["--tensorboard"], "tensorboard"), (["--wandb", "advkd"], "wandb")):
        with pytest.raises(UserError) as error:
            train_config("PGDAT", *flags)
        message = str(error.value)
        assert message.startswith(f"{flags[0]} needs the {name} package, which is not installed: pip install -r "
                                  f"requirements-tracking.txt") and "\n" not in message
    train_config("PGDAT")  # nothing asked, nothing needed


def test_the_pins_are_the_ones_ci_installs():
    from helpers import REPO
    pins = [line.strip() for line in open(os.path.join(REPO, "requirements-tracking.txt"))
            if line.strip() and not line.startswith("#")]
    assert pins == [pinned for _, pinned in tracking.PACKAGES.values()]
    assert "-r requirements-tracking.txt" in open(os.path.join(REPO, ".ci", "run")).read()


def scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(folder, size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def test_tensorboard_logs_read_back_equal_and_a_resume_hides_what_the_stopped_run_logged_after_it(tmp_path):
    pytest.importorskip("tensorboard")
    folder = str(tmp_path)
    first = tracking.TensorBoardTracker(folder, purge_step=None)
    first.log({"a": 1.5, "b": 2.0}, 10)
    first.log({"a": 2.5}, 20)  # logged after the save the resume starts from: hidden
    first.close()
    second = tracking.TensorBoardTracker(folder, purge_step=11)  # resumed after step 10
    second.log({"a": 3.5}, 20)
    second.close()
    assert scalars(folder) == {"a": [(10, 1.5), (20, 3.5)], "b": [(10, 2.0)]}
    assert len(tracking.tracking_files(folder)) == 2


def test_open_trackers_opens_what_is_asked_and_only_in_process_0(tmp_path):
    pytest.importorskip("tensorboard")
    config = train_config("PGDAT", "--tensorboard")
    assert not tracking.open_trackers(config, str(tmp_path), {}, ["epoch"], True, 0, writer=False)
    assert not tracking.open_trackers(train_config("PGDAT"), str(tmp_path), {}, ["epoch"], True, 0)
    opened = tracking.open_trackers(config, str(tmp_path), {}, ["epoch"], True, 0)
    assert [type(t).__name__ for t in opened.trackers] == ["TensorBoardTracker"]
    opened.log({"epoch": 1.0}, 10)
    opened.log({"epoch": 2.0}, 15)  # past the save a kill -9 resumes from
    opened.close()
    resumed = tracking.open_trackers(config, str(tmp_path), {}, ["epoch"], False, 10)  # 10 steps were saved
    resumed.log({"epoch": 2.5}, 15)
    resumed.close()
    assert scalars(str(tmp_path)) == {"epoch": [(10, 1.0), (15, 2.5)]}


@pytest.mark.slow  # wandb starts its service process
def test_wandb_offline_writes_locally_and_a_resume_continues_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    folder = str(tmp_path)
    first = tracking.WandbTracker(folder, "advkd-test", {"method": "PGDAT", "epochs": (1, 2)}, fresh=True)
    first.log({"epoch": 1.0}, 5)
    first.close()
    run_id = open(os.path.join(folder, tracking.WANDB_ID_FILE)).read().strip()
    second = tracking.WandbTracker(folder, "advkd-test", {"method": "PGDAT"}, fresh=False)
    assert second.run.id == first.run.id == run_id  # the resumed run continues the W&B run
    second.log({"epoch": 2.0}, 10)
    second.close()
    runs = glob.glob(os.path.join(folder, "wandb", "offline-run-*"))  # one per start (two within a second: one)
    assert runs and {run.rsplit("-", 1)[1] for run in runs} == {run_id}
    assert all(os.path.isfile(os.path.join(run, f"run-{run_id}.wandb")) for run in runs)
    third = tracking.WandbTracker(folder, "advkd-test", {}, fresh=True)  # --overwrite: a new W&B run
    third.close()
    assert open(os.path.join(folder, tracking.WANDB_ID_FILE)).read().strip() != run_id


# -- main.py end to end: what the event file holds is results.csv -------------------------------------------------

def test_a_run_logs_every_results_column_and_the_step_loss_and_w_and_b_offline(tmp_path, real_data_dir,
                                                                                small_teacher):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    save_dir = str(tmp_path / "run")
    args = ["main.py", "--method", "PGDAT", "--model", "wideresnet10_1", "--data_dir", real_data_dir,
            "--train_subset", "400", "--test_subset", "16", "--bs", "8", "--num_steps", "1", "--epochs", "2",
            "--save_dir", save_dir, "--tensorboard", "--wandb", "advkd-test", "--ema", "0.9"]
    env_before = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = "offline"
    try:
        done = run_script(*args)
    finally:
        os.environ.pop("WANDB_MODE") if env_before is None else os.environ.__setitem__("WANDB_MODE", env_before)
    assert done.returncode == 0, done.stderr
    with open(os.path.join(save_dir, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    logged = scalars(save_dir)
    steps_per_epoch = 400 // 8
    for column in rows[0]:
        expected = [(int(row["epoch"]) * steps_per_epoch, float(torch.tensor(float(row[column])).item()))
                    for row in rows]
        assert logged[column] == expected, column  # float32 in the event file: compared as float32
    assert [step for step, _ in logged[LOSS_TAG]] == [50, 100]
    assert "test_PGD10_acc_ema" in logged and "train_ce" in logged
    run_id = open(os.path.join(save_dir, tracking.WANDB_ID_FILE)).read().strip()
    assert glob.glob(os.path.join(save_dir, "wandb", f"offline-run-*-{run_id}"))
