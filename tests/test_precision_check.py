"""benchmarks/precision_check.py, bf16 against fp32 for a GPU lease: the comparison by hand, its --tiny mode end to end
on the CPU from a packed CIFAR-10 (both runs share everything but the precision), a skipped run's evaluation, and its
input errors."""
import json
import os

import pytest

from benchmarks import precision_check
from test_gpu_check import assert_fits_a_lease, packed_cifar10


def runs(fp32_pgd20, bf16_pgd20, n=2000):
    return {"fp32": {"clean": 80.0, "pgd20": fp32_pgd20, "n_examples": n},
            "bf16": {"clean": 79.0, "pgd20": bf16_pgd20, "n_examples": n}}


def test_the_comparison_is_bf16_minus_fp32_with_the_standard_error_of_two_runs():
    comparison = precision_check.compare(runs(40.0, 39.5))
    # sqrt(.40 * .60 / 2000) = 1.0954 points, sqrt(.395 * .605 / 2000) = 1.0931: together sqrt(1.0954^2 + 1.0931^2)
    assert comparison["pgd20_difference"] == -0.5 and comparison["clean_difference"] == -1.0
    assert comparison["standard_error"] == 1.55 and comparison["n_examples"] == 2000
    assert comparison["within_tolerance"] is True and comparison["beyond_two_standard_errors"] is False
    assert comparison["verdict"] == "bf16 keeps PGD-20 within 1 point of fp32 (-0.50)"


@pytest.mark.parametrize("bf16, within, resolved", [(41.0, True, False), (38.9, False, False), (35.0, False, True),
                                                    (46.0, False, True)])
def test_one_point_either_way_is_the_line(bf16, within, resolved):
    comparison = precision_check.compare(runs(40.0, bf16))
    assert comparison["within_tolerance"] is within and comparison["beyond_two_standard_errors"] is resolved
    assert ("keeps PGD-20 within 1 point" in comparison["verdict"]) is within


def test_no_comparison_until_both_runs_are_evaluated():
    assert precision_check.compare({"fp32": {"clean": 80.0, "pgd20": 40.0, "n_examples": 2000}}) is None
    assert precision_check.compare({"fp32": {"pgd20": 40.0}, "bf16": {"seconds_per_epoch": [1.0]}}) is None


def test_the_full_scale_is_the_issues_comparison():
    full = precision_check.FULL
    assert full.model == "resnet18" and full.n_ex == 2000 and full.cpu_only is False
    assert "--test_subset" in full.train_flags and "--seed" in full.train_flags
    assert [s.name for s in precision_check.PrecisionCheck.stages_of(full)] == [
        "environment", "data", "train_fp32", "train_bf16", "eval_fp32", "eval_bf16"]
    assert full.budget <= 240  # what a lease has left after gpu_check's 8 minutes and the machine's start


@pytest.mark.slow  # subprocesses: two trainings and two evaluations, on the CPU
def test_tiny_mode_trains_both_precisions_alike_and_compares_them(tmp_path):
    from helpers import run_script
    data = packed_cifar10(tmp_path / "data")
    out, work = tmp_path / "out", tmp_path / "work"
    result = run_script(os.path.join("benchmarks", "precision_check.py"), data, str(out), "--tiny", "--epochs", "2",
                        "--work_dir", str(work), timeout=600)
    summary = json.loads((out / "summary.json").read_text())
    assert result.returncode == 0, (summary["stages"], result.stdout[-3000:])
    assert {s["name"]: s["status"] for s in summary["stages"]} == {
        name: "passed" for name in ("environment", "data", "train_fp32", "train_bf16", "eval_fp32", "eval_bf16")}
    configs = {p: json.loads((work / f"pgdat_{p}" / "config.json").read_text()) for p in ("fp32", "bf16")}
    assert configs["fp32"]["precision"] == "fp32" and configs["bf16"]["precision"] == "bf16"
    differing = {key for key in set(configs["fp32"]) | set(configs["bf16"])
                 if configs["fp32"].get(key) != configs["bf16"].get(key)}
    assert differing == {"precision", "save_dir"}, differing  # the same seed, recipe, epochs, data and model
    for precision, run in summary["runs"].items():
        # --n_ex 32 of a test split of 20 images: all 20
        assert len(run["seconds_per_epoch"]) == 2 and run["n_examples"] == 20 and run["precision"] == precision
        assert run["checkpoint"]["path"].endswith(os.path.join(f"pgdat_{precision}", "last.pth"))
        assert 0 <= run["pgd20"] <= run["clean"] <= 100
    comparison = summary["comparison"]
    assert comparison["pgd20_difference"] == round(summary["runs"]["bf16"]["pgd20"] - summary["runs"]["fp32"]["pgd20"],
                                                   2)
    assert comparison["verdict"] in result.stdout and "PGD-AT bf16, epochs 2" in result.stdout
    assert sorted(os.listdir(out)) == ["eval.log", "precision_check.log", "summary.json", "train.log"]
    assert_fits_a_lease(out)


@pytest.mark.slow  # subprocesses
def test_a_run_left_out_leaves_its_evaluation_and_the_comparison_out(tmp_path):
    from helpers import run_script
    data = packed_cifar10(tmp_path / "data", 1, 1)
    out = tmp_path / "out"
    result = run_script(os.path.join("benchmarks", "precision_check.py"), data, str(out), "--tiny", "--stages",
                        "train_fp32,eval_fp32,eval_bf16", "--work_dir", str(tmp_path / "w"), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    stages = {s["name"]: s for s in summary["stages"]}
    assert stages["train_bf16"]["reason"] == "not in --stages" and stages["eval_fp32"]["status"] == "passed"
    assert stages["eval_bf16"] == {"name": "eval_bf16", "status": "skipped", "reason": "train_bf16 did not pass"}
    assert summary["comparison"] is None and set(summary["runs"]) == {"fp32"}


@pytest.mark.parametrize("args, needle", [
    (["{packed}", "{out}", "--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["{packed}", "{out}", "--stages", "train_fp16"], "--stages train_fp16: no such stage"),
    (["{missing}", "{out}"], "is not a folder"),
])
def test_input_errors_are_one_line(tmp_path, capsys, args, needle):
    (tmp_path / "packed").mkdir()
    for name in ("prepare.py", "cifar10-jpeg.tar.gz"):
        (tmp_path / "packed" / name).write_text("")
    places = {k: str(tmp_path / k) for k in ("missing", "packed", "out")}
    with pytest.raises(SystemExit) as exit_info:
        precision_check.main([a.format(**places) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "out").exists()
