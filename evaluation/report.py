"""The JSON report of main_eval.py: which report a run may extend, and the printed table."""
import json
import os
from typing import Dict, Optional, Sequence

from runtime.errors import UserError

REPORT_FORMAT = "advkd-eval/2"  # /2: results per radius, under "radii"
OLDER_FORMATS = ("advkd-eval/1",)  # one radius; replaced, never extended
# A report is only extended by a run that evaluates the same thing; these fields say what that is.
# Radii are not among them: a report gathers every radius evaluated on the same images.
IDENTITY = ("dataset", "model", "protocol", "n_examples")


def radius_key(eps_255: float) -> str:
    """A radius's key under a report's "radii": '8', '2.5'."""
    return f"{eps_255:g}"


def existing_report(out: str) -> Optional[Dict]:
    """The report already at `out`, if any; a file there that is not one is not ours to replace."""
    if not os.path.exists(out):
        return None
    try:
        with open(out) as f:
            report = json.load(f)
        if not isinstance(report, dict) or report.get("format") not in (REPORT_FORMAT, *OLDER_FORMATS):
            raise ValueError(f"no \"format\": \"{REPORT_FORMAT}\"")
    except (OSError, ValueError) as exc:
        raise UserError(f"{out} exists and is not an evaluation report of this tool ({exc}), so it is not ours to "
                        f"replace (not even with --overwrite); choose another --out") from None
    return report


def refuse_to_replace_a_checkpoint(out: str, model_path: str) -> None:
    """A report path may never name a checkpoint: not the evaluated one, and no .pth/.pt file."""
    same = os.path.abspath(out) == os.path.abspath(model_path) or (
        os.path.exists(out) and os.path.exists(model_path) and os.path.samefile(out, model_path))
    if same or out.lower().endswith((".pth", ".pt")):
        raise UserError(f"--out {out} names a checkpoint{' (the one evaluated)' if same else ''}; the report is "
                        f"JSON and never replaces a checkpoint, not even with --overwrite: choose --out "
                        f"<name>.json (default <model_path>.eval.<protocol>.json)")


def report_to_extend(cfg, identity: Dict, sha256: str) -> Dict:
    """The report at --out when this run extends it (same checkpoint and settings), else {}."""
    report = cfg.existing_report
    if report is None:
        return {}
    if report.get("format") != REPORT_FORMAT:
        print(f"{cfg.out} is a report of an older format ({report.get('format')}): replacing it", flush=True)
        return {}
    if (report.get("checkpoint") or {}).get("sha256") != sha256:
        print(f"{cfg.out} describes an earlier version of {cfg.model_path} (another sha256): replacing it",
              flush=True)
        return {}
    differences = [f"{key} {report.get(key)!r} (now {identity[key]!r})" for key in IDENTITY
                   if report.get(key) != identity[key]]
    if differences:
        raise UserError(f"{cfg.out} holds an evaluation of this checkpoint with other settings "
                        f"({', '.join(differences)}); choose another --out or pass --overwrite to replace it")
    kept = [f"{name} at {key}/255" if name != "natural" else name
            for key, radius in report.get("radii", {}).items() for name in radius.get("results", {})
            if name not in cfg.attack_names or float(key) not in cfg.radii]
    if kept:
        print(f"keeping {', '.join(dict.fromkeys(kept))} from {cfg.out}", flush=True)
    return report


def format_table(results: Dict, order: Sequence[str]) -> str:
    lines = [f"{'attack':<12} {'protocol':<9} {'accuracy %':>10} {'n':>7} {'seconds':>9}"]
    for name in order:
        if name in results:
            e = results[name]
            lines.append(f"{e['attack']:<12} {e['protocol']:<9} {e['accuracy']:>10.2f} {e['n']:>7} {e['seconds']:>9.1f}")
    return "\n".join(lines)
