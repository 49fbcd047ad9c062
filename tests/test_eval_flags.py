"""main_eval.py's defaults and the released evaluation scripts' command-line habits: each gets its
meaning here or a one-line error that says what to use instead."""
import argparse

import pytest

import main_eval
from evaluation.cli import build_parser, resolve
from evaluation.protocols import attack_settings, build_attack
from runtime.errors import UserError


def parse(tmp_path, *flags):
    args = build_parser(main_eval.DEFAULTS, "test").parse_args(
        ["--model_path", str(tmp_path / "m.pth"), "--out", str(tmp_path / "r.json"), *flags])
    return resolve(args)


def test_defaults_follow_the_authors_evaluation(tmp_path):
    cfg = parse(tmp_path)
    assert (cfg.bs, cfg.radii, cfg.coeff, cfg.method, cfg.teacher_model) == (200, (8.0,), 0.1, None, None)


@pytest.mark.parametrize("flags, message", [
    (("--eps", "0.0314"), "--eps 0.0314 is below 1: --eps counts 1/255 pixel units.*as --eps 8"),
    (("--steps", "20"), "--steps is ignored by the authors' evaluation code.*--attacks"),
    (("--random-start",), "--random-start is ignored by the authors' evaluation code"),
    (("--random-start", "True"), "--random-start is ignored"),
    (("--coeff", "0"), "--coeff must be > 0"),
])
def test_the_authors_flags_get_a_one_line_answer(tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        parse(tmp_path, *flags)


def test_coeff_is_the_cw_l2_constant_and_labels_are_kept(tmp_path):
    cfg = parse(tmp_path, "--coeff", "0.25", "--method", "DGAD", "--teacher_model", "wideresnet34_10")
    assert (cfg.method, cfg.teacher_model) == ("DGAD", "wideresnet34_10")
    assert build_attack("cw_l2", 8 / 255, 0, "cpu", cw_c=cfg.coeff).keywords["c"] == 0.25
    assert attack_settings("cw_l2", 8 / 255, 0, 200, cw_c=0.25)["c"] == 0.25
    assert isinstance(cfg, argparse.Namespace)


def test_a_report_never_replaces_a_checkpoint_or_a_foreign_file(tmp_path):
    model = tmp_path / "m.pth"
    model.write_bytes(b"weights")
    other = tmp_path / "other.pt"
    other.write_bytes(b"weights")
    notes = tmp_path / "notes.json"
    notes.write_text("[1, 2]")
    for out, message in ((model, r"names a checkpoint \(the one evaluated\)"), (other, "names a checkpoint"),
                         (tmp_path / "new.pth", "names a checkpoint"), (notes, "is not an evaluation report")):
        args = build_parser(main_eval.DEFAULTS, "test").parse_args(
            ["--model_path", str(model), "--out", str(out), "--overwrite"])
        with pytest.raises(UserError, match=message):
            resolve(args)
    assert model.read_bytes() == b"weights" and other.read_bytes() == b"weights" and notes.read_text() == "[1, 2]"
    assert not (tmp_path / "new.pth").exists()


def test_every_flag_of_both_command_lines_explains_itself():
    import main
    from training.config import build_parser as training_parser
    for parser in (training_parser(main.DEFAULTS, "test"), build_parser(main_eval.DEFAULTS, "test")):
        silent = [a.option_strings for a in parser._actions if not a.help and a.option_strings]
        assert silent == []
