"""reproduce.py: the paper preset's plan, preset checks as one-line errors, the job states read from
the files runs leave, a pre-empted job stopping its child cleanly, and a micro preset end to end
through submitit's local executor, twice (the second call does nothing)."""
import json
import os
import pickle
import signal
import threading
import time

import pytest

from helpers import REPO
from pipeline import launch
from pipeline.cli import main as reproduce
from pipeline.plan import Wanted, evaluation_missing, training_state
from pipeline.presets import Evaluation
from runtime.checkpoints import sha256_of


def dry_run(capsys, *args):
    assert reproduce(["--dry_run", *args]) == 0
    return capsys.readouterr().out


def commands(text):
    return [line.strip()[len("python "):] for line in text.splitlines() if line.startswith("    python ")]


def test_the_paper_preset_expands_into_its_table(capsys, tmp_path):
    root = str(tmp_path / "paper")
    out = dry_run(capsys, "--preset", "dgad-cifar10-resnet18", "--root", root)
    train = [c for c in commands(out) if c.startswith("main.py")]
    evaluate = [c for c in commands(out) if c.startswith("main_eval.py")]
    assert len(train) == 15 and len(evaluate) == 30  # 5 methods x 3 seeds; two evaluations each
    assert "train teacher" not in out  # the preset names a published teacher
    data = os.path.abspath("./datasets")  # the jobs run in the repository's folder: the caller's folder is said
    assert train[0] == (f"main.py --dataset CIFAR10 --model resnet18 --method PGDAT --seed 0 --data_dir {data} "
                        f"--save_dir {root}/PGDAT/seed0 --recipe dgad-paper --resume")
    dgad = [c for c in train if "--method DGAD" in c]
    assert [c.split("--seed ")[1].split()[0] for c in dgad] == ["0", "1", "2"]
    assert all("--teacher_model wideresnet34_10 --teacher_path checkpoints/teachers/CIFAR10/wideresnet34_10.pth"
               in c for c in dgad)
    assert not any("--teacher_path" in c for c in train if "--method PGDAT" in c or "--method TRADES" in c)
    assert evaluate[0] == (f"main_eval.py --dataset CIFAR10 --model resnet18 --model_path "
                           f"{root}/PGDAT/seed0/best_PGD10_acc_model.pth --data_dir {data} --protocol paper "
                           f"--attacks natural,fgsm,pgd10,cw_l2,aa --eps 8 --n_ex 0 --method PGDAT")
    assert evaluate[1].endswith("--protocol paper --attacks natural,pgd10 --eps 2,4,12,16 --n_ex 0 --method PGDAT")
    report = [c for c in commands(out) if c.startswith("main_report.py")]
    assert len(report) == 1 and report[0].endswith(f"--out {root}/report --title dgad-cifar10-resnet18")
    assert out.count("[todo]") == 31 and "[done]" not in out


def test_the_mini_preset_trains_its_teacher_first(capsys, tmp_path):
    root = str(tmp_path / "mini")
    out = dry_run(capsys, "--preset", "cifar10-mini", "--root", root)
    train = [c for c in commands(out) if c.startswith("main.py")]
    assert train[0].startswith("main.py --dataset CIFAR10 --model wideresnet10_2 --method PGDAT --seed 0")
    assert f"--teacher_path {root}/teacher/best_PGD10_acc_model.pth" in [c for c in train if "ARD" in c][0]
    assert "Natural/seed0/best_clean_acc_model.pth" in out  # Natural's table row: its best clean epoch
    assert len(train) == 7


def preset_file(tmp_path, **changes):
    preset = {"dataset": "CIFAR10", "student": "wideresnet10_1", "methods": ["PGDAT"], "seeds": [0],
              "evaluate": [{"protocol": "paper"}]}
    preset.update(changes)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(preset))
    return str(path)


