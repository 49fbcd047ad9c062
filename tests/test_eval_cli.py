"""main_eval: the report's schema and labels, --n_ex and --attacks, every checkpoint format, the
sanity warnings, extending a report, and every bad input as a one-line error with exit status 2."""
import argparse
import hashlib
import json
import os

import pytest
import torch

from evaluation import cli as eval_cli
from models import build_model
from helpers import run_script

CIFAR = {"dataset": "CIFAR10", "datasets": ["CIFAR10", "CIFAR100"]}
MODEL = "wideresnet10_1"


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    return build_model(MODEL, 10).state_dict()


@pytest.fixture
def checkpoint(tmp_path, weights):
    path = tmp_path / "best_PGD10_acc_model.pth"
    torch.save({"net": weights, "arch": MODEL, "epoch": 3, "clean_acc": 10.0}, path)
    return str(path)


def evaluate(data_dir, *args, model=MODEL):
    return eval_cli.main(CIFAR, "test", ["--model", model, "--data_dir", data_dir, *args])


def failure(capsys, data_dir, *args, **kwargs):
    """The one error line of a run that must fail with exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        evaluate(data_dir, *args, **kwargs)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err
    return errors[0]


def load(path):
    with open(path) as f:
        return json.load(f)


# -- the report --------------------------------------------------------------------------------------

def test_paper_report_schema_labels_and_table(real_data_dir, checkpoint, capsys):
    assert evaluate(real_data_dir, "--model_path", checkpoint, "--attacks", "natural,fgsm", "pgd10",
                    "--n_ex", "6", "--bs", "4") == 0
    out = capsys.readouterr().out
    report = load(checkpoint + ".eval.paper.json")  # the default --out
    assert report["format"] == "advkd-eval/2" and report["complete"] is True
    assert report["protocol"] == "paper" and report["protocol_description"].startswith("DGAD/AdaAD")
    assert report["dataset"] == "CIFAR10" and report["model"] == MODEL and report["num_classes"] == 10
    assert report["n_examples"] == 6 and report["eps_255"] == [8] and list(report["radii"]) == ["8"]
    radius = report["radii"]["8"]
    assert radius["eps"] == pytest.approx(8 / 255) and radius["eps_255"] == 8
    assert report["batch_size"] == 4 and report["seed"] == 0 and report["device"] == "cpu"
    with open(checkpoint, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    assert report["checkpoint"] == {"path": os.path.abspath(checkpoint), "sha256": sha256, "arch": MODEL,
                                    "epoch": 3, "clean_acc": 10.0}
    assert report["versions"]["torch"] == torch.__version__ and report["versions"]["pyautoattack"] == "0.2.0"
    assert radius["attacks"] == ["natural", "fgsm", "pgd10"] and set(radius["results"]) == set(radius["attacks"])
    for name, title in [("natural", "Natural"), ("fgsm", "FGSM"), ("pgd10", "PGD-10")]:
        entry = radius["results"][name]
        assert entry["attack"] == title and entry["protocol"] == "paper" and entry["n"] == 6
        assert 0 <= entry["accuracy"] <= 100 and entry["correct"] == round(entry["accuracy"] * 6 / 100)
        assert entry["seconds"] >= 0 and isinstance(entry["params"], dict)
    assert radius["results"]["pgd10"]["params"] == {"eps": pytest.approx(8 / 255), "step_size": pytest.approx(2 / 255),
                                                    "steps": 10, "loss": "cross-entropy",
                                                    "init": "uniform U(-eps, eps), clamped", "seed": 0}
    assert radius["results"]["fgsm"]["params"]["steps"] == 1 and radius["results"]["fgsm"]["params"]["init"] == "none"
    assert radius["results"]["pgd10"]["max_linf_perturbation"] <= 8 / 255 + 1e-6
    gap = radius["variance_gap"]
    assert gap["adversarial_inputs"] == "pgd10" and gap["n"] == 6
    assert gap["value"] == pytest.approx(gap["trace_cov_adversarial"] - gap["trace_cov_clean"])
    assert report["checks"]["eval_mode"] and report["checks"]["deterministic_forward"]
    assert report["checks"]["buffers_unchanged"] and report["checks"]["zero_gradient_checked"] == 4
    assert isinstance(report["warnings"], list)
    table = out[out.index("attack "):].splitlines()
    assert table[0].split() == ["attack", "protocol", "accuracy", "%", "worst", "class", "%", "n", "seconds", "worst",
                                "class"]  # docs/evaluation.md, "Worst-class robustness"
    assert [row.split()[:2] for row in table[1:4]] == [["Natural", "paper"], ["FGSM", "paper"], ["PGD-10", "paper"]]
    assert "variance gap" in out


def test_standard_protocol_runs_pgd20_and_cw_inf_under_its_own_label(real_data_dir, checkpoint, capsys):
    assert evaluate(real_data_dir, "--model_path", checkpoint, "--protocol", "standard", "--attacks",
                    "cw_inf,natural,pgd20", "--n_ex", "5") == 0
    report = load(checkpoint + ".eval.standard.json")
    assert report["protocol"] == "standard" and report["protocol_description"].startswith("ARD/IAD/RSLAD")
    radius = report["radii"]["8"]
    assert radius["attacks"] == ["natural", "pgd20", "cw_inf"]  # the protocol's order
    assert {e["protocol"] for e in radius["results"].values()} == {"standard"}
    assert radius["results"]["cw_inf"]["params"]["steps"] == 30
    assert radius["results"]["cw_inf"]["params"]["confidence"] == 50.0
    assert radius["variance_gap"]["adversarial_inputs"] == "pgd20"
    assert "CW-inf       standard" in capsys.readouterr().out


def test_n_ex_takes_the_first_images(real_data_dir, checkpoint, tmp_path):
    for n in (3, 7):
        out = tmp_path / f"n{n}.json"
        assert evaluate(real_data_dir, "--model_path", checkpoint, "--attacks", "natural", "--n_ex", str(n),
                        "--out", str(out)) == 0
        report = load(out)
        assert report["n_examples"] == n and report["radii"]["8"]["results"]["natural"]["n"] == n
        assert report["radii"]["8"]["variance_gap"] is None  # needs the protocol's PGD as well


def test_every_checkpoint_format_loads_the_same_weights(tmp_path, weights):
    wrn_block1 = {k: v for k, v in weights.items() if k.startswith("block1.")}
    formats = {
        "raw": weights,
        "net": {"net": weights},
        "state_dict": {"state_dict": weights},
        "model": {"model": weights, "epoch": 7},
        "module_prefix": {"state_dict": {f"module.{k}": v for k, v in weights.items()}},
        "model_prefix": {f"model.{k}": v for k, v in weights.items()},
        "with_sub_block1": dict(weights, **{"sub_" + k: v for k, v in wrn_block1.items()}),
    }
    assert wrn_block1
    for name, payload in formats.items():
        path = tmp_path / f"{name}.pt"
        torch.save(payload, path)
        model, _ = eval_cli.load_model(argparse.Namespace(model_path=str(path), model=MODEL), 10)
        loaded = model.state_dict()
        assert loaded.keys() == weights.keys(), name
        assert all(torch.equal(loaded[k], weights[k]) for k in weights), name


def test_published_layout_runs_end_to_end(real_data_dir, tmp_path, weights):
    # e.g. TRADES' model_cifar_wrn.pt: a plain state dict with the unused sub_block1 group.
    path = tmp_path / "model_cifar_wrn.pt"
    torch.save(dict(weights, **{"sub_" + k: v for k, v in weights.items() if k.startswith("block1.")}), path)
    assert evaluate(real_data_dir, "--model_path", str(path), "--attacks", "natural", "--n_ex", "4") == 0
    assert load(f"{path}.eval.paper.json")["radii"]["8"]["results"]["natural"]["n"] == 4


# -- extending a report --------------------------------------------------------------------------------

def test_a_report_is_extended_by_the_same_evaluation_and_protected_from_another(real_data_dir, checkpoint,
                                                                                capsys):
    out = checkpoint + ".eval.paper.json"
    evaluate(real_data_dir, "--model_path", checkpoint, "--attacks", "natural", "--n_ex", "4")
    first = load(out)["radii"]["8"]["results"]["natural"]
    evaluate(real_data_dir, "--model_path", checkpoint, "--attacks", "fgsm", "--n_ex", "4")
    report = load(out)
    assert report["radii"]["8"]["attacks"] == ["natural", "fgsm"] and report["radii"]["8"]["results"]["natural"] == first
    capsys.readouterr()

    error = failure(capsys, real_data_dir, "--model_path", checkpoint, "--attacks", "natural", "--n_ex", "5")
    assert "n_examples 4 (now 5)" in error and "--overwrite" in error
    assert load(out) == report  # untouched

    evaluate(real_data_dir, "--model_path", checkpoint, "--attacks", "natural", "--n_ex", "5", "--overwrite")
    assert list(load(out)["radii"]["8"]["results"]) == ["natural"] and load(out)["n_examples"] == 5

    torch.save({"net": build_model(MODEL, 10).state_dict()}, checkpoint)  # retrained: another sha256
    evaluate(real_data_dir, "--model_path", checkpoint, "--attacks", "fgsm", "--n_ex", "4")
    assert list(load(out)["radii"]["8"]["results"]) == ["fgsm"]
    assert "earlier version" in capsys.readouterr().out


def test_several_radii_in_one_call_share_clean_accuracy_and_extend_one_report(real_data_dir, checkpoint, capsys):
    out = checkpoint + ".eval.paper.json"
    assert evaluate(real_data_dir, "--model_path", checkpoint, "--attacks", "natural", "pgd10", "--eps", "8,2",
                    "--n_ex", "6") == 0
    printed = capsys.readouterr().out
    assert printed.count("Natural ") == 3  # measured once (one line), then in the table of each radius
    report = load(out)
    assert report["eps_255"] == [2, 8] and list(report["radii"]) == ["2", "8"]
    small, large = report["radii"]["2"], report["radii"]["8"]
    assert small["results"]["natural"] == large["results"]["natural"]
    assert small["results"]["pgd10"]["params"]["eps"] == pytest.approx(2 / 255)
    assert small["results"]["pgd10"]["max_linf_perturbation"] <= 2 / 255 + 1e-6
    assert large["results"]["pgd10"]["max_linf_perturbation"] > 2 / 255  # the larger radius is used
    assert small["results"]["pgd10"]["accuracy"] >= large["results"]["pgd10"]["accuracy"]
    for radius in (small, large):  # one gap per radius, each against the same clean features
        gap = radius["variance_gap"]
        assert gap["trace_cov_clean"] == small["variance_gap"]["trace_cov_clean"] and gap["n"] == 6
    assert small["variance_gap"]["trace_cov_adversarial"] != large["variance_gap"]["trace_cov_adversarial"]

    # Another radius later extends the same report; the radii already there are kept whole.
    assert evaluate(real_data_dir, "--model_path", checkpoint, "--attacks", "fgsm", "--eps", "4", "--n_ex", "6") == 0
    extended = load(out)
    assert extended["eps_255"] == [2, 4, 8] and extended["radii"]["8"] == large
    assert extended["radii"]["4"]["attacks"] == ["fgsm"] and extended["radii"]["4"]["variance_gap"] is None


def test_a_report_of_the_older_one_radius_format_is_replaced(real_data_dir, checkpoint, capsys):
    out = checkpoint + ".eval.paper.json"
    with open(checkpoint, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    with open(out, "w") as f:
        json.dump({"format": "advkd-eval/1", "results": {}, "checkpoint": {"path": checkpoint, "sha256": sha256}}, f)
    assert evaluate(real_data_dir, "--model_path", checkpoint, "--attacks", "natural", "--n_ex", "3") == 0
    assert "older format (advkd-eval/1): replacing it" in capsys.readouterr().out
    assert load(out)["format"] == "advkd-eval/2"


# -- sanity checks ----------------------------------------------------------------------------------

def test_zero_input_gradients_are_flagged_as_possible_masking(real_data_dir, tmp_path, weights, capsys):
    flat = dict(weights, **{"fc.weight": torch.zeros_like(weights["fc.weight"])})  # logits ignore the input
    path = tmp_path / "flat.pt"
    torch.save(flat, path)
    assert evaluate(real_data_dir, "--model_path", str(path), "--attacks", "natural", "--n_ex", "4") == 0
    report = load(f"{path}.eval.paper.json")
    assert report["checks"]["zero_gradient_examples"] == 4
    assert any("masking gradients" in w for w in report["warnings"])
    assert "masking gradients" in capsys.readouterr().err


def test_ordering_warnings_by_hand():
    def results(**acc):
        return {name: {"accuracy": value} for name, value in acc.items()}
    assert eval_cli.ordering_warnings(results(natural=80, fgsm=50, pgd10=45, aa=41), "pgd10") == []
    found = eval_cli.ordering_warnings(results(natural=80, fgsm=40, pgd10=45, aa=30, cw_l2=81), "pgd10")
    assert len(found) == 3
    assert found[0].startswith("CW-L2 accuracy 81.00% is above Natural 80.00%")
    assert found[1].startswith("PGD-10 accuracy 45.00% is above FGSM 40.00%") and "gradient masking" in found[1]
    assert found[2].startswith("AutoAttack accuracy 30.00% is 15.0 points below PGD-10")
    found = eval_cli.ordering_warnings(results(natural=80, pgd20=45, aa=46), "pgd20")
    assert len(found) == 1 and found[0].startswith("AutoAttack accuracy 46.00% is above PGD-20 45.00%")


# -- bad input ------------------------------------------------------------------------------------------

def test_bad_inputs_are_one_line_errors_and_write_nothing(real_data_dir, tmp_path, checkpoint, weights, capsys):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02not a checkpoint" * 10)
    other_arch = tmp_path / "wrn16.pth"
    torch.save(build_model("wideresnet16_1", 10).state_dict(), other_arch)
    hundred = tmp_path / "c100.pth"
    torch.save(build_model(MODEL, 100).state_dict(), hundred)
    text = tmp_path / "notes.txt"
    text.write_text("a note\n")
    report = tmp_path / "report.data"
    report.write_text('{"format": "advkd-eval/1"}')
    labelled = tmp_path / "labelled.pth"
    torch.save({"net": weights, "arch": "resnet18"}, labelled)
    cases = [
        (["--model_path", str(tmp_path / "missing.pth")], "checkpoint not found"),
        (["--model_path", str(corrupt)], "is not a checkpoint: its bytes are not a torch.save file"),
        (["--model_path", str(text)], "is not a checkpoint: it looks like a text file"),
        (["--model_path", str(report)], "is not a checkpoint: it looks like JSON"),
        (["--model_path", str(tmp_path)], "is a directory, not a checkpoint file"),
        (["--model_path", str(other_arch)], "does not fit architecture"),
        (["--model_path", str(hundred)], "100 classes"),
        (["--model_path", str(labelled)], "saved for --model resnet18"),
        (["--model_path", checkpoint, "--attacks", "pgd"], "unknown attack 'pgd'"),
        (["--model_path", checkpoint, "--attacks", "natural,pgd20"], "belongs to --protocol standard"),
        (["--model_path", checkpoint, "--protocol", "standard", "--attacks", "cw_l2"], "belongs to --protocol paper"),
        (["--model_path", checkpoint, "--attacks", ","], "--attacks is empty"),
        (["--model_path", checkpoint, "--eps", "0"], "--eps must be > 0"),
        (["--model_path", checkpoint, "--eps", "2,0.03"], "--eps 0.03 is below 1"),
        (["--model_path", checkpoint, "--eps", "2,x"], "comma-separated list of radii"),
        (["--model_path", checkpoint, "--eps", ","], "--eps is empty"),
        (["--model_path", checkpoint, "--bs", "0"], "--bs must be >= 1"),
        (["--model_path", checkpoint, "--n_ex", "-1"], "--n_ex must be >= 0"),
        (["--model_path", checkpoint, "--out", str(tmp_path / "no" / "r.json")], "not a writable folder"),
    ]
    for args, expected in cases:
        assert expected in failure(capsys, real_data_dir, *args), args
    assert "unknown --model" in failure(capsys, real_data_dir, "--model_path", checkpoint, model="wideresnet11_1")
    assert "is too large to allocate" in failure(capsys, real_data_dir, "--model_path", str(other_arch),
                                                 model="wideresnet34_100000")
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".json") and f != "notes.json"]
    foreign = tmp_path / "notes.json"
    foreign.write_text("[1, 2]")
    assert "not an evaluation report" in failure(capsys, real_data_dir, "--model_path", checkpoint,
                                                 "--attacks", "natural", "--out", str(foreign))
    assert foreign.read_text() == "[1, 2]"


@pytest.mark.slow  # a subprocess
def test_entry_scripts_exit_2_on_bad_input_without_a_traceback(tmp_path, checkpoint):
    for script in ("main_eval.py", "main_eval_tinyimagenet.py"):
        result = run_script(script, "--model", MODEL, "--model_path", checkpoint, "--attacks", "bogus")
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error: unknown attack 'bogus'")
        assert "Traceback" not in result.stderr


def test_non_finite_outputs_and_a_too_large_n_ex_are_said(real_data_dir, tmp_path, weights, capsys):
    broken = {k: (torch.full_like(v, float("nan")) if k == "fc.weight" else v) for k, v in weights.items()}
    path = tmp_path / "nan.pth"
    torch.save(broken, path)
    assert evaluate(real_data_dir, "--model_path", str(path), "--attacks", "natural", "--n_ex", "8") == 0
    assert "outputs are not finite (NaN or inf)" in capsys.readouterr().err
    assert load(f"{path}.eval.paper.json")["checks"]["finite_outputs"] is False
    good = tmp_path / "good.pth"
    torch.save(weights, good)
    assert evaluate(real_data_dir, "--model_path", str(good), "--attacks", "natural", "--n_ex", "20000") == 0
    assert "--n_ex 20000 is larger than the test split (10000 images)" in capsys.readouterr().err
