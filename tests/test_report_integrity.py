"""Evaluation reports bound to their checkpoint, and main_report.py on damaged or foreign inputs: main_eval.py
never replaces another checkpoint's report nor merges results of other settings; main_report.py counts only the
reports of each run's checkpoint, keeps runs of different teachers apart, and names every input it cannot read
(one warning line each, the count under the tables) instead of a traceback or a silent drop."""
import argparse
import builtins
import hashlib
import json
import os

import pytest
import torch

from evaluation import cli as eval_cli
from evaluation.report import report_to_extend
from methods import method_names
from models import build_model
from reporting.cli import main as report_main
from reporting.runs import find_runs, group_runs
from reporting.tables import build_tables
from runtime.errors import UserError
from test_report import full, write_run

CIFAR = {"dataset": "CIFAR10", "datasets": ["CIFAR10", "CIFAR100"]}
MODEL = "wideresnet10_1"
REPORT = "best_PGD10_acc_model.pth.eval.paper.json"


def parse(*args):
    return eval_cli.build_parser(CIFAR, "test").parse_args(["--model_path", "nowhere/x.pth", *args])


def one_error(capsys, run, *args) -> str:
    """The one `error:` line of a command that must exit with status 2 and no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        run(*args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def report(*args):
    return report_main(list(args))


# -- check_settings: the argument checks alone, without the file system ------------------------------------

def test_check_settings_needs_no_file(monkeypatch):
    def no_files(*args, **kwargs):
        raise AssertionError("check_settings touched the file system")
    cfg = parse("--eps", "2,8", "--attacks", "natural,pgd10", "--out", "no/such/r.json", "--seed", str(2**64 - 1))
    with monkeypatch.context() as patch:  # undone before pytest itself writes its files
        for module, name in ((builtins, "open"), (os.path, "exists"), (os.path, "isdir"), (os, "access"),
                             (os.path, "isfile"), (os, "stat"), (os, "listdir")):
            patch.setattr(module, name, no_files)
        eval_cli.check_settings(cfg)
    assert cfg.radii == (2.0, 8.0) and cfg.attack_names == ("natural", "pgd10") and cfg.protocol_spec.name == "paper"
    assert cfg.out == "no/such/r.json"  # the file-system part (resolve) is not done


@pytest.mark.parametrize("args, expected", [
    (["--eps", "100000"], "--eps 100000 is above 255"),
    (["--eps", "8,256"], "--eps 256 is above 255"),
    (["--eps", "inf"], "--eps must be finite"),
    (["--eps", "nan"], "--eps must be finite"),
    (["--seed", "-1"], "--seed must be an integer in 0..2**64-1"),
    (["--seed", str(2**64)], "--seed must be an integer in 0..2**64-1"),
    (["--coeff", "nan"], "--coeff must be a finite number"),
    (["--bs", "0"], "--bs must be >= 1"),
    (["--steps", "10"], "--steps is ignored"),
    (["--attacks", "pgd20"], "belongs to --protocol standard"),
])
def test_check_settings_refuses_with_one_line(args, expected):
    with pytest.raises(UserError) as error:
        eval_cli.check_settings(parse(*args))
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_the_largest_radius_and_seed_are_accepted():
    assert eval_cli.check_settings(parse("--eps", "255", "--seed", "0")).radii == (255.0,)
    torch.manual_seed(2**64 - 1)  # the bound is what torch takes


def test_main_eval_refuses_absurd_radii_and_seeds_before_reading_anything(tmp_path, capsys):
    def evaluate(*args):
        return eval_cli.main(CIFAR, "test", ["--model", MODEL, "--data_dir", str(tmp_path / "no_data"),
                                             "--model_path", str(tmp_path / "no.pth"), *args])
    assert "above 255" in one_error(capsys, evaluate, "--eps", "100000")
    assert "--seed must be" in one_error(capsys, evaluate, "--seed", "-5")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("eps", ["nan", "inf", "-inf", "256", "0.03"])
def test_main_report_refuses_absurd_radii(tmp_path, capsys, eps):
    write_run(str(tmp_path / "runs"), "PGDAT", 0, full(80, 55, 50, 49, 47))
    error = one_error(capsys, report, str(tmp_path / "runs"), f"--eps={eps}", "--out", str(tmp_path / "o"))
    assert "--eps" in error
    assert not os.path.exists(tmp_path / "o")


# -- main_eval.py: which report --out may extend or replace ----------------------------------------------

def report_of(path, sha256, **changes):
    results = {"natural": {"accuracy": 50.0, "params": {}}, "pgd10": {"accuracy": 30.0, "params": {"seed": 0}},
               "cw_l2": {"accuracy": 40.0, "params": {"c": 0.1, "batch_size": 200}}}
    report = {"format": "advkd-eval/2", "dataset": "CIFAR10", "model": MODEL, "protocol": "paper", "n_examples": 10,
              "seed": 0, "batch_size": 200, "checkpoint": {"path": os.path.abspath(path), "sha256": sha256},
              "radii": {"8": {"eps_255": 8, "results": results, "variance_gap": None}}}
    report.update(changes)
    return report


def extend(report, model_path, attacks=("fgsm",), radii=(8.0,), seed=0, bs=200, coeff=0.1, sha256="a" * 64):
    cfg = argparse.Namespace(existing_report=report, out="r.json", model_path=model_path, attack_names=attacks,
                             radii=radii, seed=seed, bs=bs, coeff=coeff)
    identity = {"dataset": "CIFAR10", "model": MODEL, "protocol": "paper", "n_examples": 10}
    return report_to_extend(cfg, identity, sha256)


def test_a_report_of_another_checkpoint_is_never_replaced_without_overwrite(tmp_path, capsys):
    mine, other = str(tmp_path / "mine.pth"), str(tmp_path / "other.pth")
    with pytest.raises(UserError, match="is the report of another checkpoint") as error:
        extend(report_of(other, "b" * 64), mine)
    assert other in str(error.value) and "--overwrite" in str(error.value)
    with pytest.raises(UserError, match="another checkpoint, a checkpoint it does not name"):
        extend({k: v for k, v in report_of(mine, "b" * 64).items() if k != "checkpoint"}, mine)
    with pytest.raises(UserError, match="another checkpoint"):  # the older format too
        extend({"format": "advkd-eval/1", "checkpoint": {"path": other, "sha256": "b" * 64}}, mine)
    # The same file with another sha256: an earlier version of it, replaced.
    assert extend(report_of(mine, "b" * 64), mine) == {}
    assert "describes an earlier version" in capsys.readouterr().out
    # The same sha256 elsewhere (the run folder moved): the same checkpoint, extended.
    report = report_of(other, "a" * 64)
    assert extend(report, mine) is report


@pytest.mark.parametrize("change, expected", [
    ({"radii": [1, 2]}, '"radii" is [1, 2], not an object'),
    ({"radii": {"8": {"eps_255": 8, "results": [1]}}}, "results is [1], not an object"),
    ({"radii": {"8": {"eps_255": 8, "results": {"pgd10": {"accuracy": "50"}}}}}, 'accuracy is "50", not a percentage'),
    ({"radii": {"x": {"eps_255": 8, "results": {}}}}, "not the radius x"),
    ({"seed": "0"}, '"seed" is "0", not an integer'),
])
def test_a_damaged_report_of_this_checkpoint_is_refused_not_crashed_on(tmp_path, change, expected):
    mine = str(tmp_path / "mine.pth")
    with pytest.raises(UserError, match="is a damaged report") as error:
        extend(report_of(mine, "a" * 64, **change), mine)
    assert expected in str(error.value) and "--overwrite" in str(error.value)


def test_results_of_other_settings_are_not_merged_into_one_report(tmp_path):
    mine = str(tmp_path / "mine.pth")
    for kwargs, expected in [({"seed": 1}, "--seed 0 (now 1)"), ({"bs": 50}, "--bs 200 (now 50)"),
                             ({"attacks": ("cw_l2",), "radii": (4.0,), "coeff": 1.0}, "--coeff 0.1 (now 1)")]:
        with pytest.raises(UserError, match="one report holds one setting") as error:
            extend(report_of(mine, "a" * 64), mine, **kwargs)
        assert expected in str(error.value) and "--overwrite" in str(error.value)
    # Nothing kept (every result run again), or --coeff where no CW-L2 runs: nothing is mixed.
    assert extend(report_of(mine, "a" * 64), mine, attacks=("natural", "pgd10", "cw_l2"), seed=3, bs=7, coeff=2.0)
    assert extend(report_of(mine, "a" * 64), mine, attacks=("fgsm",), coeff=2.0)


@pytest.fixture
def checkpoints(tmp_path):
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = tmp_path / f"run{seed}" / "best_PGD10_acc_model.pth"
        path.parent.mkdir()
        torch.save({"net": build_model(MODEL, 10).state_dict(), "arch": MODEL}, path)
        paths.append(str(path))
    return paths


def test_main_eval_leaves_another_checkpoints_report_and_other_settings_untouched(real_data_dir, checkpoints,
                                                                                  capsys):
    def evaluate(*args):
        return eval_cli.main(CIFAR, "test", ["--model", MODEL, "--data_dir", real_data_dir, "--n_ex", "4", *args])
    first, second = checkpoints
    out = first + ".eval.paper.json"
    assert evaluate("--model_path", first, "--attacks", "natural") == 0
    with open(out, "rb") as f:
        before = f.read()
    error = one_error(capsys, evaluate, "--model_path", second, "--attacks", "natural", "--out", out)
    assert "is the report of another checkpoint" in error and first in error
    error = one_error(capsys, evaluate, "--model_path", first, "--attacks", "pgd10", "--seed", "1")
    assert "--seed 0 (now 1)" in error
    with open(out, "rb") as f:
        assert f.read() == before
    assert evaluate("--model_path", second, "--attacks", "natural", "--out", out, "--overwrite") == 0
    with open(out) as f:
        assert json.load(f)["checkpoint"]["path"] == os.path.abspath(second)


# -- main_report.py: a run counts only its own reports ------------------------------------------------------

def report_run(args, capsys, tmp_path):
    """main_report.py's exit status, tables.md, and its stderr."""
    out = str(tmp_path / "out")
    assert report_main([*args, "--out", out, "--no_figures"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    with open(os.path.join(out, "tables.md")) as f:
        return f.read(), err


def test_a_report_of_another_checkpoint_in_a_run_folder_is_named_and_left_out(tmp_path, capsys):
    root = str(tmp_path / "runs")
    mine = write_run(root, "PGDAT", 0, full(80, 55, 50, 49, 47))
    other = write_run(root, "PGDAT", 1, full(10, 5, 5, 4, 4))
    os.replace(os.path.join(other, REPORT), os.path.join(mine, "best_PGD10_acc_model.pth.eval.paper.copy.json"))
    table, err = report_run([mine], capsys, tmp_path)
    assert "| PGDAT | 80.00 (1) |" in table  # the copy is not averaged in
    assert "1 input left out" in table and "paper.copy.json" in table
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "paper.copy.json: is the report of another checkpoint" in warnings[0]
    assert os.path.join(other, "best_PGD10_acc_model.pth") in warnings[0]


def test_a_report_of_an_earlier_version_or_a_missing_checkpoint_is_left_out(tmp_path, capsys):
    root = str(tmp_path / "runs")
    stale = write_run(root, "PGDAT", 0, full(80, 55, 50, 49, 47))
    with open(os.path.join(stale, "best_PGD10_acc_model.pth"), "wb") as f:
        f.write(b"retrained since")
    gone = write_run(root, "PGDAT", 1, full(82, 55, 50, 49, 47))
    os.unlink(os.path.join(gone, "best_PGD10_acc_model.pth"))
    kept = write_run(root, "PGDAT", 2, full(84, 55, 50, 49, 47))
    table, err = report_run([root], capsys, tmp_path)
    assert "| PGDAT | 84.00 (1) |" in table and "2 inputs left out" in table
    assert f"{os.path.join(stale, REPORT)}: evaluates an earlier version" in err
    assert f"{os.path.join(gone, REPORT)}: cannot be checked against its checkpoint" in err
    assert kept not in err


def test_a_second_report_of_one_protocol_is_left_out_not_silently_dropped(tmp_path, capsys):
    folder = write_run(str(tmp_path / "runs"), "PGDAT", 0, full(80, 55, 50, 49, 47))
    with open(os.path.join(folder, REPORT)) as f:
        report = json.load(f)
    report["radii"]["8"]["results"]["natural"]["accuracy"] = 10.0
    with open(os.path.join(folder, "best_PGD10_acc_model.pth.eval.paper.aaa.json"), "w") as f:
        json.dump(report, f)
    table, err = report_run([folder], capsys, tmp_path)
    assert "| PGDAT | 80.00 (1) |" in table  # the default name is the one taken
    assert "paper.aaa.json: a second report of the paper protocol" in err and "1 input left out" in table


# -- the teacher is part of a row's identity ------------------------------------------------------------------

def teacher_run(root, name, seed, sha, natural, teacher_path, **config):
    folder = write_run(root, "DGAD", seed, full(natural, 60, 52, 51, 50),
                       config=dict(teacher_sha256=sha, teacher_path=teacher_path, **config))
    os.rename(folder, os.path.join(root, f"{name}{seed}"))


def test_runs_of_different_teachers_are_different_rows_labelled_by_teacher(tmp_path):
    root = str(tmp_path / "runs")
    teacher_run(root, "a", 0, "1" * 64, 80.0, "teachers/a.pth")
    teacher_run(root, "a", 1, "1" * 64, 82.0, "elsewhere/a.pth")  # the same file, moved: one row
    teacher_run(root, "b", 0, "2" * 64, 90.0, "teachers/b.pth")
    groups = group_runs(find_runs([root]).runs, method_names())
    assert sorted((g.label, len(g.runs)) for g in groups) == [("DGAD (teacher a.pth)", 2), ("DGAD (teacher b.pth)", 1)]
    (table,) = build_tables(groups)
    assert sorted((row.label, row.cells["natural"].mean) for row in table.rows) == [
        ("DGAD (teacher a.pth)", 81.0), ("DGAD (teacher b.pth)", 90.0)]


def test_teachers_of_one_file_name_are_told_apart_by_their_sha256(tmp_path):
    root = str(tmp_path / "runs")
    teacher_run(root, "a", 0, "1a2b3c4d" + "0" * 56, 80.0, "t/wrn.pth")
    teacher_run(root, "b", 0, "9f8e7d6c" + "0" * 56, 90.0, "u/wrn.pth")
    teacher_run(root, "c", 0, "5" * 64, 70.0, "t/other.pth")
    labels = sorted(g.label for g in group_runs(find_runs([root]).runs, method_names()))
    assert labels == ["DGAD (teacher 1a2b3c4d)", "DGAD (teacher 9f8e7d6c)", "DGAD (teacher other.pth)"]


def test_runs_whose_second_teacher_differs_are_different_rows(tmp_path):
    root = str(tmp_path / "runs")
    teacher_run(root, "a", 0, "1" * 64, 80.0, "t/a.pth", teacher_st_sha256="3" * 64, teacher_st_path="t/nat1.pth")
    teacher_run(root, "b", 0, "1" * 64, 90.0, "t/a.pth", teacher_st_sha256="4" * 64, teacher_st_path="t/nat2.pth")
    labels = sorted(g.label for g in group_runs(find_runs([root]).runs, method_names()))
    assert labels == ["DGAD (natural teacher nat1.pth)", "DGAD (natural teacher nat2.pth)"]


# -- unreadable inputs are named --------------------------------------------------------------------------

def rewrite_json(folder, name, edit):
    path = os.path.join(folder, name)
    with open(path) as f:
        value = json.load(f)
    with open(path, "w") as f:
        json.dump(edit(value), f)


def set_result(attack, value):
    def edit(report):
        report["radii"]["8"]["results"][attack]["accuracy"] = value
        return report
    return edit


def without(key):
    return lambda value: {k: v for k, v in value.items() if k != key}


DAMAGE = {  # name: (file in the run folder, how it is damaged, what the warning says)
    "config truncated": ("config.json", b'{"method": "PGD', "not JSON, or truncated"),
    "config not UTF-8": ("config.json", b'{"method": "\xff\xfe"}', "not UTF-8 text"),
    "config a list": ("config.json", lambda c: [c], "not a JSON object"),
    "config no method": ("config.json", without("method"), '"method" is null, not a name'),
    "config seed text": ("config.json", lambda c: dict(c, seed="zero"), '"seed" is "zero", not an integer'),
    "history not UTF-8": ("results.csv", b"epoch,test_clean_acc\n1,\xff\n", "not UTF-8 text"),
    "history epoch text": ("results.csv", b"epoch,test_clean_acc\n1,40\nlast,50\n", "line 3: epoch 'last' is not"),
    "history empty": ("results.csv", b"", "empty: not even the header"),
    "history no epoch": ("results.csv", b"step,test_clean_acc\n1,40\n", 'no "epoch" column'),
    "report truncated": (REPORT, b'{"format": "advkd-eval/2", "radii": {', "not JSON, or truncated"),
    "report not UTF-8": (REPORT, b'{"format": "\xff"}', "not UTF-8 text"),
    "report a list": (REPORT, b"[]", "not a JSON object"),
    "report older format": (REPORT, lambda r: dict(r, format="advkd-eval/1"), "older than advkd-eval/2"),
    "radii a list": (REPORT, lambda r: dict(r, radii=[r["radii"]["8"]]), '"radii" is [{'),
    "results a list": (REPORT, lambda r: dict(r, radii={"8": dict(r["radii"]["8"], results=[])}), "results is []"),
    "accuracy text": (REPORT, set_result("pgd10", "50.0"), 'accuracy is "50.0", not a percentage'),
    "accuracy null": (REPORT, set_result("pgd10", None), "accuracy is null"),
    "accuracy NaN": (REPORT, set_result("pgd10", float("nan")), "accuracy is nan"),
    "accuracy bool": (REPORT, set_result("pgd10", True), "accuracy is true"),
    "accuracy 150": (REPORT, set_result("pgd10", 150), "accuracy is 150"),
    "no protocol": (REPORT, without("protocol"), '"protocol" is null'),
    "protocol a list": (REPORT, lambda r: dict(r, protocol=["paper"]), '"protocol" is ["paper"]'),
    "no checkpoint": (REPORT, without("checkpoint"), '"checkpoint" is null, not an object'),
    "mixed seeds": (REPORT, lambda r: dict(r, radii={"8": dict(r["radii"]["8"], results={
        "pgd10": {"accuracy": 50.0, "params": {"seed": 3}}})}), "made with seed 3, but the report says seed 0"),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_each_unreadable_input_is_named_in_one_line_and_counted(tmp_path, capsys, name):
    file, damage, expected = DAMAGE[name]
    root = str(tmp_path / "runs")
    write_run(root, "PGDAT", 0, full(80, 55, 50, 49, 47))
    damaged = write_run(root, "PGDAT", 1, full(10, 5, 5, 5, 5))
    if isinstance(damage, bytes):
        with open(os.path.join(damaged, file), "wb") as f:
            f.write(damage)
    else:
        rewrite_json(damaged, file, damage)
    out = str(tmp_path / "out")
    assert report_main([root, "--out", out]) == 0  # the figures read the history too
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "Traceback" not in captured.err, captured.err
    assert warnings[0].startswith(f"warning: {os.path.join(damaged, file)}: ") and expected in warnings[0]
    with open(os.path.join(out, "tables.md")) as f:
        table = f.read()
    assert "1 input left out" in table and "1 input left out" in captured.out
    if file == "results.csv":  # only the curves go: the report's numbers still count
        assert "| PGDAT | 45.00 ± 49.50 (2) |" in table
    else:
        assert "| PGDAT | 80.00 (1) |" in table


def test_nothing_readable_is_one_error_after_the_names(tmp_path, capsys):
    folder = write_run(str(tmp_path / "runs"), "PGDAT", 0, full(80, 55, 50, 49, 47))
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write("[")
    error = one_error(capsys, report, folder, "--out", str(tmp_path / "o"))
    assert "no readable run folder or evaluation report" in error and "1 input left out" in error


def test_a_damaged_report_given_by_name_is_left_out(tmp_path, capsys):
    root = str(tmp_path / "runs")
    good = write_run(root, "PGDAT", 0, full(80, 55, 50, 49, 47))
    bad = write_run(root, "TRADES", 0, full(80, 55, 50, 49, 47))
    rewrite_json(good, REPORT, lambda r: dict(r, labels={"method": "PGDAT"}))
    rewrite_json(bad, REPORT, lambda r: dict(set_result("natural", "high")(r), labels={"method": "TRADES"}))
    table, err = report_run([os.path.join(good, REPORT), os.path.join(bad, REPORT)], capsys, tmp_path)
    assert "| PGDAT |" in table and "| TRADES |" not in table and "1 input left out" in table
    assert f"{os.path.join(bad, REPORT)}: " in err


def test_a_folder_that_cannot_be_listed_is_named(tmp_path, capsys, monkeypatch):
    root = str(tmp_path / "runs")
    write_run(root, "PGDAT", 0, full(80, 55, 50, 49, 47))
    locked = os.path.join(root, "locked")
    os.makedirs(locked)
    scandir = os.scandir

    def refuse(path="."):  # what chmod 000 does to any user but root
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return scandir(path)
    monkeypatch.setattr(os, "scandir", refuse)
    table, err = report_run([root], capsys, tmp_path)
    assert f"warning: {locked}: cannot be read (Permission denied)" in err and "1 input left out" in table


@pytest.mark.parametrize("content, expected", [("[1]", 'no "tables" list'), ('{"tables": [{"source": "x"}]}',
                                                                             "tables[0] is not an object"),
                                               ('{"tables": [', "not JSON")])
def test_a_bad_published_table_is_one_error(tmp_path, capsys, content, expected):
    root = str(tmp_path / "runs")
    write_run(root, "PGDAT", 0, full(80, 55, 50, 49, 47))
    published = tmp_path / "published.json"
    published.write_text(content)
    error = one_error(capsys, report, root, "--published", str(published), "--out", str(tmp_path / "o"))
    assert "--published" in error and expected in error


def test_a_history_without_the_curves_columns_draws_no_traceback(tmp_path, capsys):
    folder = write_run(str(tmp_path / "runs"), "DGAD", 0, full(80, 55, 50, 49, 47))
    with open(os.path.join(folder, "results.csv"), "w") as f:
        f.write("epoch,train_st_fraction\n1,0.5\n2,0.4\n")
    assert report_main([folder, "--out", str(tmp_path / "o")]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_check_report_and_the_report_writer_agree(tmp_path):
    """A report written by main_eval.py's own code passes the checks main_report.py applies to it."""
    path = tmp_path / "m.pth"
    path.write_bytes(b"x")
    sha = hashlib.sha256(b"x").hexdigest()
    from evaluation.protocols import attack_settings
    from evaluation.report import check_report
    report = report_of(str(path), sha)
    report["radii"]["8"]["results"]["pgd10"]["params"] = attack_settings("pgd10", 8 / 255, 0, 200)
    report["radii"]["8"]["results"]["cw_l2"]["params"] = attack_settings("cw_l2", 8 / 255, 0, 200)
    assert check_report(report) is report


def test_a_byte_order_mark_is_no_damage(tmp_path, capsys):
    folder = write_run(str(tmp_path / "runs"), "PGDAT", 0, full(80, 55, 50, 49, 47))
    for name in ("config.json", "results.csv", REPORT):
        with open(os.path.join(folder, name), "rb") as f:
            content = f.read()
        with open(os.path.join(folder, name), "wb") as f:
            f.write(b"\xef\xbb\xbf" + content)  # as some editors save UTF-8
    table, err = report_run([folder], capsys, tmp_path)
    assert "| PGDAT | 80.00 (1) |" in table and "left out" not in table and "warning" not in err
