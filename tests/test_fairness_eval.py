"""Worst-class robustness everywhere (issue 25): per-class counts from the same forward passes of
attack_accuracy, pinned by hand; the worst class and the worst-10% mean by hand for 100 classes; the counts of
two processes equal to one; the results.csv columns of the per-epoch evaluation; main_eval's report, its checks
and its printed table; main_report's worst-class table and per-class figure on fabricated run folders."""
import csv
import io
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from PIL import Image

from data import Split
from data.classes import CIFAR10, CIFAR100, class_names
from evaluation import cli as eval_cli
from evaluation.accuracy import ClassCounts, attack_accuracy
from evaluation.per_class import check_per_class, summary, worst_class, worst_count, worst_fraction
from evaluation.report import check_report, format_table, worst_class_text
from helpers import REPO, run_script
from methods import method_names
from reporting import fairness, figures
from reporting.cli import main as report_main
from reporting.per_class_figures import per_class_figures
from reporting.runs import find_runs, group_runs
from reporting.tables import build_tables
from runtime.distributed import World
from test_distributed import job_env, torchrun_retrying_gloo_abort
from test_report import full, write_run
from training import loop
from training.run_dir import RESULT_FIELDS, RunDirectory, result_fields

REPORT = "best_PGD10_acc_model.pth.eval.paper.json"


# -- a model whose every answer is known -------------------------------------------------------------

class Says(nn.Module):
    """Predicts the class written in each image's first pixel (red channel, 0..255 as a class index)."""

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes
        self.unused = nn.Parameter(torch.zeros(()))  # a parameter, as attacks and module_mode expect

    def forward(self, x, return_features=False):
        said = (x[:, 0, 0, 0] * 255).round().long()
        logits = (said.unsqueeze(1) == torch.arange(self.num_classes)).float() + 0 * self.unused
        return (logits, logits) if return_features else logits


def answering(labels, answers, size=4):
    """A split whose image i makes Says answer answers[i]; its true class is labels[i]."""
    images = torch.zeros((len(labels), 3, size, size), dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor(answers, dtype=torch.uint8)
    return Split(images, torch.tensor(labels))


# Nine images of four classes; class 3 has none. Right: class 0 2 of 3, class 1 0 of 2, class 2 4 of 4.
LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 2]
ANSWERS = [0, 1, 0, 2, 0, 2, 2, 2, 2]


@pytest.mark.parametrize("batch_size", [1, 4, 9, 64])
def test_attack_accuracy_counts_each_class_from_its_own_predictions(batch_size):
    counts = ClassCounts()
    accuracy = attack_accuracy(Says(4), answering(LABELS, ANSWERS), batch_size, per_class=counts)
    assert accuracy == pytest.approx(100 * 6 / 9)
    assert counts.counts() == ([2, 0, 4, 0], [3, 2, 4, 0])
    assert counts.worst_accuracy() == 0.0  # class 1; class 3, never seen, is no class's worst


def test_per_class_counts_are_of_the_attacks_examples():
    """An attack that turns every image of class 2 into a 'says 3' image: class 2 goes to 0 of 4."""
    def attack(model, x, y):
        x = x.clone()
        x[y == 2, 0, 0, 0] = 3 / 255
        return x
    counts = ClassCounts()
    accuracy = attack_accuracy(Says(4), answering(LABELS, ANSWERS), 4, attack=attack, per_class=counts)
    assert accuracy == pytest.approx(100 * 2 / 9) and counts.counts() == ([2, 0, 0, 0], [3, 2, 4, 0])


def test_summary_names_the_worst_class_and_leaves_absent_classes_out():
    result = summary([2, 0, 4, 0], [3, 2, 4, 0], ["a", "b", "c", "d"])
    assert result["per_class"] == {"correct": [2, 0, 4, 0], "n": [3, 2, 4, 0],
                                   "accuracy": [66.6667, 0.0, 100.0, None]}
    assert result["worst_class"] == {"index": 1, "name": "b", "accuracy": 0.0}
    assert result["worst_10pct"] == {"percent": 10, "classes": 1, "accuracy": 0.0}
    assert summary([1, 1], [2, 2])["worst_class"]["index"] == 0  # equal: the lowest index
    assert summary([1, 1], [2, 2])["worst_class"]["name"] == "class 0"  # no names: the index


