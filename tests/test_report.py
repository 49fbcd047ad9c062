"""main_report.py on synthetic run folders with known numbers: grouping over seeds, table cells
(means, standard deviations, rounding, missing cells, the published column), LaTeX structure, CSV,
the figures as images of their size, and bad input as one-line errors."""
import csv
import io
import json
import math
import os
import re

import pytest
from PIL import Image

from reporting import figures
from reporting.cli import main as report_main
from reporting.runs import find_runs, group_runs
from reporting.tables import Cell, build_tables, cell_text, csv_text, latex, load_published, markdown
from methods import method_names
from runtime.checkpoints import sha256_of

BASE = {"dataset": "CIFAR10", "model": "resnet18", "teacher_model": "wideresnet34_10", "epochs": 3,
        "epsilon": 8.0, "recipe": "dgad-paper"}
DISTILLED = {"RSLAD", "AdaAD", "DGAD"}


def write_run(root, method, seed, accuracies, *, radii=None, gaps=None, protocol="paper", config=None,
              history=None, n=1000, checkpoint="best_PGD10_acc_model.pth", **operational):
    """A run folder as main.py and main_eval.py leave it, with the given numbers.
    accuracies: {attack: accuracy} at 8/255; radii: {eps: {attack: accuracy}} for more radii."""
    folder = os.path.join(root, method, f"seed{seed}")
    os.makedirs(folder, exist_ok=True)
    record = dict(BASE, method=method, seed=seed, save_dir=folder, gpu_id=0, git_commit="abc",
                  teacher_sha256="f00" if method in DISTILLED else None)
    record.update(**(config or {}), **operational)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(record, f)
    rows = history or [(1, 40.0, 20.0), (2, 50.0, 25.0), (3, 55.0, 30.0)]
    parts = ["L_ST", "L_AT", "L_PCR", "st_fraction"] if method == "DGAD" else []
    with open(os.path.join(folder, "results.csv"), "w") as f:
        f.write(",".join(["epoch", "test_clean_acc", "test_PGD10_acc"] + [f"train_{p}" for p in parts]) + "\n")
        for epoch, clean, robust in rows:
            f.write(",".join(map(str, [epoch, clean, robust] + [0.1 * (i + 1) / epoch for i in range(len(parts))]))
                    + "\n")
    all_radii = {8: accuracies, **(radii or {})}
    weights = os.path.join(folder, checkpoint)
    with open(weights, "wb") as f:
        f.write(f"weights of {folder}".encode())
    report = {"format": "advkd-eval/2", "protocol": protocol, "dataset": record["dataset"], "model": record["model"],
              "n_examples": n, "eps_255": sorted(all_radii), "radii": {}, "seed": 0, "batch_size": 200,
              "checkpoint": {"path": os.path.abspath(weights), "sha256": sha256_of(weights)}}
    for eps, accs in sorted(all_radii.items()):
        gap = (gaps or {}).get(eps)
        report["radii"][f"{eps:g}"] = {
            "eps": eps / 255, "eps_255": eps, "attacks": list(accs),
            "results": {name: {"accuracy": value, "n": n} for name, value in accs.items()},
            "variance_gap": None if gap is None else {"value": gap}}
    with open(os.path.join(folder, f"{checkpoint}.eval.{protocol}.json"), "w") as f:
        json.dump(report, f)
    return folder


def full(natural, fgsm, pgd, cw, aa):
    return {"natural": natural, "fgsm": fgsm, "pgd10": pgd, "cw_l2": cw, "aa": aa}


@pytest.fixture
def runs_root(tmp_path):
    root = str(tmp_path / "runs")
    for seed, natural in enumerate([80.0, 82.0, 84.0]):  # mean 82, sample std 2
        write_run(root, "PGDAT", seed, full(natural, 55.0, 50.0, 49.0, 47.0 + seed))
    write_run(root, "DGAD", 0, full(87.0, 60.0, 52.005, 51.0, 50.0))
    write_run(root, "DGAD", 1, full(88.0, 61.0, 52.015, 51.0, 51.0), gpu_id=3)  # operational: same group
    write_run(root, "TRADES", 0, {"natural": 83.0, "fgsm": 57.0, "pgd10": 51.0})  # no CW, no AA
    return root


def tables_of(root):
    groups = group_runs(find_runs([root]).runs, method_names())
    return groups, build_tables(groups, 8, load_published())