@pytest.mark.parametrize("changes, expected", [
    ({"methods": ["PGDAT", "Bogus"]}, "'Bogus' is not one of"),
    ({"methods": ["RSLAD"]}, "teacher: is missing, and RSLAD distil"),
    ({"train": {"save_dir": "x"}}, "'save_dir' is set by reproduce.py"),
    ({"train": {"epoch": 3}}, "'epoch' is not a main.py flag"),
    ({"seeds": [0, 0]}, "distinct integers"),
    ({"evaluate": [{"protocol": "paper", "eps": [0.03]}]}, "--eps counts 1/255 pixel units"),
    ({"evaluate": [{"protocol": "paper", "attacks": ["pgd20"]}]}, "belongs to --protocol standard"),
    ({"evaluate": [{"protocol": "paper"}, {"protocol": "paper", "n_ex": 5}]}, "must share n_ex"),
    ({"teacher": {"model": "wideresnet10_1", "train": {"method": "RSLAD"}}}, "trains without a teacher"),
    ({"student": "resnet99"}, "is not a model of models/"),
    ({"extra": 1}, "unknown keys extra"),
])
def test_bad_presets_are_one_line_errors(tmp_path, capsys, changes, expected):
    with pytest.raises(SystemExit) as exit_info:
        reproduce(["--preset", preset_file(tmp_path, **changes), "--dry_run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_an_unknown_preset_names_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        reproduce(["--preset", "nope", "--dry_run"])
    err = capsys.readouterr().err
    named = err.split("choose from ")[1].split(", or pass")[0].split(", ")
    assert named == sorted(name[:-len(".json")] for name in os.listdir(os.path.join(REPO, "presets")))
    assert {"cifar10-mini", "dgad-cifar10-resnet18"} <= set(named)


def paper_wanted(n_examples, attacks=("natural", "pgd10"), eps=(2.0, 8.0), n_ex=None):
    """What a preset's paper-protocol evaluation of a CIFAR-10 wideresnet10_1 asks of its report."""
    identity = {"dataset": "CIFAR10", "model": "wideresnet10_1", "protocol": "paper", "n_examples": n_examples}
    n_ex = n_examples if n_ex is None else n_ex
    return Wanted(identity, 0, 200, Evaluation("paper", tuple(attacks), tuple(eps), n_ex))


def eval_report(checkpoint, cells, n_examples=100, **changes):
    """A main_eval.py report of `checkpoint` (its current sha256) holding `cells`: {radius: [attacks]}."""
    radii = {f"{eps:g}": {"eps": eps / 255, "eps_255": eps, "attacks": list(names), "variance_gap": None,
                          "results": {name: {"accuracy": 50.0} for name in names}} for eps, names in cells.items()}
    report = {"format": "advkd-eval/2", "dataset": "CIFAR10", "model": "wideresnet10_1", "protocol": "paper",
              "n_examples": n_examples, "batch_size": 200, "seed": 0, "eps_255": sorted(cells),
              "checkpoint": {"path": os.path.abspath(checkpoint), "sha256": sha256_of(checkpoint)}, "radii": radii}
    report.update(changes)
    return report


def test_job_states_come_from_the_files_a_run_leaves(tmp_path):
    folder = tmp_path / "run"
    state = training_state(str(folder), {"method": "PGDAT", "seed": 0})
    assert state() == (False, "not started")
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"method": "PGDAT", "seed": 0, "epochs": 3}))
    (folder / "results.csv").write_text("epoch,lr\n1,0.1\n2,0.1\n")
    assert state() == (False, "resumes after epoch 2 of 3")
    (folder / "results.csv").write_text("epoch,lr\n1,0.1\n2,0.1\n3,0.1\n")
    assert state() == (True, "done (3 epochs)")
    other = training_state(str(folder), {"method": "TRADES"})()[1]
    assert other.startswith(f"{folder} holds a run made with other settings: --method 'PGDAT' (the preset: 'TRADES')")
    # The preset's settings are compared as main.py resolves them and config.json records them, by main.py's rule
    # for a resume (operational flags may differ): an edited preset is not "done".
    (folder / "config.json").write_text(json.dumps({"method": "PGDAT", "seed": 0, "epochs": 3, "milestones": [2, 3],
                                                    "epsilon": 8.0, "download": False, "eval_bs": 512}))
    assert training_state(str(folder), {"epochs": 3, "milestones": (2, 3), "epsilon": 8.0, "eval_bs": 1024})() == \
        (True, "done (3 epochs)")
    edited = training_state(str(folder), {"epochs": 4, "milestones": (2, 4)})()
    assert edited[0] is False and "--epochs 3 (the preset: 4); --milestones [2, 3] (the preset: (2, 4))" in edited[1]
    assert "set the preset back, or move that folder away (or choose another --root)" in edited[1]

    checkpoint = folder / "best_PGD10_acc_model.pth"
    wanted = paper_wanted(100)
    assert evaluation_missing(str(checkpoint), wanted) == "waits for its checkpoint"
    checkpoint.write_bytes(b"weights")
    assert evaluation_missing(str(checkpoint), wanted) == "not evaluated"
    report = eval_report(str(checkpoint), {8: ["natural", "pgd10"], 2: ["natural"]})
    path = folder / "best_PGD10_acc_model.pth.eval.paper.json"
    path.write_text(json.dumps(report))
    assert evaluation_missing(str(checkpoint), wanted) == "missing pgd10@2"
    path.write_text(json.dumps(eval_report(str(checkpoint), {8: ["natural", "pgd10"], 2: ["natural", "pgd10"]})))
    assert evaluation_missing(str(checkpoint), wanted) is None
    checkpoint.write_bytes(b"retrained")
    assert evaluation_missing(str(checkpoint), wanted) == "the checkpoint changed since its evaluation: evaluated again"


