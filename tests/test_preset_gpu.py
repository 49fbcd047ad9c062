"""The cifar10-gpu preset (issue 24), planned and run without a GPU: its dry run lists exactly the jobs of its table
(teacher, its evaluation, six students, their evaluations, the report) with the settings the sizing in
docs/reproducing.md assumes; a teacher's `evaluate` key is checked; the device command documented for one H200
fits the device tool and copies files the report really writes; and a shrunken copy of the preset (same structure,
tiny subsets, one epoch, no AutoAttack or CW-L2) runs end to end through the local launcher."""
import json
import os
import re

import pytest

from helpers import REPO
from pipeline.cli import main as reproduce
from pipeline.plan import Plan, training_switches
from pipeline.presets import load_preset
from test_reproduce import commands, dry_run, preset_file

PRESET = os.path.join(REPO, "presets", "cifar10-gpu.json")
METHODS = ["Natural", "PGDAT", "ARD", "RSLAD", "AdaAD", "DGAD"]
DISTILLED = ["ARD", "RSLAD", "AdaAD", "DGAD"]
DEVICE_SECTION = "## `cifar10-gpu` on one H200"


def job_names(out):
    return [re.match(r"\[(?:todo|done)\] (.+?): ", line).group(1) for line in out.splitlines()
            if line.startswith(("[todo] ", "[done] "))]


def test_the_gpu_preset_lists_exactly_its_jobs(capsys, tmp_path):
    root = str(tmp_path / "gpu")
    data = str(tmp_path / "data")
    out = dry_run(capsys, "--preset", "cifar10-gpu", "--root", root, "--data_dir", data)
    assert job_names(out) == (["train teacher"] + [f"train {m} seed 0" for m in METHODS] + ["evaluate teacher"]
                              + [f"evaluate {m} seed 0" for m in METHODS] + ["report"])
    assert out.count("[todo]") == 15 and "[done]" not in out
    train = [c for c in commands(out) if c.startswith("main.py")]
    assert train[0] == (f"main.py --dataset CIFAR10 --model resnet18 --method PGDAT --seed 0 --data_dir {data} "
                        f"--save_dir {root}/teacher --recipe dgad-paper --epochs 8 --precision fp32 --resume")
    teacher = f"--teacher_model resnet18 --teacher_path {root}/teacher/best_PGD10_acc_model.pth "
    for method, command in zip(METHODS, train[1:]):
        assert command == (f"main.py --dataset CIFAR10 --model wideresnet16_2 --method {method} --seed 0 --data_dir "
                           f"{data} --save_dir {root}/{method}/seed0 {teacher if method in DISTILLED else ''}"
                           f"--recipe dgad-paper --epochs 2 --precision fp32 --resume")
    evaluate = [c for c in commands(out) if c.startswith("main_eval.py")]
    assert len(evaluate) == 14  # teacher and six students, two evaluations each
    checkpoints = [f"{root}/teacher/best_PGD10_acc_model.pth", f"{root}/Natural/seed0/best_clean_acc_model.pth"] + \
        [f"{root}/{m}/seed0/best_PGD10_acc_model.pth" for m in METHODS[1:]]
    for i, (checkpoint, method) in enumerate(zip(checkpoints, ["PGDAT"] + METHODS)):
        model = "resnet18" if i == 0 else "wideresnet16_2"
        labels = f"--method {method}" + (" --teacher_model resnet18" if method in DISTILLED and i else "")
        start = f"main_eval.py --dataset CIFAR10 --model {model} --model_path {checkpoint} --data_dir {data} "
        assert evaluate[2 * i] == (start + f"--protocol paper --attacks natural,fgsm,pgd10,cw_l2,aa --eps 8 --n_ex 1000 "
                                           f"{labels}")
        assert evaluate[2 * i + 1] == (start + f"--protocol standard --attacks natural,pgd20 --eps 2,4,8,12,16 "
                                               f"--n_ex 1000 {labels}")
    report = [c for c in commands(out) if c.startswith("main_report.py")]
    runs = " ".join([f"{root}/teacher"] + [f"{root}/{m}/seed0" for m in METHODS])
    assert report == [f"main_report.py {runs} --out {root}/report --title cifar10-gpu"]


def test_the_gpu_preset_trains_what_its_sizing_assumes(tmp_path):
    """docs/reproducing.md sizes the run from these settings: change one, and size it again."""
    plan = Plan(load_preset("cifar10-gpu", training_switches()), str(tmp_path), str(tmp_path / "data"))
    teacher = plan.configs["train teacher"]
    assert (teacher.model, teacher.method, teacher.epochs, teacher.milestones) == ("resnet18", "PGDAT", 8, (4, 6))
    for config in plan.configs.values():  # the whole training and test sets, PGD-10 at 8/255, batches of 128, fp32
        assert (config.train_subset, config.test_subset, config.num_steps, config.epsilon, config.bs) == (0, 0, 10,
                                                                                                         8.0, 128)
        assert config.precision == "fp32" and config.lr_schedule == "piecewise" and config.recipe == "dgad-paper"
    students = [plan.configs[f"train {m} seed 0"] for m in METHODS]
    assert all((c.model, c.epochs, c.milestones) == ("wideresnet16_2", 2, (1, 2)) for c in students)
    assert [c.method for c in students] == METHODS


def test_a_preset_without_evaluate_does_not_evaluate_its_teacher(capsys, tmp_path):
    out = dry_run(capsys, "--preset", "cifar10-mini", "--root", str(tmp_path / "mini"))
    assert "evaluate teacher" not in out and "train teacher" in out
    assert not any(c.startswith("main_report.py") and "/teacher " in c for c in commands(out))