def test_seeds_are_grouped_and_cells_are_mean_std_and_count(runs_root):
    groups, tables = tables_of(runs_root)
    assert [(g.label, len(g.runs)) for g in groups] == [("PGDAT", 3), ("TRADES", 1), ("DGAD", 2)]  # table order
    (table,) = tables
    assert (table.dataset, table.model, table.protocol, table.eps_255) == ("CIFAR10", "resnet18", "paper", 8)
    rows = {row.label: row for row in table.rows}
    natural = rows["PGDAT"].cells["natural"]
    assert natural.mean == 82.0 and natural.std == pytest.approx(2.0) and natural.n == 3
    assert cell_text(natural) == "82.00 ± 2.00 (3)"
    assert cell_text(rows["PGDAT"].cells["aa"]) == "48.00 ± 1.00 (3)"
    assert cell_text(rows["DGAD"].cells["pgd10"]) == "52.01 ± 0.01 (2)"  # mean 52.01, std 0.00707
    assert cell_text(rows["TRADES"].cells["natural"]) == "83.00 (1)"  # one seed: no deviation to show
    assert cell_text(rows["TRADES"].cells["aa"]) == "–" and rows["TRADES"].cells["aa"].n == 0
    assert Cell([1.0, 2.0]).std == pytest.approx(math.sqrt(0.5))


def test_published_numbers_sit_beside_ours_with_the_difference(runs_root):
    _, (table,) = tables_of(runs_root)
    assert table.published_source.startswith("DGAD (ECCV 2024), Table 4")
    assert table.published_attacks == ["natural", "aa"] and table.teachers == ["wideresnet34_10"]
    text = markdown([table])
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert lines[0] == ("| Method | Clean | FGSM | PGD-10 | CW-L2 | AA | Clean (published) | Δ Clean | "
                        "AA (published) | Δ AA |")
    assert lines[2] == ("| PGDAT | 82.00 ± 2.00 (3) | 55.00 ± 0.00 (3) | 50.00 ± 0.00 (3) | 49.00 ± 0.00 (3) | "
                        "48.00 ± 1.00 (3) | 82.95 | −0.95 | 47.69 | +0.31 |")
    assert lines[3].startswith("| TRADES | 83.00 (1) |") and lines[3].endswith("| – | – | 83.00 | +0.00 | 49.21 | – |")
    assert lines[4].endswith("| 87.58 | −0.08 | 50.59 | −0.09 |")  # DGAD: 87.50 - 87.58, 50.50 - 50.59
    assert "mean ± standard deviation over seeds" in text and "Published: DGAD (ECCV 2024)" in text


def test_no_published_column_for_another_setting(tmp_path):
    root = str(tmp_path / "r")
    write_run(root, "PGDAT", 0, full(80, 50, 45, 44, 40), config={"model": "mobilenetV2"})
    _, (table,) = tables_of(root)
    assert table.published_source is None and "published" not in markdown([table])


def test_latex_is_booktabs_with_balanced_environments_and_one_row_per_method(runs_root):
    _, tables = tables_of(runs_root)
    text = latex(tables)
    for env in ("table", "tabular"):
        assert text.count(rf"\begin{{{env}}}") == text.count(rf"\end{{{env}}}") == 1
    assert text.index(r"\toprule") < text.index(r"\midrule") < text.index(r"\bottomrule")
    body = text[text.index(r"\midrule") + len(r"\midrule"):text.index(r"\bottomrule")].strip().splitlines()
    assert [line.split(" & ")[0] for line in body] == ["PGDAT", "TRADES", "DGAD"]
    columns = len(re.search(r"\\begin\{tabular\}\{(lc*)\}", text).group(1))
    header = text.splitlines()[text.splitlines().index(r"\toprule") + 1]
    for line in [header] + body:
        assert line.endswith(r"\\") and line.count(" & ") + 1 == columns
    assert r"82.00 $\pm$ 2.00 (3)" in text and "$-$0.95" in text
    assert text.count("{") == text.count("}")  # braces balanced
    assert "±" not in text and "Δ" not in text and "_" not in text.replace(r"\_", "")


def test_csv_holds_unrounded_numbers(runs_root):
    _, tables = tables_of(runs_root)
    rows = list(csv.DictReader(io.StringIO(csv_text(tables))))
    assert [row["method"] for row in rows] == ["PGDAT", "TRADES", "DGAD"]
    dgad = rows[2]
    assert float(dgad["pgd10_mean"]) == pytest.approx(52.01) and float(dgad["pgd10_std"]) == pytest.approx(0.00707, 1e-3)
    assert dgad["natural_published"] == "87.58" and float(dgad["natural_delta"]) == pytest.approx(-0.08)
    assert rows[1]["aa_mean"] == "" and rows[1]["aa_n"] == "0" and rows[1]["seeds"] == "1"


def test_settings_that_differ_are_separate_rows_labelled_by_the_difference(tmp_path):
    root = str(tmp_path / "r")
    write_run(root, "DGAD", 0, full(87, 60, 52, 51, 50))
    os.rename(os.path.join(root, "DGAD"), os.path.join(root, "DGAD_a"))
    write_run(root, "DGAD", 0, full(86, 59, 51, 50, 49), config={"alpha": 0.5})
    groups, (table,) = tables_of(root)
    assert sorted(g.label for g in groups) == ["DGAD (alpha 0.5)", "DGAD (alpha None)"]
    assert len(table.rows) == 2