TRAPS_SIGTERM = """
import signal, sys, time
def stop(signum, frame):
    open(sys.argv[1], "w").write("SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
open(sys.argv[1], "w").write("ready")
time.sleep(60)
"""


def test_a_preempted_job_stops_its_child_cleanly_and_requeues_the_same_commands(tmp_path):
    script, marker = tmp_path / "child.py", tmp_path / "marker"
    script.write_text(TRAPS_SIGTERM)
    job = launch.CommandJob("train X", [[str(script), str(marker)]], str(tmp_path), {})
    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not (marker.exists() and marker.read_text() == "ready") and time.time() < deadline:
        time.sleep(0.05)
    assert marker.read_text() == "ready"
    assert pickle.loads(pickle.dumps(job)).commands == job.commands  # picklable while its child runs
    delayed = job.checkpoint()
    assert marker.read_text() == "SIGTERM"  # the child was asked to stop, and did
    thread.join(10)
    requeued = delayed.function
    assert isinstance(requeued, launch.CommandJob) and requeued.commands == job.commands
    assert requeued.cwd == job.cwd and requeued._child is None


MICRO = {
    "dataset": "CIFAR10", "student": "wideresnet10_1",
    "teacher": {"model": "wideresnet10_1", "train": {"method": "PGDAT", "seed": 7}},
    "methods": ["PGDAT", "RSLAD"], "seeds": [0],
    "train": {"epochs": 1, "train_subset": 16, "test_subset": 8, "bs": 8, "num_steps": 1},
    "evaluate": [{"protocol": "paper", "attacks": ["natural", "fgsm"], "n_ex": 8},
                 {"protocol": "paper", "attacks": ["natural", "pgd10"], "eps": [2, 8], "n_ex": 8}]}