@pytest.mark.parametrize("teacher, expected", [
    ({"model": "wideresnet10_1", "train": {"method": "PGDAT"}, "evaluate": 1}, "'evaluate' is true or false, not 1"),
    ({"model": "wideresnet10_1", "train": {"method": "PGDAT"}, "evaluate": "yes"}, "'evaluate' is true or false"),
    ({"model": "wideresnet10_1", "path": "t.pth", "evaluate": True}, "'evaluate' applies to a teacher trained here"),
    ({"model": "wideresnet10_1", "train": {"method": "PGDAT"}, "evaluated": True}, "unknown keys evaluated"),
])
def test_a_bad_teacher_evaluate_is_a_one_line_error(tmp_path, capsys, teacher, expected):
    with pytest.raises(SystemExit) as exit_info:
        reproduce(["--preset", preset_file(tmp_path, methods=["RSLAD"], teacher=teacher), "--dry_run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def device_command():
    """The command docs/reproducing.md gives for the device tool: the first fenced block after the section's
    'The command' line."""
    with open(os.path.join(REPO, "docs", "reproducing.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index(DEVICE_SECTION):]
    block = re.search(r"The command[^\n]*\n+```bash\n(.*?)\n```", section, re.S)
    return block.group(1)


def copied_report_files(command):
    return re.findall(r"\$R/report/(\S+)", command)


def test_the_documented_device_command_fits_the_device_tool():
    command = device_command()
    assert len(command) <= 2000  # the device tool's limit on one command
    assert "--preset cifar10-gpu" in command and "PYTHONPATH=$PWD/.gpu_site" in command \
        and ".gpu_data/prepare.py" in command
    # reproduce.py is stopped (as Ctrl-C stops it) and, at worst, killed before the device tool's 600 s are out.
    kill, stop = map(int, re.search(r"timeout -s INT -k (\d+) (\d+) python3 reproduce.py", command).groups())
    assert stop + kill + 60 <= 600
    # At most 8 files come back from $OUT: the report's files it copies, and one archive of the logs.
    copied = copied_report_files(command)
    assert {"tables.md", "tables.csv"} <= set(copied) and len(copied) + 1 <= 8
    assert sum(name.endswith(".png") for name in copied) == 2


SHRUNKEN_STUDENT, SHRUNKEN_TEACHER = "wideresnet10_1", "wideresnet10_2"


def shrunken_preset():
    """cifar10-gpu with its structure kept (methods, a teacher trained and evaluated, flags, protocols, radii) and
    its cost cut: the smallest networks, 16 training and 8 test images, one epoch of one-step attacks, no AutoAttack
    or CW-L2 (minutes each on a CPU)."""
    with open(PRESET, encoding="utf-8") as f:
        preset = json.load(f)
    preset["student"], preset["teacher"]["model"] = SHRUNKEN_STUDENT, SHRUNKEN_TEACHER
    preset["train"].update(epochs=1, train_subset=16, test_subset=8, bs=8, num_steps=1)
    preset["teacher"]["train"]["epochs"] = 1
    for evaluation in preset["evaluate"]:
        evaluation["attacks"] = [a for a in evaluation["attacks"] if a not in ("aa", "cw_l2")]
        evaluation["n_ex"] = 8
    return preset


def test_a_shrunken_gpu_preset_runs_end_to_end_through_the_local_launcher(real_data_dir, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = tmp_path / "cifar10-gpu-shrunken.json"
    path.write_text(json.dumps(shrunken_preset()))
    root = tmp_path / "root"
    args = ["--preset", str(path), "--root", str(root), "--data_dir", real_data_dir, "--workers", "2", "--poll", "0.2"]
    assert reproduce(args) == 0
    out = capsys.readouterr().out
    names = ["train teacher", "evaluate teacher", "report"] + [f"{stage} {m} seed 0" for m in METHODS
                                                               for stage in ("train", "evaluate")]
    for name in names:
        assert f"finished {name}" in out
    assert "15 done" in out
    for method in DISTILLED:  # they distil from the teacher's checkpoint, which is evaluated as they are
        assert out.index("finished train teacher") < out.index(f"started train {method} seed 0")
        with open(root / method / "seed0" / "config.json") as f:
            assert json.load(f)["teacher_path"] == str(root / "teacher" / "best_PGD10_acc_model.pth")
    with open(root / "teacher" / "best_PGD10_acc_model.pth.eval.standard.json") as f:
        teacher = json.load(f)
    assert teacher["model"] == SHRUNKEN_TEACHER and teacher["eps_255"] == [2, 4, 8, 12, 16]
    report = root / "report"
    with open(report / "tables.md") as f:
        tables = f.read()
    # The teacher is a row of its own table (its model's); the two PGD-AT rows are told apart by their model.
    assert f"**CIFAR10, {SHRUNKEN_TEACHER} " in tables and f"| PGDAT (model {SHRUNKEN_TEACHER}) |" in tables
    assert all(f"| {m} |" in tables for m in METHODS if m != "PGDAT")
    assert (report / "tables.csv").is_file()
    # What the documented device command copies to $OUT is what the report writes (here of smaller networks).
    for name in copied_report_files(device_command()):
        assert (report / name.replace("wideresnet16_2", SHRUNKEN_STUDENT)).is_file(), name

    assert reproduce(args) == 0  # again: everything is done
    assert "15 skipped (done)" in capsys.readouterr().out