def test_worst_class_and_worst_ten_percent_of_100_classes_by_hand():
    # Class c has 10 images and gets (c % 10) + 1 right, except: classes 7, 42 and 93 get 0 right.
    correct = [(c % 10) + 1 for c in range(100)]
    for c in (7, 42, 93):
        correct[c] = 0
    n = [10] * 100
    result = summary(correct, n, list(CIFAR100))
    assert result["worst_class"] == {"index": 7, "name": "beetle", "accuracy": 0.0}
    # The worst 10: the three zeros, then seven of the ten classes at 10% (c % 10 == 0: 0, 10, 20, ..., 90).
    assert result["worst_10pct"] == {"percent": 10, "classes": 10, "accuracy": pytest.approx((0 * 3 + 10 * 7) / 10)}
    assert worst_count(100) == 10 and worst_count(200) == 20 and worst_count(10) == 1
    assert worst_count(30) == 3 and worst_count(31) == 4 and worst_count(1) == 1  # integers: 10% of 30 is 3
    assert worst_fraction([None, 50.0, 20.0]) == {"percent": 10, "classes": 1, "accuracy": 20.0}
    assert worst_class([None, None]) is None and worst_fraction([None]) is None


def test_class_names():
    assert class_names("CIFAR10", 10, "nowhere") == list(CIFAR10) and CIFAR10[3] == "cat"
    assert len(CIFAR100) == len(set(CIFAR100)) == 100 and list(CIFAR100) == sorted(CIFAR100)
    assert class_names("Tiny_Image", 3, "nowhere") == ["class 0", "class 1", "class 2"]