def test_a_micro_preset_runs_end_to_end_through_the_local_executor_twice(real_data_dir, tmp_path, capsys,
                                                                         monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = tmp_path / "micro.json"
    path.write_text(json.dumps(MICRO))
    root = str(tmp_path / "root")
    args = ["--preset", str(path), "--root", root, "--data_dir", real_data_dir, "--workers", "2", "--poll", "0.2"]
    assert reproduce(args) == 0
    out = capsys.readouterr().out
    for name in ("train teacher", "train PGDAT seed 0", "train RSLAD seed 0", "evaluate PGDAT seed 0",
                 "evaluate RSLAD seed 0", "report"):
        assert f"started {name}" in out and f"finished {name}" in out
    assert out.index("finished train teacher") < out.index("started train RSLAD seed 0")  # RSLAD needs it
    assert "6 done" in out
    with open(os.path.join(root, "RSLAD", "seed0", "config.json")) as f:
        assert json.load(f)["teacher_path"] == os.path.join(root, "teacher", "best_PGD10_acc_model.pth")
    with open(os.path.join(root, "RSLAD", "seed0", "best_PGD10_acc_model.pth.eval.paper.json")) as f:
        report = json.load(f)
    assert report["eps_255"] == [2, 8] and report["radii"]["8"]["attacks"] == ["natural", "fgsm", "pgd10"]
    with open(os.path.join(root, "report", "tables.md")) as f:
        table = f.read()
    assert "| PGDAT |" in table and "| RSLAD |" in table and os.path.isfile(
        os.path.join(root, "report", "robustness_vs_eps-CIFAR10-wideresnet10_1-paper.png"))

    assert reproduce(args) == 0  # again: everything is done
    out = capsys.readouterr().out
    assert "started" not in out and "6 skipped (done)" in out
    assert "[done] train RSLAD seed 0: done (1 epochs)" in dry_run(capsys, *args)

    os.unlink(os.path.join(root, "RSLAD", "seed0", "best_PGD10_acc_model.pth.eval.paper.json"))
    assert reproduce(args) == 0  # what a job does this time makes the jobs after it run again
    out = capsys.readouterr().out
    assert "started evaluate RSLAD seed 0" in out and "started report" in out
    assert "started train" not in out and "started evaluate PGDAT" not in out


def test_requeue_after_preemption_resumes_the_run_from_last_pth(real_data_dir, tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    folder = tmp_path / "run"
    command = ["main.py", "--method", "PGDAT", "--model", "wideresnet10_1", "--data_dir", real_data_dir,
               "--train_subset", "16", "--test_subset", "8", "--bs", "8", "--num_steps", "1", "--epochs", "15",
               "--save_dir", str(folder), "--resume"]
    executor = submitit.LocalExecutor(folder=str(tmp_path / "jobs"))
    executor.update_parameters(timeout_min=launch.LOCAL_TIMEOUT_MIN)
    handle = executor.submit(launch.CommandJob("train", [command], REPO, {}))
    deadline = time.time() + 120
    while not (folder / "last.pth").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert (folder / "last.pth").exists()
    with open(f"/proc/{handle._process.pid}/task/{handle._process.pid}/children") as f:
        task = int(f.read().split()[0])  # the submitit process that runs the CommandJob
    signalled = time.time()
    os.kill(task, signal.SIGUSR2)  # what SLURM sends a job before pre-empting it (submitit's --signal)
    handle.result()  # requeued, resumed, finished
    # The child's exit is seen at once (not after the grace period: the hook runs inside Popen.wait).
    assert time.time() - signalled < launch.STOP_GRACE_S
    log = handle.stdout()
    assert "this job is preempted" in log and "Requeued job" in log
    assert "SIGTERM received: finishing the current step, then saving last.pth" in handle.stderr()
    assert "resumed " in log
    with open(folder / "results.csv") as f:
        epochs = [line.split(",")[0] for line in f.read().splitlines()[1:]]
    assert epochs == [str(e) for e in range(1, 16)]


def fake_slurm(tmp_path, monkeypatch):
    """srun and sbatch stand-ins: sbatch keeps the script it is given and answers with a job id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sh\necho Submitted batch job 4242\n")
    for name in ("srun", "sbatch"):
        os.chmod(bin_dir / name, 0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_slurm_gets_one_array_per_stage_with_the_cluster_flags(tmp_path, monkeypatch):
    fake_slurm(tmp_path, monkeypatch)
    slurm = {"partition": "gpu", "account": "proj", "qos": "high", "constraint": "a100", "cpus": 6,
             "time": 600, "array_parallelism": 2}
    launcher = launch.Launcher("slurm", str(tmp_path / "jobs"), REPO, 1, slurm)
    jobs = [launch.Job(f"train M seed {k}", "train", [["main.py", "--seed", str(k)]], str(tmp_path), gpus=2)
            for k in range(3)]
    handles = launcher.submit(jobs)
    assert [h.job_id for h in handles] == ["4242_0", "4242_1", "4242_2"]
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("--array=0-2%2", "--partition=gpu", "--account=proj", "--qos=high", "--constraint=a100",
                 "--gpus-per-node=2", "--cpus-per-task=6", "--time=600", "--signal=USR2@180"):
        assert f"#SBATCH {line}\n" in script, line
    assert launcher.env == {"OMP_NUM_THREADS": "6"}
    # An evaluation array takes one GPU, whatever the training runs take.
    launcher.submit([launch.Job("evaluate M seed 0", "evaluate", [["main_eval.py"]], str(tmp_path))])
    assert "#SBATCH --gpus-per-node=1\n" in (tmp_path / "submitted.sh").read_text()


def test_gpus_per_run_trains_under_torchrun_and_evaluates_in_one_process(capsys, tmp_path):
    out = dry_run(capsys, "--preset", "cifar10-mini", "--root", str(tmp_path / "r"), "--gpus", "4")
    assert "python -m torch.distributed.run --standalone --nproc_per_node 4 main.py --dataset CIFAR10" in out
    assert "    python main_eval.py " in out and "nproc_per_node 4 main_eval.py" not in out


def test_slurm_on_a_machine_without_it_is_a_one_line_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    with pytest.raises(SystemExit) as exit_info:
        reproduce(["--preset", "cifar10-mini", "--launcher", "slurm", "--root", str(tmp_path / "r"),
                   "--data_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--launcher slurm: Could not detect \"srun\"" in err and "login node" in err and "Traceback" not in err


def test_a_missing_teacher_is_said_before_any_job_starts(capsys, tmp_path):
    assert "note: the teacher checkpoint checkpoints/teachers/CIFAR10/wideresnet34_10.pth is not there yet" in \
        dry_run(capsys, "--preset", "dgad-cifar10-resnet18", "--root", str(tmp_path / "r"))
    with pytest.raises(SystemExit):
        reproduce(["--preset", "dgad-cifar10-resnet18", "--root", str(tmp_path / "r"), "--data_dir", str(tmp_path)])
    assert "teacher checkpoint checkpoints/teachers/CIFAR10/wideresnet34_10.pth is missing" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


WRITES_ITS_GPU = """
import os, sys, time
time.sleep(0.5)
open(sys.argv[1], "w").write(os.environ.get("CUDA_VISIBLE_DEVICES", "none"))
"""


def test_local_jobs_on_a_gpu_machine_each_get_the_least_busy_gpu(tmp_path, capsys):
    script = tmp_path / "gpu.py"
    script.write_text(WRITES_ITS_GPU)
    launcher = launch.Launcher("local", str(tmp_path / "jobs"), REPO, workers=3, poll_s=0.1, gpus=2)
    jobs = [launch.Job(f"job {k}", "train", [[str(script), str(tmp_path / f"gpu{k}")]], str(tmp_path),
                       state=lambda k=k: ((tmp_path / f"gpu{k}").exists(), "")) for k in range(4)]
    states = {job.name: "pending" for job in jobs}
    launcher.run(jobs, states)
    assert set(states.values()) == {"done"}
    seen = [(tmp_path / f"gpu{k}").read_text() for k in range(4)]
    assert seen[:3] == ["0", "1", "0"]  # three at once on two GPUs: the third shares the least busy
    assert seen[3] in ("0", "1") and launcher.gpu_load == {0: 0, 1: 0}
    out = capsys.readouterr().out
    assert "started job 0 on GPU 0" in out and "started job 1 on GPU 1" in out
