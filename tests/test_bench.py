"""bench.py end to end on a tiny CPU configuration, its input errors, and a training run with
--precision bf16 --channels_last through the engine. Nothing here is timed."""
import csv
import json
import math
import os

import pytest
import torch

from runtime.checkpoints import atomic_save
from models import build_model
from helpers import run_script

TINY = ["--model", "wideresnet10_1", "--teacher_model", "wideresnet10_1", "--bs", "4", "--steps", "2",
        "--warmup", "1", "--num_steps", "2"]
PHASES = {"data", "attack", "teacher", "update"}


def finite_positive(value):
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.mark.slow  # a subprocess
def test_bench_json_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    result = run_script("bench.py", *TINY, "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["device"] == "cpu"
    assert report["config"]["method"] == "DGAD" and report["config"]["data"] == "synthetic"
    assert set(report["paths"]) == {"ours", "plain"}
    assert finite_positive(report["peak_tflops"]["fp32"])
    for name, path in report["paths"].items():
        assert path["precision"] == "fp32"
        for key in ("images_per_second", "ms_per_step", "achieved_tflops", "fraction_of_peak", "epoch_seconds"):
            assert finite_positive(path[key]), (name, key)
        assert set(path["ms_per_step_by_phase"]) == PHASES
        assert sum(path["ms_per_step_by_phase"].values()) <= path["ms_per_step"] * 1.001
        assert path["ms_per_step_by_phase"]["attack"] > 0 and path["ms_per_step_by_phase"]["update"] > 0
        assert path["peak_memory_gib"] is None  # CPU: not measured
        assert math.isclose(path["images_per_second"] * path["ms_per_step"], 4 * 1000, rel_tol=1e-9)
        assert math.isclose(path["epoch_seconds"], 50_000 / path["images_per_second"], rel_tol=1e-9)
    ours, plain = report["paths"]["ours"], report["paths"]["plain"]
    # DGAD's released loop does the same arithmetic as ours (input gradients only, T(x) once):
    # the paths differ in data, syncs and layout, not FLOPs (per-step counts: test_fast_path.py).
    assert plain["flops_per_image"] == ours["flops_per_image"] > 0
    assert math.isclose(report["speedup"], ours["images_per_second"] / plain["images_per_second"], rel_tol=1e-9)
    assert "ours/plain" in result.stdout and "wrote" in result.stdout


@pytest.mark.slow  # a subprocess
def test_bench_method_without_teacher_and_bf16_without_plain(tmp_path):
    out = tmp_path / "b.json"
    result = run_script("bench.py", *TINY, "--method", "PGDAT", "--precision", "bf16", "--no_plain",
                        "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert set(report["paths"]) == {"ours"} and "speedup" not in report
    assert report["config"]["teacher_model"] is None
    assert report["paths"]["ours"]["precision"] == "bf16"
    assert set(report["peak_tflops"]) == {"fp32", "bf16"}
    assert report["paths"]["ours"]["ms_per_step_by_phase"]["teacher"] == 0.0


def test_bench_input_errors_are_one_line(tmp_path, capsys):
    import bench
    for args, needle in ((["--json", str(tmp_path / "missing" / "b.json")], "--json"),
                         (["--steps", "0"], "--steps"),
                         (["--warmup", "-1"], "--warmup"),
                         (["--teacher_path", str(tmp_path / "none.pth")], "--teacher_path"),
                         (["--method", "Nope"], "--method")):
        with pytest.raises(SystemExit) as exit_info:
            bench.main([*TINY, *args])
        assert exit_info.value.code == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (args, err)
    assert not (tmp_path / "missing").exists()


def test_training_with_bf16_and_channels_last(tmp_path, real_data_dir):
    teacher = tmp_path / "teacher.pth"
    torch.manual_seed(0)
    atomic_save({"net": build_model("wideresnet10_1", 10).state_dict()}, str(teacher))
    save_dir = tmp_path / "run"
    result = run_script("main.py", "--model", "wideresnet10_1", "--teacher_model", "wideresnet10_1",
                        "--teacher_path", str(teacher), "--data_dir", real_data_dir, "--train_subset", "32",
                        "--test_subset", "16", "--epochs", "1", "--bs", "16", "--num_steps", "2",
                        "--precision", "bf16", "--channels_last", "--save_dir", str(save_dir))
    assert result.returncode == 0, result.stderr
    config = json.loads((save_dir / "config.json").read_text())
    assert config["precision"] == "bf16" and config["channels_last"] is True and config["compile"] is False
    with open(save_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["train_loss"])) and float(rows[0]["train_loss"]) > 0
    # The checkpoint loads into a plain NCHW model (channels_last changes strides, not keys).
    from runtime.checkpoints import load_weights
    load_weights(build_model("wideresnet10_1", 10), str(save_dir / "last.pth"))
    assert os.path.exists(save_dir / "best_PGD10_acc_model.pth")
