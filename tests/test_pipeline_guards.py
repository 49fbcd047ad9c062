"""reproduce.py's guards: every preset value checked by its job's own script before anything runs, a failed
job's one line on its summary row, an edited preset that never strands a root (evaluations replaced when
their settings changed, a changed training flag named with what to do), safe roots and launcher numbers,
and a shutdown without tracebacks or orphans (Ctrl-C, kill -9)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO
from pipeline import launch
from pipeline.cli import main as reproduce
from pipeline.plan import (TEST_IMAGES, Plan, evaluated_images, evaluation_commands, evaluation_missing, flag_args,
                           training_switches as switches)
from pipeline.presets import load_preset
from test_reproduce import MICRO, eval_report, paper_wanted, preset_file

SWITCHES = {"channels_last": True, "epochs": False}


def refused(capsys, args):
    """The one line reproduce.py refuses `args` with (exit status 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        reproduce(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def raw_preset(tmp_path, text, name="p.json"):
    """A preset file written as raw text: JSON's writers cannot write NaN, Infinity or 1e400 as a preset may."""
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BASE = {"dataset": "CIFAR10", "student": "wideresnet10_1", "methods": ["PGDAT"], "seeds": [0],
        "evaluate": [{"protocol": "paper"}]}
WITH_TEACHER = {"teacher": {"model": "wideresnet10_1", "path": "t.pth"}, "methods": ["RSLAD"]}


@pytest.mark.parametrize("changes, expected", [
    ({"train": {"epochs": "six"}}, "train PGDAT seed 0: argument --epochs: invalid int value: 'six'"),
    ({"train": {"epochs": True}}, "'epochs' takes a value (a number or a string), not true"),
    ({"train": {"epochs": False}}, "'epochs' takes a value (a number or a string), not false"),
    ({"train": {"epochs": -1}}, "--epochs must be >= 1, got -1"),
    ({"train": {"recipe": "bogus"}}, "argument --recipe: invalid choice: 'bogus'"),
    ({"train": {"epsilon": 0.031}}, "--epsilon 0.031 is below 1"),
    ({"train": {"momentum": 1.5}}, "--momentum must be in [0, 1)"),
    ({"train": {"no_map": True}}, "--no_map is not used by --method PGDAT"),
    ({"method_flags": {"PGDAT": {"ALP_beta": 3}}}, "--ALP_beta is not used by --method PGDAT"),
    ({"train": {"channels_last": 1}}, "'channels_last' is a switch: write true to turn it on"),
    ({"train": {"channels_last": False}}, "'channels_last' is a switch"),
    ({"train": {"milestones": "4,x"}}, "--milestones '4,x' is not a comma-separated list"),
    ({"train": {"lr_max": "nan"}}, "--lr_max must be a finite number"),
    ({"train": {"bs": [8]}}, "'bs' takes a value (a number or a string), not [8]"),
    (dict(WITH_TEACHER, train={"teacher_st_path": "x.pth"}), "--teacher_st_path is the second teacher of AKD"),
    ({"seeds": [2 ** 64]}, "--seed must be an integer in 0.."),
    ({"seeds": [-1]}, "--seed must be an integer in 0.."),
    ({"seeds": [True]}, "distinct integers"),
    ({"teacher": {"model": "wideresnet10_1", "train": {"seed": 2 ** 64}}, "methods": ["RSLAD"]},
     "train teacher: --seed must be an integer in 0.."),
    ({"teacher": {"model": "wideresnet10_1", "train": {"method": ["PGDAT"]}}, "methods": ["RSLAD"]},
     "must be one that trains without a teacher"),
    ({"methods": [["PGDAT"]]}, "is not one of"),
    ({"evaluate": [{"protocol": ["paper"]}]}, "needs a 'protocol' of paper, standard"),
    ({"evaluate": [{"protocol": "paper", "attacks": 5}]}, "attacks must be a non-empty list of attack names"),
    ({"evaluate": [{"protocol": "paper", "attacks": "natural"}]}, "attacks must be a non-empty list"),
    ({"evaluate": [{"protocol": "paper", "attacks": ["bogus"]}]}, "unknown attack 'bogus'"),
    ({"evaluate": [{"protocol": "paper", "eps": [1e308]}]}, "--eps 1e+308 is above 255"),
    ({"evaluate": [{"protocol": "paper", "eps": [256]}]}, "--eps 256 is above 255"),
    ({"evaluate": [{"protocol": "paper", "eps": [0]}]}, "--eps must be > 0"),
    ({"evaluate": [{"protocol": "paper", "eps": [True]}]}, "eps must be a list of radii"),
    ({"evaluate": [{"protocol": "paper", "eps": [10 ** 400]}]}, "eps must be a list of radii"),
    ({"train": {"lr_max": 10 ** 400}}, "--lr_max must be a finite number"),
    ({"evaluate": [{"protocol": "paper", "eps": [8.0000001]}]}, "a radius has at most 6 significant digits"),
    ({"evaluate": [{"protocol": "paper", "n_ex": -1}]}, "--n_ex must be >= 0"),
    ({"evaluate": [{"protocol": "paper", "n_ex": 1.5}]}, "n_ex must be an integer"),
    ({"description": ["x"]}, "description: must be a string"),
])
def test_every_preset_value_is_checked_by_its_jobs_own_rules_before_anything_runs(tmp_path, capsys, changes,
                                                                                 expected):
    path = preset_file(tmp_path, **dict(BASE, **changes))
    root = tmp_path / "root"
    err = refused(capsys, ["--preset", path, "--root", str(root), "--dry_run"])
    assert err.startswith("error: preset p") and expected in err, err
    # The same line before the first job of a real call, which creates nothing.
    data = tmp_path / "data"
    data.mkdir()
    assert refused(capsys, ["--preset", path, "--root", str(root), "--data_dir", str(data)]) == err
    assert not root.exists()


@pytest.mark.parametrize("text, expected", [
    ('"epochs": 1e400', "1e400 is not a finite number"),
    ('"lr_max": NaN', "NaN is not a number JSON allows"),
    ('"lr_max": -Infinity', "-Infinity is not a number JSON allows"),
])
def test_numbers_json_has_no_place_for_are_refused(tmp_path, capsys, text, expected):
    body = json.dumps(BASE)[:-1] + ', "train": {' + text + "}}"
    err = refused(capsys, ["--preset", raw_preset(tmp_path, body), "--root", str(tmp_path / "r"), "--dry_run"])
    assert expected in err


def test_an_infinite_radius_is_refused(tmp_path, capsys):
    body = json.dumps(dict(BASE, evaluate="X")).replace('"X"', '[{"protocol": "paper", "eps": [Infinity]}]')
    err = refused(capsys, ["--preset", raw_preset(tmp_path, body), "--root", str(tmp_path / "r"), "--dry_run"])
    assert "Infinity is not a number JSON allows" in err


def test_the_shipped_presets_pass_their_scripts_checks(capsys, tmp_path):
    shipped = sorted(name[:-len(".json")] for name in os.listdir(os.path.join(REPO, "presets")))
    assert {"cifar10-mini", "cifar10-mini-fair", "cifar10-gpu", "dgad-cifar10-resnet18"} <= set(shipped)
    for name in shipped:
        assert reproduce(["--preset", name, "--root", str(tmp_path / name), "--dry_run"]) == 0
        assert not (tmp_path / name).exists()  # the plan and its checks write nothing
    capsys.readouterr()


def test_switches_are_true_and_other_flags_take_values(tmp_path):
    assert flag_args({"channels_last": True, "epochs": 6, "milestones": "4,5"}) == [
        "--channels_last", "--epochs", "6", "--milestones", "4,5"]
    preset = load_preset(preset_file_text(dict(BASE, train={"channels_last": True, "epochs": 6}), tmp_path), SWITCHES)
    assert preset.train == {"channels_last": True, "epochs": 6}


def preset_file_text(data, folder):
    path = os.path.join(folder, "q.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


# -- roots and launcher numbers ------------------------------------------------------------------------------

@pytest.mark.parametrize("file_name", ["...json", "..json", ".json"])
def test_a_preset_without_a_name_never_makes_a_root_of_a_folder_above(tmp_path, capsys, monkeypatch, file_name):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / file_name
    path.write_text(json.dumps(BASE))
    err = refused(capsys, ["--preset", str(path), "--dry_run"])
    assert "has no name" in err and "name the file <name>.json" in err
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("flags, expected", [
    (["--poll", "0"], "--poll must be a positive number of seconds, got 0"),
    (["--poll", "-1"], "--poll must be a positive number"),
    (["--poll", "nan"], "--poll must be a positive number"),
    (["--poll", "inf"], "--poll must be a positive number"),
    (["--workers", "-1"], "--workers must be >= 1 (or 0 for the default)"),
    (["--gpus", "0"], "--gpus must be >= 1"),
    (["--cpus", "0"], "--cpus must be >= 1"),
    (["--time", "-5"], "--time must be >= 1"),
    (["--array_parallelism", "0"], "--array_parallelism must be >= 1"),
    (["--root", ""], "--root is empty"),
])
def test_launcher_numbers_are_one_line_errors(tmp_path, capsys, flags, expected):
    err = refused(capsys, ["--preset", preset_file(tmp_path, **BASE), "--root", str(tmp_path / "r"), *flags])
    assert expected in err


def test_a_root_that_is_a_file_or_below_one_is_refused(tmp_path, capsys):
    preset = preset_file(tmp_path, **BASE)
    a_file = tmp_path / "root.txt"
    a_file.write_text("mine")
    assert f"--root {a_file} is a file, not a folder" in refused(capsys, ["--preset", preset, "--root", str(a_file),
                                                                         "--dry_run"])
    assert f"{a_file} is not a writable folder" in refused(capsys, ["--preset", preset, "--root",
                                                                   str(a_file / "below"), "--dry_run"])
    assert a_file.read_text() == "mine"


# -- a failed job says why --------------------------------------------------------------------------------------

FAILS = """
import sys
print("working", flush=True)
print("warning: something to know", file=sys.stderr)
print("error: --model_path x.pth: no such file; train it first", file=sys.stderr)
sys.exit(2)
"""


@pytest.mark.slow
def test_a_failed_job_carries_its_commands_error_line_to_the_summary(tmp_path, capsys):
    script = tmp_path / "fails.py"
    script.write_text(FAILS)
    launcher = launch.Launcher("local", str(tmp_path / "jobs"), REPO, workers=1, poll_s=0.1)
    job = launch.Job("evaluate X seed 0", "evaluate", [[str(script)]], str(tmp_path), state=lambda: (False, "todo"))
    states = {job.name: "pending"}
    launcher.run([job], states)
    assert states[job.name] == "failed"
    assert launcher.reasons[job.name] == "--model_path x.pth: no such file; train it first"
    assert "FAILED evaluate X seed 0 after" in capsys.readouterr().out
    plan = type("P", (), {"jobs": [job]})
    row = launch.summary(plan, states, launcher.reasons).splitlines()[2]
    assert row.endswith("failed: --model_path x.pth: no such file; train it first") and "log" not in row
    # The report, written in this process, the same way.
    assert launch.run_here(job, REPO) == ("failed", "--model_path x.pth: no such file; train it first")
    assert json.loads((tmp_path / "jobs" / launch.RUNNING_FILE).read_text()) == {}  # it ended


def test_a_failed_job_without_an_error_line_says_how_it_ended(tmp_path):
    log = tmp_path / "job.err"
    log.write_text("Traceback (most recent call last):\n  ...\nMemoryError\n")
    handle = type("H", (), {"paths": type("P", (), {"stderr": log})})
    error = RuntimeError("Job (task=0) failed during processing with trace:\n----\nRuntimeError: python main.py "
                         "--epochs 3 exited with status -9\n----\nYou can check full logs with 'job.stderr(0)'")
    reason = launch.failure_reason(handle, error, "resumes after epoch 1 of 3")
    assert reason == f"python main.py --epochs 3 exited with status -9 (log {log})"
    log.write_text("progress\nerror: --resume: last.pth is another run: --epochs 3 (now 4)\n")
    assert launch.failure_reason(handle, error, "") == "--resume: last.pth is another run: --epochs 3 (now 4)"


# -- an edited preset never strands a root -----------------------------------------------------------------------

def test_a_changed_training_flag_fails_its_job_at_once_naming_the_flag_and_what_to_do(tmp_path, capsys):
    preset = preset_file(tmp_path, **dict(BASE, train={"epochs": 3, "train_subset": 16}))
    root = tmp_path / "root"
    folder = root / "PGDAT" / "seed0"
    folder.mkdir(parents=True)
    args = ["--preset", preset, "--root", str(root), "--data_dir", str(tmp_path), "--poll", "0.1"]
    # A run of the preset as it was (epochs 6): its config.json, as main.py resolves and records it.
    recorded = Plan(load_preset(preset, switches()), str(root), str(tmp_path)).configs["train PGDAT seed 0"].record()
    (folder / "config.json").write_text(json.dumps(dict(recorded, epochs=6, eval_bs=16, teacher_sha256=None)))
    assert reproduce(args) == 1  # nothing started: the run's folder holds another run
    out, err = capsys.readouterr()
    assert "started" not in out
    row = [line for line in out.splitlines() if line.startswith("train PGDAT seed 0")][0]
    assert row.endswith(f"failed: {folder} holds a run made with other settings: --epochs 6 (the preset: 3); set the "
                        f"preset back, or move that folder away (or choose another --root) to train it anew")
    assert "eval_bs" not in row  # operational flags may differ, as on main.py's resume
    assert [line.split()[-1] for line in out.splitlines() if line.startswith(("evaluate", "report"))] == \
        ["blocked", "blocked"]
    assert "some jobs did not finish" in err and "Traceback" not in err


def test_n_ex_beyond_the_test_set_is_the_test_set(tmp_path):
    assert evaluated_images("CIFAR10", 0) == evaluated_images("CIFAR10", 20000) == 10000
    assert evaluated_images("CIFAR10", 500) == 500
    checkpoint = tmp_path / "best_PGD10_acc_model.pth"
    checkpoint.write_bytes(b"weights")
    (tmp_path / "best_PGD10_acc_model.pth.eval.paper.json").write_text(json.dumps(
        eval_report(str(checkpoint), {2: ["natural", "pgd10"], 8: ["natural", "pgd10"]}, n_examples=10000)))
    assert evaluation_missing(str(checkpoint), paper_wanted(evaluated_images("CIFAR10", 20000), n_ex=20000)) is None


def test_a_changed_evaluation_setting_replaces_the_report_and_a_matching_one_is_extended(tmp_path):
    checkpoint = tmp_path / "best_PGD10_acc_model.pth"
    checkpoint.write_bytes(b"weights")
    report = tmp_path / "best_PGD10_acc_model.pth.eval.paper.json"
    report.write_text(json.dumps(eval_report(str(checkpoint), {8: ["natural", "pgd10"]}, n_examples=100)))
    commands = [["main_eval.py", "--n_ex", "500", "--eps", "8"], ["main_eval.py", "--n_ex", "500", "--eps", "2"]]
    wanted = [paper_wanted(500, eps=(8.0,)), paper_wanted(500, eps=(2.0,))]
    assert evaluation_missing(str(checkpoint), wanted[0]) == \
        "evaluated with other settings (n_examples 100 (the preset: 500)): evaluated again"
    current = evaluation_commands(str(checkpoint), commands, wanted)
    assert current() == [commands[0] + ["--overwrite"], commands[1]]  # the first replaces it, the next extend
    report.write_text(json.dumps(eval_report(str(checkpoint), {8: ["natural", "pgd10"]}, n_examples=500)))
    assert current() == commands and evaluation_missing(str(checkpoint), wanted[1]) == "missing natural@2, pgd10@2"
    for changes, said in (({"seed": 3}, "seed 3 (the preset: 0)"), ({"batch_size": 100}, "batch_size 100"),
                          ({"format": "advkd-eval/1"}, "older format"), ({"radii": []}, "damaged")):
        report.write_text(json.dumps(eval_report(str(checkpoint), {8: ["natural", "pgd10"]}, 500, **changes)))
        assert said in evaluation_missing(str(checkpoint), wanted[0]) and current()[0][-1] == "--overwrite"
    checkpoint.write_bytes(b"retrained")  # a report of an earlier checkpoint in the run's own file: replaced
    assert current()[0][-1] == "--overwrite"
    report.write_text("not a report")  # never replaced: main_eval.py refuses it, with its line
    assert current() == commands


@pytest.mark.slow
def test_test_images_are_the_real_test_splits(real_data_dir):
    from data.datasets import load_cifar, load_tiny_imagenet
    assert len(load_cifar("CIFAR10", real_data_dir, "test")[1]) == TEST_IMAGES["CIFAR10"]
    assert len(load_tiny_imagenet(real_data_dir, "test")[1]) == TEST_IMAGES["Tiny_Image"]


@pytest.mark.slow
def test_an_edited_n_ex_evaluates_again_through_main_eval(real_data_dir, small_teacher, tmp_path):
    """The evaluation job of a run, as the plan makes it, with n_ex 8 and then 16: the second replaces the report."""
    root = tmp_path / "root"
    checkpoint = root / "PGDAT" / "seed0" / "best_PGD10_acc_model.pth"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(open(small_teacher, "rb").read())

    def evaluation(n_ex):
        preset = load_preset(preset_file_text(dict(BASE, evaluate=[{"protocol": "paper", "attacks": ["natural"],
                                                                    "n_ex": n_ex}]), str(tmp_path)), switches())
        return [j for j in Plan(preset, str(root), real_data_dir).jobs if j.stage == "evaluate"][0]

    for n_ex in (8, 16, 20000):
        job = evaluation(n_ex)
        assert job.status()[0] is False
        assert launch.run_here(job, REPO) == ("done", None), n_ex
        assert job.status() == (True, "done")
    report = json.loads((checkpoint.parent / "best_PGD10_acc_model.pth.eval.paper.json").read_text())
    assert report["n_examples"] == 10000


# -- shutdown ---------------------------------------------------------------------------------------------------

LONG = dict(MICRO, teacher=None, methods=["PGDAT"], evaluate=[{"protocol": "paper", "attacks": ["natural"]}],
            train={"epochs": 10000, "train_subset": 16, "test_subset": 8, "bs": 8, "num_steps": 1})


def start_reproduce(tmp_path, real_data_dir):
    """reproduce.py on a preset whose one job trains for a long time, in its own process group (as a terminal's
    foreground job), with its output in files."""
    preset = tmp_path / "long.json"
    preset.write_text(json.dumps({k: v for k, v in LONG.items() if v is not None}))
    root = tmp_path / "root"
    out, err = open(tmp_path / "out.txt", "w"), open(tmp_path / "err.txt", "w")
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "reproduce.py"), "--preset", str(preset),
                                "--root", str(root), "--data_dir", real_data_dir, "--poll", "0.2"],
                               stdout=out, stderr=err, cwd=REPO, start_new_session=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    last = root / "PGDAT" / "seed0" / "last.pth"
    deadline = time.time() + 180
    while not last.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert last.exists(), (tmp_path / "err.txt").read_text()
    running = json.loads((root / "jobs" / launch.RUNNING_FILE).read_text())
    assert len(running) == 1
    return process, root, int(next(iter(running)))


def processes_of(pid):
    """pid and its descendants that are alive."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        if not launch.process_alive(p):
            continue
        found.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return found


def gone_within(pids, seconds):
    deadline = time.time() + seconds
    while any(launch.process_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    return not any(launch.process_alive(p) for p in pids)


@pytest.mark.slow
def test_ctrl_c_stops_the_jobs_cleanly_without_a_traceback(real_data_dir, tmp_path):
    process, root, controller = start_reproduce(tmp_path, real_data_dir)
    family = processes_of(controller)
    assert len(family) == 3  # submitit's controller, its job process, main.py
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    assert process.wait(200) == 130
    err = (tmp_path / "err.txt").read_text()
    assert "Traceback" not in err, err
    assert "interrupted: stopped train PGDAT seed 0 (a training run saved last.pth)" in err
    assert gone_within(family, 10)
    log = open(next((root / "jobs").glob("*_0_log.err"))).read()
    assert "SIGTERM received: finishing the current step, then saving last.pth" in log
    assert json.loads((root / "jobs" / launch.RUNNING_FILE).read_text()) == {}


@pytest.mark.slow
def test_kill_9_of_reproduce_leaves_no_orphan_and_the_next_call_says_what_still_runs(real_data_dir, tmp_path,
                                                                                      capsys):
    process, root, controller = start_reproduce(tmp_path, real_data_dir)
    family = processes_of(controller)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    # Until they have ended (a run saves last.pth first), the next call names them and starts nothing.
    said = launch.still_running(str(root / "jobs"))
    assert gone_within(family, 200)
    assert said is None or (said.startswith("jobs of an earlier reproduce.py call on this root still run: train "
                                            "PGDAT seed 0 (pid ") and "kill -TERM" in said)
    log = open(next((root / "jobs").glob("*_0_log.err"))).read()
    assert "SIGTERM received: finishing the current step, then saving last.pth" in log
    assert launch.still_running(str(root / "jobs")) is None


@pytest.mark.slow
def test_jobs_still_running_from_an_earlier_call_are_said_before_anything_starts(tmp_path, capsys):
    jobs = tmp_path / "root" / "jobs"
    jobs.mkdir(parents=True)
    # A process whose command line is a submitit controller's, as an earlier call left it.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", launch.CONTROLLER])
    deadline = time.time() + 30
    while launch.CONTROLLER.encode() not in open(f"/proc/{other.pid}/cmdline", "rb").read() and time.time() < deadline:
        time.sleep(0.05)  # until the child has exec'd: before, its command line is this process's
    try:
        (jobs / launch.RUNNING_FILE).write_text(json.dumps({str(other.pid): "train PGDAT seed 0",
                                                            "999999999": "train TRADES seed 0"}))
        preset = preset_file(tmp_path, **BASE)
        err = refused(capsys, ["--preset", preset, "--root", str(tmp_path / "root"), "--data_dir", str(tmp_path)])
        assert err == (f"error: jobs of an earlier reproduce.py call on this root still run: train PGDAT seed 0 "
                       f"(pid {other.pid}); wait for them to end (a stopped run saves last.pth within "
                       f"{launch.STOP_GRACE_S} s), or stop them with kill -TERM {other.pid}, then run the same "
                       f"command again")
        assert reproduce(["--preset", preset, "--root", str(tmp_path / "root"), "--dry_run"]) == 0
        assert f"note: jobs of an earlier reproduce.py call on this root still run: train PGDAT seed 0 (pid " \
               f"{other.pid})" in capsys.readouterr().out
    finally:
        other.kill()
        other.wait()
    assert launch.still_running(str(jobs)) is None