def test_natural_training_reports_its_best_clean_checkpoint(tmp_path):
    root = str(tmp_path / "r")
    write_run(root, "Natural", 0, {"natural": 11.0, "pgd10": 10.0})  # the best-PGD-10 epoch: an accident
    write_run(root, "Natural", 0, {"natural": 41.0, "pgd10": 4.0}, checkpoint="best_clean_acc_model.pth")
    write_run(root, "PGDAT", 0, {"natural": 35.0, "pgd10": 20.0})
    write_run(root, "PGDAT", 0, {"natural": 36.0, "pgd10": 18.0}, checkpoint="best_clean_acc_model.pth")
    _, (table,) = tables_of(root)
    assert [(row.label, row.cells["natural"].mean) for row in table.rows] == [("Natural", 41.0), ("PGDAT", 35.0)]
    groups = group_runs(find_runs([root], "best_clean_acc_model.pth").runs, method_names())  # --checkpoint
    (table,) = build_tables(groups, 8)
    assert [row.cells["natural"].mean for row in table.rows] == [41.0, 36.0]


def test_figures_are_images_of_their_size(runs_root, tmp_path):
    radii = {2: {"natural": 80.0, "pgd10": 70.0}, 4: {"natural": 80.0, "pgd10": 62.0}}
    write_run(runs_root, "RSLAD", 0, full(84, 58, 51, 50, 48), radii=radii, gaps={2: 0.1, 4: 0.3, 8: 0.5})
    groups = group_runs(find_runs([runs_root]).runs, method_names())
    out = str(tmp_path / "figures")
    os.makedirs(out)
    written = [path for draw in figures.FIGURES for path in draw(groups, out)]
    names = sorted(os.path.basename(p) for p in written if p.endswith(".png"))
    assert names == ["curves-CIFAR10-resnet18.png", "dgad_parts-CIFAR10-resnet18-DGAD.png",
                     "robustness_vs_eps-CIFAR10-resnet18-paper.png", "variance_gap-CIFAR10-resnet18-paper.png"]
    wide = (round(figures.WIDE[0] * figures.DPI), round(figures.WIDE[1] * figures.DPI))
    one = (round(figures.SIZE[0] * figures.DPI), round(figures.SIZE[1] * figures.DPI))
    for path in written:
        if path.endswith(".png"):
            with Image.open(path) as image:
                image.verify()
            with Image.open(path) as image:
                expected = wide if os.path.basename(path).startswith(("curves", "dgad")) else one
                assert image.size == expected, path
        else:
            with open(path, "rb") as f:
                assert f.read(5) == b"%PDF-"


def test_the_variance_gap_fit_is_a_least_squares_line_with_pearson_r():
    assert figures.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert figures.pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # cov 1.25 / (1.25 * 1.25)^0.5
    assert figures.pearson([1, 2], [2, 1]) is None  # two points always lie on a line


def test_main_report_writes_every_output_and_says_so(runs_root, tmp_path, capsys):
    out = str(tmp_path / "report")
    assert report_main([runs_root, "--out", out, "--title", "demo"]) == 0
    printed = capsys.readouterr().out
    assert "# demo" in printed and "| PGDAT | 82.00 ± 2.00 (3) |" in printed
    for name in ("tables.md", "tables.tex", "tables.csv", "curves-CIFAR10-resnet18.png",
                 "curves-CIFAR10-resnet18.pdf"):
        assert os.path.isfile(os.path.join(out, name)) and f"wrote {os.path.join(out, name)}" in printed
    # A glob and a report's own path are inputs too.
    assert report_main([os.path.join(runs_root, "P*"), "--out", out, "--no_figures"]) == 0
    assert "| PGDAT |" in capsys.readouterr().out
    report = os.path.join(runs_root, "TRADES", "seed0", "best_PGD10_acc_model.pth.eval.paper.json")
    assert report_main([report, "--out", out, "--no_figures"]) == 0


def test_the_same_seed_twice_is_flagged(runs_root, tmp_path, capsys):
    copy = os.path.join(str(tmp_path), "copy")
    write_run(copy, "PGDAT", 0, full(80, 55, 50, 49, 47))
    assert report_main([runs_root, copy, "--out", str(tmp_path / "o"), "--no_figures"]) == 0
    assert "PGDAT: seed 0 appears more than once" in capsys.readouterr().err


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    note = tmp_path / "note.json"
    note.write_text("[1]")
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, expected in [([str(tmp_path / "missing")], "no such run folder"),
                           ([str(note)], "is not an evaluation report"),
                           ([str(empty)], "no run folder (with config.json)"),
                           ([str(empty), "--eps", "0.031"], "--eps 0.031 is below 1")]:
        with pytest.raises(SystemExit) as exit_info:
            report_main(args + ["--out", str(tmp_path / "o")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