def test_tiny_imagenet_class_names_follow_its_labels(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    root.mkdir()
    (root / "wnids.txt").write_text("n02\nn01\nn03\n")
    (root / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn03\tcat\nn99\tother\n")
    assert class_names("Tiny_Image", 3, str(tmp_path)) == ["n01 (goldfish)", "n02", "n03 (cat)"]  # sorted wnids
    assert class_names("Tiny_Image", 200, str(tmp_path)) == [f"class {i}" for i in range(200)]  # not its 200


# -- one process and two -------------------------------------------------------------------------

SHARDED = """
import sys
import torch
from data import Split
from evaluation.accuracy import ClassCounts, attack_accuracy
from runtime.distributed import join
from test_fairness_eval import Says, answering

world = join(5.0, use_cuda=False)
generator = torch.Generator().manual_seed(0)
labels = torch.randint(0, 7, (41,), generator=generator).tolist()
guesses = torch.randint(0, 7, (41,), generator=generator).tolist()
answers = [guess if i % 3 == 0 else label for i, (label, guess) in enumerate(zip(labels, guesses))]  # most right
counts = ClassCounts()
accuracy = attack_accuracy(Says(7), answering(labels, answers), 8, per_class=counts, world=world)
if world.main:
    torch.save({"accuracy": accuracy, "counts": counts.counts(), "labels": labels, "answers": answers}, sys.argv[1])
world.leave()
"""


@pytest.mark.slow  # processes
def test_per_class_counts_of_two_processes_equal_one(tmp_path):
    """41 images in batches of 8 (the last 1: one process gets no row of it) over 2 processes: the same counts."""
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED)
    one, two = str(tmp_path / "one.pt"), str(tmp_path / "two.pt")
    single = subprocess.run([sys.executable, str(script), one], cwd=REPO, env=job_env(), capture_output=True,
                            text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    code, _, err = torchrun_retrying_gloo_abort(str(script), two)
    assert code == 0, err
    a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    assert a == b
    correct = [sum(1 for y, p in zip(a["labels"], a["answers"]) if y == p == c) for c in range(7)]
    assert a["counts"] == (correct, [a["labels"].count(c) for c in range(7)])


def test_a_single_process_world_reduces_nothing():
    counts = ClassCounts()
    counts.update(torch.tensor([True, False]), torch.tensor([1, 1]), 3)
    counts.reduce(World())
    assert counts.counts() == ([0, 1, 0], [0, 2, 0])


# -- the per-epoch evaluation and results.csv ------------------------------------------------------

def test_the_per_epoch_evaluation_gives_the_worst_class_of_the_same_passes():
    split = answering(LABELS, ANSWERS)

    def attack(model, x, y, batch_rows=None):  # turns class 0's right answers wrong: class 0 at 0 of 3
        x = x.clone()
        x[y == 0, 0, 0, 0] = 3 / 255
        return x
    evaluated, batch_size = loop.evaluate(Says(4), split, 4, attack)
    assert batch_size == 4
    assert evaluated.clean == pytest.approx(100 * 6 / 9) and evaluated.robust == pytest.approx(100 * 4 / 9)
    assert evaluated.clean_worst_class == 0.0  # class 1: 0 of 2
    assert evaluated.robust_worst_class == 0.0  # classes 0 and 1
    split = answering([0, 0, 1, 1], [0, 1, 1, 1])  # clean: class 0 at 1 of 2, class 1 at 2 of 2

    def wrong_on_class_1(model, x, y, batch_rows=None):
        x = x.clone()
        x[y == 1, 0, 0, 0] = 0
        return x
    evaluated, _ = loop.evaluate(Says(2), split, 3, wrong_on_class_1)
    assert (evaluated.clean, evaluated.robust) == (75.0, 25.0)
    assert (evaluated.clean_worst_class, evaluated.robust_worst_class) == (50.0, 0.0)


def test_results_csv_has_the_worst_class_columns_and_a_resumed_run_keeps_its_older_rows(tmp_path):
    fields = result_fields(["L_AT"])
    assert {"test_clean_acc_worst_class", "test_PGD10_acc_worst_class"} <= set(RESULT_FIELDS) <= set(fields)
    stats = loop.EpochStats(loss=1.0, accuracy=50.0, parts={"L_AT": 0.5}, seen=10, seconds=2.0, skipped=0)
    row = loop.results_row(2, 0.1, stats, loop.Evaluation(60.0, 30.0, 0.25, 40.0, 12.5), 1.0)
    assert (row["test_clean_acc_worst_class"], row["test_PGD10_acc_worst_class"]) == (40.0, 12.5)
    # A run resumed across this change: its last.pth history holds rows without the columns; they stay empty.
    older = {k: v for k, v in row.items() if "worst_class" not in k}
    run = RunDirectory(str(tmp_path / "run"), fields, resume=True, overwrite=False)
    os.makedirs(run.root)
    run.write_results([dict(older, epoch=1), row])
    with open(run.file("results.csv")) as f:
        written = list(csv.DictReader(f))
    assert list(written[0]) == fields
    assert written[0]["test_PGD10_acc_worst_class"] == "" and written[1]["test_PGD10_acc_worst_class"] == "12.5"


def test_main_logs_the_worst_class_of_each_epoch(tmp_path, real_data_dir):
    save_dir = str(tmp_path / "run")
    done = run_script("main.py", "--method", "PGDAT", "--model", "wideresnet10_1", "--bs", "32", "--num_steps", "2",
                      "--train_subset", "64", "--test_subset", "40", "--epochs", "1", "--data_dir", real_data_dir,
                      "--save_dir", save_dir)
    assert done.returncode == 0, done.stderr
    with open(os.path.join(save_dir, "results.csv")) as f:
        (row,) = list(csv.DictReader(f))
    assert 0 <= float(row["test_clean_acc_worst_class"]) <= float(row["test_clean_acc"])
    assert 0 <= float(row["test_PGD10_acc_worst_class"]) <= float(row["test_PGD10_acc"])


# -- main_eval: the report, its checks, its printed table ----------------------------------------------

def entry(correct, n, names=None, attack="PGD-10"):
    return dict({"attack": attack, "protocol": "paper", "accuracy": 100 * sum(correct) / sum(n),
                 "correct": sum(correct), "n": sum(n), "seconds": 1.0}, **summary(correct, n, names))


def test_check_per_class_refuses_what_its_counts_do_not_give():
    good = entry([2, 0, 4], [3, 2, 4], ["a", "b", "c"])
    check_per_class(good, "e", 3, ["a", "b", "c"])
    check_per_class({"accuracy": 50.0}, "e", 3)  # an older report: no counts, nothing to check
    damaged = {
        "wrong class count": (dict(good), 4, "not the report's 4 classes"),
        "sum": (dict(good, correct=7), 3, "sums to 6, but the entry says correct 7"),
        "more right than seen": (dict(good, per_class=dict(good["per_class"], correct=[4, 0, 2])), 3,
                                 "counts class 0 right 4 times of 3"),
        "not counts": (dict(good, per_class=dict(good["per_class"], n=[3, 2.0, 4])), 3, "not a list of counts"),
        "edited worst": (dict(good, worst_class=dict(good["worst_class"], accuracy=10.0)), 3,
                         "worst_class is not what its per-class counts give"),
        "renamed worst": (dict(good, worst_class=dict(good["worst_class"], name="z")), 3, "worst_class is not"),
        "worst without counts": ({k: v for k, v in good.items() if k != "per_class"}, 3, "without the per-class"),
    }
    for name, (value, classes, expected) in damaged.items():
        with pytest.raises(ValueError, match=expected.replace("(", r"\(")):
            check_per_class(value, "e", classes, ["a", "b", "c"])


def report_with(per_class_entries, num_classes=3, names=("a", "b", "c")):
    return {"format": "advkd-eval/2", "protocol": "paper", "dataset": "CIFAR10", "model": "resnet18",
            "n_examples": 9, "batch_size": 200, "seed": 0, "num_classes": num_classes, "class_names": list(names),
            "checkpoint": {"path": "/x.pth", "sha256": "0" * 64},
            "radii": {"8": {"eps_255": 8, "results": per_class_entries, "variance_gap": None}}}


def test_check_report_reads_per_class_results_and_older_ones():
    assert check_report(report_with({"pgd10": entry([2, 0, 4], [3, 2, 4], ["a", "b", "c"])}))
    assert check_report(report_with({"pgd10": {"accuracy": 50.0}}))  # before per-class counts
    with pytest.raises(ValueError, match="results.pgd10.worst_class is not"):
        check_report(report_with({"pgd10": entry([2, 0, 4], [3, 2, 4], ["x", "y", "z"])}))  # other names
    with pytest.raises(ValueError, match='"class_names" is'):
        check_report(report_with({}, names=("a", "b")))


def test_the_printed_table_shows_the_worst_class_and_for_many_classes_the_worst_ten_percent():
    results = {"natural": entry([2, 1, 4], [3, 2, 4], ["a", "b", "c"], "Natural"), "pgd10": {
        "attack": "PGD-10", "protocol": "paper", "accuracy": 20.0, "n": 9, "seconds": 1.0}}  # an older result
    lines = format_table(results, ["natural", "fgsm", "pgd10"]).splitlines()
    assert lines[0].split() == ["attack", "protocol", "accuracy", "%", "worst", "class", "%", "n", "seconds",
                                "worst", "class"]
    assert lines[1].split() == ["Natural", "paper", "77.78", "50.00", "9", "1.0", "b"]
    assert lines[2].split() == ["PGD-10", "paper", "20.00", "–", "9", "1.0", "–"]
    assert "worst 10%" not in lines[0]  # ten classes or fewer: the worst 10% is the worst class
    many = {"natural": entry([(c % 10) + 1 for c in range(100)], [10] * 100, list(CIFAR100), "Natural")}
    lines = format_table(many, ["natural"]).splitlines()
    assert "worst 10% %" in lines[0] and lines[1].split()[3:5] == ["10.00", "10.00"]
    assert worst_class_text(many["natural"]) == "worst class apple 10.00%, worst 10% (10 classes) 10.00%"
    assert worst_class_text(results["pgd10"]) == "worst class –"


def test_a_kept_result_is_renamed_as_this_run_names_the_classes():
    kept = entry([2, 0, 4], [3, 2, 4], ["x", "y", "z"])
    assert eval_cli.named(kept, ["a", "b", "c"])["worst_class"]["name"] == "b"
    older = {"accuracy": 50.0}
    assert eval_cli.named(older, ["a"]) is older


def test_main_eval_reports_per_class_accuracy_at_every_radius(real_data_dir, tmp_path, capsys):
    from models import build_model
    torch.manual_seed(0)
    checkpoint = tmp_path / "m.pth"
    torch.save({"net": build_model("wideresnet10_1", 10).state_dict(), "arch": "wideresnet10_1"}, checkpoint)
    assert eval_cli.main({"dataset": "CIFAR10", "datasets": ["CIFAR10"]}, "test", [
        "--model", "wideresnet10_1", "--model_path", str(checkpoint), "--data_dir", real_data_dir,
        "--attacks", "natural,fgsm", "--eps", "4,8", "--n_ex", "30", "--bs", "7"]) == 0
    out = capsys.readouterr().out
    with open(f"{checkpoint}.eval.paper.json") as f:
        report = check_report(json.load(f))
    assert report["class_names"] == list(CIFAR10)
    for key in ("4", "8"):
        for name, result in report["radii"][key]["results"].items():
            assert sum(result["per_class"]["n"]) == 30 and sum(result["per_class"]["correct"]) == result["correct"]
            worst = result["worst_class"]
            assert worst["name"] == CIFAR10[worst["index"]] and worst["accuracy"] <= result["accuracy"]
            assert f"worst class {worst['name']} {worst['accuracy']:.2f}%" in out
    assert out.count("worst class %") == 2  # one printed table per radius


# -- main_report: the worst-class table and the per-class figure ----------------------------------------

def add_per_class(folder, per_attack, names=None):
    """Rewrite a fabricated run's report at 8/255 with per-class counts {attack: (correct, n)}."""
    path = os.path.join(folder, REPORT)
    with open(path) as f:
        report = json.load(f)
    classes = len(next(iter(per_attack.values()))[1])
    report.update(num_classes=classes, class_names=names or [f"c{i}" for i in range(classes)])
    for attack, (correct, n) in per_attack.items():
        result = report["radii"]["8"]["results"][attack]
        result.update(correct=sum(correct), n=sum(n), **summary(correct, n, report["class_names"]))
    with open(path, "w") as f:
        json.dump(report, f)


def ten_classes(worst_right):
    """CIFAR-10 counts of 100 images per class: class 3 gets `worst_right`, the others 60."""
    return [worst_right if c == 3 else 60 for c in range(10)], [100] * 10


@pytest.fixture
def fair_root(tmp_path):
    root = str(tmp_path / "runs")
    for seed, worst in enumerate([20, 30]):  # worst class (cat) 20% and 30%: mean 25, std 7.07
        folder = write_run(root, "PGDAT", seed, full(80.0, 55.0, 50.0, 49.0, 47.0))
        add_per_class(folder, {"natural": ten_classes(worst + 40), "pgd10": ten_classes(worst)}, list(CIFAR10))
    write_run(root, "TRADES", 0, full(83.0, 57.0, 51.0, 50.0, 48.0))  # an older report: no per-class counts
    return root


def fairness_tables_of(root, eps=8):
    groups = group_runs(find_runs([root]).runs, method_names())
    tables = build_tables(groups, eps)
    return tables, fairness.build_fairness_tables(tables)


def test_the_worst_class_table_by_hand(fair_root):
    _, (table,) = fairness_tables_of(fair_root)
    assert table.num_classes == 10 and not table.fractions
    assert table.attacks == ["natural", "fgsm", "pgd10", "cw_l2", "aa"]
    rows = {row.row.label: row for row in table.rows}
    pgdat, trades = rows["PGDAT"], rows["TRADES"]
    assert pgdat.worst["pgd10"].values == [20.0, 30.0] and pgdat.worst["natural"].values == [60.0, 60.0]
    assert pgdat.average["pgd10"].mean == 50.0  # the report's own accuracy, as the main table
    assert pgdat.worst["fgsm"].n == 0 and trades.worst["pgd10"].n == 0  # no counts: an empty cell
    text = fairness.markdown([table])
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| Method | Clean Avg | Clean Worst | FGSM Avg | FGSM Worst | PGD-10 Avg | "
                               "PGD-10 Worst |")
    assert lines[2].startswith("| PGDAT | 80.00 ± 0.00 (2) | 60.00 ± 0.00 (2) | 55.00 ± 0.00 (2) | – | "
                               "50.00 ± 0.00 (2) | 25.00 ± 7.07 (2) |")
    assert lines[3].startswith("| TRADES | 83.00 (1) | – |")
    assert text.startswith(fairness.HEADING) and "no per-class counts in the report" in text
    assert f"of table {table.table.name} above (selected on test)" in table.caption()
    table.table.val_images = 1000  # runs chosen on held-out images are their own table; its caption says so
    assert "above (selected on 1000 validation images)" in table.caption()
    rows = list(csv.DictReader(io.StringIO(fairness.csv_text([table]))))
    assert float(rows[0]["pgd10_worst_mean"]) == 25.0 and rows[0]["pgd10_worst_n"] == "2"
    assert rows[1]["pgd10_worst_mean"] == "" and rows[1]["pgd10_avg_mean"] == "51.0"
    latex = fairness.latex([table])
    assert latex.count(r"\begin{tabular}") == latex.count(r"\end{tabular}") == 1
    assert r"\multicolumn{2}{c}{PGD-10}" in latex and r"25.00 $\pm$ 7.07 (2)" in latex
    body = latex[latex.index(r"\midrule") + len(r"\midrule"):latex.index(r"\bottomrule")].strip().splitlines()
    assert all(line.count(" & ") == 10 for line in body)  # Method + 5 attacks x (Avg, Worst)


def test_a_hundred_class_table_adds_the_worst_ten_percent(tmp_path):
    root = str(tmp_path / "runs")
    folder = write_run(root, "PGDAT", 0, {"natural": 60.0, "pgd10": 30.0}, config={"dataset": "CIFAR100"})
    correct = [(c % 10) + 1 for c in range(100)]  # 10..100%: worst 10%, the ten classes at 10%
    correct[5] = 0
    add_per_class(folder, {"pgd10": (correct, [10] * 100)}, list(CIFAR100))
    _, (table,) = fairness_tables_of(root)
    assert table.fractions and table.attacks == ["natural", "pgd10"]
    (row,) = table.rows
    assert row.worst["pgd10"].values == [0.0] and row.worst_fraction["pgd10"].values == [pytest.approx(9.0)]
    assert "| PGD-10 Avg | PGD-10 Worst | PGD-10 Worst 10% |" in fairness.markdown([table])


def test_main_report_writes_the_worst_class_table_and_the_per_class_figure(fair_root, tmp_path, capsys):
    out = str(tmp_path / "report")
    assert report_main([fair_root, "--out", out]) == 0
    printed = capsys.readouterr().out
    with open(os.path.join(out, "tables.md")) as f:
        text = f.read()
    assert text.index("| Method | Clean | FGSM") < text.index(fairness.HEADING)  # the main table first
    assert "| PGDAT | 80.00 ± 0.00 (2) | 60.00 ± 0.00 (2) |" in text
    figure = os.path.join(out, "per_class-CIFAR10-resnet18-paper-eps8.png")
    assert f"wrote {figure}" in printed and f"wrote {os.path.join(out, 'fairness.csv')}" in printed
    with Image.open(figure) as image:
        assert image.size == (round(figures.WIDE[0] * figures.DPI), round(figures.WIDE[1] * figures.DPI))
    with open(os.path.join(out, "tables.tex")) as f:
        assert r"\label{tab:fairness-CIFAR10-resnet18-paper-eps8}" in f.read()


def test_the_per_class_figure_needs_per_class_counts_and_draws_many_classes_as_sorted_curves(tmp_path):
    root = str(tmp_path / "runs")
    write_run(root, "PGDAT", 0, full(80.0, 55.0, 50.0, 49.0, 47.0))  # no counts: no figure
    out = str(tmp_path / "out")
    os.makedirs(out)
    tables, _ = fairness_tables_of(root)
    assert per_class_figures(tables, out) == []
    folder = write_run(root, "ARD", 0, {"natural": 60.0, "pgd10": 30.0}, config={"dataset": "Tiny_Image"})
    add_per_class(folder, {"pgd10": ([c % 7 for c in range(200)], [10] * 200)})
    tables, _ = fairness_tables_of(root)
    written = per_class_figures(tables, out)
    assert [os.path.basename(p) for p in written] == ["per_class-Tiny_Image-resnet18-paper-eps8.png",
                                                      "per_class-Tiny_Image-resnet18-paper-eps8.pdf"]
    with Image.open(written[0]) as image:
        assert image.size == (round(figures.SIZE[0] * figures.DPI), round(figures.SIZE[1] * figures.DPI))
