"""benchmarks/gpu_check.py, the one command of a GPU lease: its --tiny mode end to end on the CPU from a packed
CIFAR-10 (so the script cannot rot between leases), a failing and a hanging stage recorded while the rest runs,
what it reads back from pytest, bench.py and main.py, and its input errors."""
import io
import json
import os
import shutil
import tarfile
import time

import numpy as np
import pytest

from benchmarks import gpu_check
from conftest import SHARED_DATA

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MAX_FILES, MAX_BYTES = 8, 16 * 2 ** 20  # what a lease brings back from its $OUT


def packed_cifar10(folder, train_per_class=5, test_per_class=2, prepare=None):
    """cifar10-jpeg.tar.gz in ../shared/data's layout (random JPEGs) beside a prepare.py (the real one by default)."""
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    generator = np.random.default_rng(0)
    with tarfile.open(os.path.join(folder, "cifar10-jpeg.tar.gz"), "w:gz") as tar:
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            for name in CLASSES:
                for i in range(count):
                    blob = io.BytesIO()
                    Image.fromarray(generator.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(blob, "JPEG")
                    info = tarfile.TarInfo(f"cifar10-jpeg/{split}/{name}/{i:04d}.jpg")
                    info.size = len(blob.getvalue())
                    tar.addfile(info, io.BytesIO(blob.getvalue()))
    if prepare is None:
        source = os.path.join(SHARED_DATA, "prepare.py")
        if not os.path.isfile(source):
            pytest.skip(f"needs {source} (the shared/ folder beside the checkout)")
        shutil.copy(source, folder)
    else:
        with open(os.path.join(folder, "prepare.py"), "w") as f:
            f.write(prepare)
    return str(folder)


def run_check(*args, timeout=900):
    from helpers import run_script
    return run_script(os.path.join("benchmarks", "gpu_check.py"), *args, timeout=timeout)


def assert_fits_a_lease(out):
    files = os.listdir(out)
    assert len(files) <= MAX_FILES and all(os.path.getsize(os.path.join(out, f)) < MAX_BYTES for f in files), files


@pytest.mark.slow  # subprocesses: every stage, on the CPU
def test_tiny_mode_runs_every_stage_on_the_cpu(tmp_path):
    data = packed_cifar10(tmp_path / "data")
    out = tmp_path / "out"
    result = run_check(data, str(out), "--tiny", "--work_dir", str(tmp_path / "work"))
    summary = json.loads((out / "summary.json").read_text())
    statuses = {s["name"]: s["status"] for s in summary["stages"]}
    assert result.returncode == 0, (statuses, result.stdout[-3000:])
    assert [s["name"] for s in summary["stages"]] == [s.name for s in gpu_check.stages_for(gpu_check.TINY)]
    assert statuses.pop("bench_wideresnet10_1_bf16_channels_last_compile") == "skipped"
    assert set(statuses.values()) == {"passed"}, statuses
    assert summary["environment"]["cuda_available"] is False and summary["tiny"] is True
    assert summary["command"].startswith("python3 benchmarks/gpu_check.py ") and "--tiny" in summary["command"]
    tier = summary["gpu_tier"]  # every test of the tier is skipped with its reason on the CPU
    assert tier["counts"]["skipped"] == len(tier["tests"]) > 40 and tier["counts"]["failed"] == 0
    assert sum("test_gpu::" in test or "test_gpu." in test for test in tier["tests"]) > 40  # and any other module's
    assert set(summary["bench"]) == {"bench_wideresnet10_1_fp32", "bench_wideresnet10_1_bf16_channels_last",
                                     "bench_wideresnet16_1_fp32", "bench_wideresnet16_1_bf16_channels_last",
                                     "bench_preset_teacher", "bench_preset_student"}
    teacher, student = (summary["bench"][f"bench_preset_{role}"] for role in ("teacher", "student"))
    assert teacher["config"]["method"] == "PGDAT" and student["config"]["method"] == "DGAD"
    assert set(teacher["paths"]) == {"ours"} and teacher["paths"]["ours"]["precision"] == "fp32"
    sizing = summary["preset_sizing"]
    assert sizing["teacher"]["images_per_second"] == teacher["paths"]["ours"]["images_per_second"]
    assert sizing["student"]["job"] == ["DGAD", "wideresnet10_1", "wideresnet10_1"]
    assert all(sizing[role]["epochs"] >= 1 for role in ("teacher", "student"))
    fp32, bf16 = (summary["bench"][f"bench_wideresnet10_1_{variant}"] for variant in ("fp32", "bf16_channels_last"))
    assert set(fp32["paths"]) == {"ours", "plain"} and set(bf16["paths"]) == {"ours"}
    assert bf16["paths"]["ours"]["precision"] == "bf16" and bf16["paths"]["ours"]["channels_last"] is True
    assert set(bf16["peak_tflops"]) == {"fp32", "bf16"}  # the MFU's peak, measured at the run's precision
    epoch = summary["epoch"]
    assert epoch["train_images"] == 50 and epoch["precision"] == "bf16" and epoch["channels_last"] is True
    assert 0 < epoch["seconds_per_epoch_training_only"] < epoch["seconds_per_epoch_with_evaluation"]
    assert sorted(os.listdir(out)) == ["bench.log", "epoch.log", "gpu_check.log", "gpu_tier.log", "summary.json",
                                       "table.md"]
    table = (out / "table.md").read_text()
    assert "| DGAD, wideresnet10_1 ← wideresnet10_1, bs 4, K = 2 | ours fp32 |" in table
    assert "`python3 bench.py --method PGDAT --model wideresnet10_1 " in table and "--json" not in table
    assert_fits_a_lease(out)
    assert "epoch (50 images, bf16)" in result.stdout and "gpu tier: 0 passed, 0 failed" in result.stdout
    assert "cifar10-gpu teacher (PGDAT wideresnet10_1, fp32): " in result.stdout


@pytest.mark.slow  # subprocesses (a script of a few lines)
def test_a_failing_stage_is_recorded_and_the_next_ones_run_or_are_skipped_with_the_reason(tmp_path):
    data = packed_cifar10(tmp_path / "data", 1, 1, prepare="import sys\nprint('no space left')\nsys.exit(3)\n")
    out = tmp_path / "out"
    result = run_check(data, str(out), "--tiny", "--stages", "environment,epoch", "--work_dir", str(tmp_path / "w"))
    assert result.returncode == 1
    stages = {s["name"]: s for s in json.loads((out / "summary.json").read_text())["stages"]}
    assert stages["environment"]["status"] == "passed"
    assert stages["data"]["status"] == "failed" and stages["data"]["returncode"] == 3
    assert "no space left" in stages["data"]["tail"]
    assert stages["epoch"] == {"name": "epoch", "status": "skipped", "reason": "no CIFAR-10: the data stage failed"}
    assert stages["gpu_tier"]["reason"] == "not in --stages"


@pytest.mark.slow  # subprocesses (a script that hangs)
def test_a_stage_that_outlives_the_budget_is_killed_with_its_children(tmp_path):
    hang = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            "open(sys.argv[1] + '.child', 'w').write(str(child.pid))\n"
            "time.sleep(600)\n")
    data = packed_cifar10(tmp_path / "data", 1, 1, prepare=hang)
    out, start = tmp_path / "out", time.time()
    result = run_check(data, str(out), "--tiny", "--budget", "8", "--work_dir", str(tmp_path / "w"))
    assert result.returncode == 1 and time.time() - start < 60
    stages = {s["name"]: s for s in json.loads((out / "summary.json").read_text())["stages"]}
    assert stages["data"]["status"] == "timed out"
    assert all(s["status"] == "skipped" for name, s in stages.items() if name not in ("environment", "data"))
    child = int((tmp_path / "w" / "data.child").read_text())
    time.sleep(0.5)
    assert not os.path.exists(f"/proc/{child}") or "Z" in open(f"/proc/{child}/stat").read().split()[2]


def test_stages_that_cannot_fit_the_budget_are_skipped_in_order(tmp_path, capsys):
    prepared = tmp_path / "data"
    (prepared / "cifar-10-batches-py").mkdir(parents=True)
    (prepared / "cifar-10-batches-py" / "batches.meta").write_bytes(b"")
    out = tmp_path / "out"
    assert gpu_check.main([str(prepared), str(out), "--budget", "1", "--work_dir", str(tmp_path / "w")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    stages = {s["name"]: s for s in summary["stages"]}
    assert [s["name"] for s in summary["stages"]] == [s.name for s in gpu_check.stages_for(gpu_check.FULL)]
    assert stages.pop("data") == {"name": "data", "status": "passed", "data_dir": str(prepared), "unpacked": False}
    assert all(s["status"] == "skipped" and "of the budget left" in s["reason"] for s in stages.values())
    assert "bench_resnet18_bf16_channels_last_compile" in stages and "bench_mobilenetV2_fp32" in stages
    assert "gpu_check: 11 stages" in capsys.readouterr().out
    assert_fits_a_lease(out)


def test_the_full_scale_times_the_issues_configurations():
    names = [s.name for s in gpu_check.stages_for(gpu_check.FULL)]
    assert names == ["environment", "data", "bench_resnet18_fp32", "bench_resnet18_bf16_channels_last", "epoch",
                     "gpu_tier", "bench_mobilenetV2_fp32", "bench_mobilenetV2_bf16_channels_last",
                     "bench_preset_teacher", "bench_preset_student", "bench_resnet18_bf16_channels_last_compile"]
    assert gpu_check.FULL.pairs == (("resnet18", "wideresnet34_10"), ("mobilenetV2", "wideresnet34_10"))
    assert "--bs" in gpu_check.FULL.bench_flags and gpu_check.FULL.bench_flags[1] == "128"
    assert gpu_check.FULL.budget <= 480  # the issue's 8 minutes


def test_the_preset_jobs_are_the_cifar10_gpu_presets_own():
    """What the check measures to size presets/cifar10-gpu.json is that preset's teacher and its dearest student."""
    from pipeline.presets import load_preset
    from pipeline.plan import training_switches
    preset = load_preset("cifar10-gpu", training_switches())
    jobs = gpu_check.FULL.preset
    assert jobs.teacher == (preset.teacher.method, preset.teacher.model)
    assert jobs.student == ("DGAD", preset.student, preset.teacher.model) and "DGAD" in preset.methods
    assert jobs.precision == preset.train.get("precision", "fp32") == preset.teacher.flags.get("precision", "fp32")


def test_preset_sizing_fits_whole_epochs_with_their_evaluation_in_the_targets():
    def report(images_per_second):
        return {"paths": {"ours": {"images_per_second": images_per_second}}}
    jobs = gpu_check.FULL.preset
    # teacher: 50,000 / 500 = 100 s, x1.2 with the check = 120 s: 2 in 240 s. student: 50,000 / 2,000 = 25 s,
    # x1.05 = 26.25 s: 2 in 60 s.
    sizing = gpu_check.preset_sizing({"bench_preset_teacher": report(500.0),
                                      "bench_preset_student": report(2000.0)}, jobs)
    assert sizing["teacher"]["seconds_per_training_epoch"] == 100.0
    assert sizing["teacher"]["seconds_per_epoch_with_evaluation"] == 120.0 and sizing["teacher"]["epochs"] == 2
    assert sizing["student"]["seconds_per_epoch_with_evaluation"] == 26.2 and sizing["student"]["epochs"] == 2
    assert sizing["teacher"]["job"] == ["PGDAT", "resnet18"]
    # just under a whole epoch more: still 2; a step too slow for one epoch in the target: 1, never 0.
    assert gpu_check.preset_sizing({"bench_preset_teacher": report(50_000 * 1.2 * 3 / 240 * 0.999)},
                                   jobs)["teacher"]["epochs"] == 2
    slow = gpu_check.preset_sizing({"bench_preset_student": report(10.0)}, jobs)
    assert slow["student"]["epochs"] == 1 and "teacher" not in slow
    summary = {"stages": [], "bench": {}, "preset_sizing": sizing}
    printed = gpu_check.format_summary(summary)
    assert ("cifar10-gpu teacher (PGDAT resnet18, fp32): 100.0 s per training epoch, about 120.0 s with the "
            "evaluation: epochs 2 for a target of 240 s") in printed
    assert "cifar10-gpu student (DGAD wideresnet16_2 <- resnet18, fp32): 25.0 s per training epoch" in printed


def test_the_markdown_table_holds_each_path_with_its_share_of_the_bf16_peak_and_its_command():
    def path(name, precision, ips, ms, phases, achieved):
        return {"path": name, "precision": precision, "images_per_second": ips, "ms_per_step": ms,
                "ms_per_step_by_phase": dict(zip(("data", "attack", "teacher", "update"), phases)),
                "flops_per_image": 62.2e9, "achieved_tflops": achieved}
    config = {"method": "DGAD", "model": "resnet18", "teacher_model": "wideresnet34_10", "bs": 128, "num_steps": 10,
              "channels_last": False, "compile": False}
    fp32 = {"config": config, "peak_tflops": {"fp32": 50.0},
            "paths": {"ours": path("ours", "fp32", 1000.0, 128.0, (1, 90, 20, 17), 62.2),
                      "plain": path("plain", "fp32", 250.0, 512.0, (40, 360, 80, 32), 15.55)}}
    bf16 = {"config": dict(config, channels_last=True), "peak_tflops": {"fp32": 50.0, "bf16": 800.0},
            "paths": {"ours": path("ours", "bf16", 4000.0, 32.0, (0.5, 20, 6, 5.5), 248.8)}}
    summary = {"command": "python3 benchmarks/gpu_check.py .gpu_data /out", "started": "2026-12-05T00:00:00+00:00",
               "environment": {"device": "NVIDIA H200", "torch": "2.11.0+cu130", "cuda_runtime": "13.0"},
               "bench": {"bench_resnet18_fp32": fp32, "bench_resnet18_bf16_channels_last": bf16},
               "stages": [{"name": "bench_resnet18_fp32", "status": "passed",
                           "command": "/opt/py/bin/python3 bench.py --method DGAD --json /tmp/w/b.json --bs 128"},
                          {"name": "bench_resnet18_bf16_channels_last", "status": "passed", "command": "x"}],
               "epoch": None, "preset_sizing": None}
    lines = gpu_check.markdown_table(summary).splitlines()
    assert lines[0] == ("Measured by `python3 benchmarks/gpu_check.py .gpu_data /out` on 2026-12-05T00:00:00+00:00: "
                        "NVIDIA H200, torch 2.11.0+cu130, CUDA 13.0; bf16 matrix peak 800 TFLOP/s.")
    # 62.2 / 800 = 7.8% (fp32 rows are measured against the bf16 peak too); 4000 / 250 = 16x the plain fp32 loop
    assert lines[4:7] == [
        "| DGAD, resnet18 ← wideresnet34_10, bs 128, K = 10 | ours fp32 | 1000 | 128.0 (1.0 / 90.0 / 20.0 / 17.0) "
        "| 62.2 | 62.2 | 7.8% | 4.00× |",
        "|  | plain fp32 | 250 | 512.0 (40.0 / 360.0 / 80.0 / 32.0) | 62.2 | 15.6 | 1.9% |  |",
        "| DGAD, resnet18 ← wideresnet34_10, bs 128, K = 10, `--channels_last` | ours bf16 | 4000 | 32.0 "
        "(0.5 / 20.0 / 6.0 / 5.5) | 62.2 | 249 | 31.1% | 16.00× |"]
    assert "- bench_resnet18_fp32: `python3 bench.py --method DGAD --bs 128`" in lines


def test_junit_outcomes_counts_each_test_and_keeps_each_failures_first_line(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text('<testsuites><testsuite name="pytest">'
                    '<testcase classname="tests.test_gpu" name="test_a"/>'
                    '<testcase classname="tests.test_gpu" name="test_b"><failure message="assert 1 == 2&#10;more">'
                    'trace</failure></testcase>'
                    '<testcase classname="tests.test_gpu" name="test_c"><skipped message="needs a CUDA GPU"/>'
                    '</testcase>'
                    '<testcase classname="tests.test_gpu" name="test_d"><error message="fixture broke"/></testcase>'
                    '</testsuite></testsuites>')
    outcomes = gpu_check.junit_outcomes(str(path))
    assert outcomes["counts"] == {"passed": 1, "failed": 1, "error": 1, "skipped": 1}
    assert outcomes["tests"]["tests.test_gpu::test_c"] == "skipped"
    assert outcomes["failures"] == {"tests.test_gpu::test_b": "assert 1 == 2",
                                    "tests.test_gpu::test_d": "fixture broke"}


def test_epoch_figures_split_the_evaluation_from_the_training(tmp_path):
    (tmp_path / "results.csv").write_text("epoch,epoch_seconds,images_per_second,train_loss\n1,60.0,1000.0,2.1\n")
    (tmp_path / "config.json").write_text(json.dumps({"train_images": 50000, "test_images": 10000,
                                                      "device": "cuda:0 (NVIDIA H200)", "precision": "bf16",
                                                      "channels_last": True}))
    figures = gpu_check.epoch_figures(str(tmp_path))
    assert figures["seconds_per_epoch_training_only"] == 50.0 and figures["evaluation_seconds"] == 10.0
    assert figures["seconds_per_epoch_with_evaluation"] == 60.0 and figures["device"] == "cuda:0 (NVIDIA H200)"


def test_a_log_is_cut_to_its_end_under_the_lease_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "LOG_LIMIT", 10)
    path = tmp_path / "log"
    path.write_bytes(b"0123456789abcdefghij")
    gpu_check.keep_under_limit(str(path))
    assert path.read_bytes().endswith(b"\nabcdefghij") and path.read_bytes().startswith(b"[earlier output cut")


@pytest.mark.parametrize("args, needle", [
    (["{missing}", "{out}"], "is not a folder"),
    (["{empty}", "{out}"], "holds neither cifar-10-batches-py/ nor cifar10-jpeg.tar.gz"),
    (["{packed}", "{out}", "--stages", "gpu_tier,warp"], "--stages warp: no such stage"),
    (["{packed}", "{out}", "--budget", "0"], "--budget must be > 0"),
    (["{packed}", "{file}/out"], "cannot create OUT_DIR"),
    (["{packed}", "{out}", "--fast"], "unrecognized arguments: --fast"),
])
def test_input_errors_are_one_line(tmp_path, capsys, args, needle):
    (tmp_path / "empty").mkdir()
    (tmp_path / "packed").mkdir()
    for name in ("prepare.py", "cifar10-jpeg.tar.gz"):
        (tmp_path / "packed" / name).write_text("")
    (tmp_path / "file").write_text("")
    places = {k: str(tmp_path / k) for k in ("missing", "empty", "packed", "out", "file")}
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main([a.format(**places) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "out").exists()

