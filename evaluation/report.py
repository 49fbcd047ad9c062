"""The JSON report of main_eval.py: which report a run may extend, and the printed table."""
import json
import math
import os
from typing import Dict, Optional, Sequence

from runtime.errors import UserError, require_255_units

from .per_class import check_per_class
from .protocols import PROTOCOLS

REPORT_FORMAT = "advkd-eval/2"  # /2: results per radius, under "radii"
OLDER_FORMATS = ("advkd-eval/1",)  # one radius; replaced, never extended
# A report is only extended by a run that evaluates the same thing; these fields say what that is.
# Radii are not among them: a report gathers every radius evaluated on the same images.
IDENTITY = ("dataset", "model", "protocol", "n_examples")
MAX_EPS_255 = 255  # a radius of 255/255 already allows any image: a larger one is a typo


def radius_key(eps_255: float) -> str:
    """A radius's key under a report's "radii": '8', '2.5'."""
    return f"{eps_255:g}"


def check_radius(flag: str, eps_255: float, example: str) -> float:
    """A radius in 1/255 units: finite, > 0, not a fraction (the released scripts' 0.031), at most 255."""
    if not math.isfinite(eps_255):
        raise UserError(f"{flag} must be finite numbers in 1/255 units (1 to {MAX_EPS_255}), got {eps_255}")
    if not eps_255 > 0:
        raise UserError(f"{flag} must be > 0 (in 1/255 units, e.g. 8), got {eps_255:g}")
    require_255_units(flag, eps_255, example)
    if eps_255 > MAX_EPS_255:
        raise UserError(f"{flag} {eps_255:g} is above {MAX_EPS_255}: radii are in 1/255 pixel units, from 1 to "
                        f"{MAX_EPS_255} (255/255 already allows any image), e.g. {example}")
    return eps_255


def load_json(path: str):
    """The JSON value in `path`; ValueError (or OSError) saying why it is not one. Decoding runs no code."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark, as some editors write, is no damage
            return json.load(f)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON, or truncated ({exc.msg} at line {exc.lineno})") from None


def shown(value) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_report(report) -> Dict:
    """`report` if it is a whole report of REPORT_FORMAT: each field that a table, a figure or an extension
    reads holds what it should, and no result claims another seed or batch size than the report's.
    Else ValueError naming the first field that does not."""
    def need(ok: bool, where: str, what: str, value) -> None:
        if not ok:
            raise ValueError(f"{where} is {shown(value)}, not {what}")
    need(isinstance(report, dict), "the file's value", "a JSON object", report)
    fmt = report.get("format")
    if fmt in OLDER_FORMATS:
        raise ValueError(f"its format {fmt} is older than {REPORT_FORMAT}: evaluate the checkpoint again")
    need(fmt == REPORT_FORMAT, '"format"', f'"{REPORT_FORMAT}"', fmt)
    protocol = report.get("protocol")
    need(isinstance(protocol, str) and protocol in PROTOCOLS, '"protocol"', f"one of {', '.join(sorted(PROTOCOLS))}",
         protocol)
    for key in ("dataset", "model"):
        need(isinstance(report.get(key), str), f'"{key}"', "a name", report.get(key))
    for key in ("n_examples", "batch_size"):
        need(isinstance(report.get(key), int) and not isinstance(report.get(key), bool) and report[key] >= 1,
             f'"{key}"', "a positive integer", report.get(key))
    seed = report.get("seed")
    need(isinstance(seed, int) and not isinstance(seed, bool), '"seed"', "an integer", seed)
    checkpoint = report.get("checkpoint")
    need(isinstance(checkpoint, dict), '"checkpoint"', "an object", checkpoint)
    for key in ("path", "sha256"):
        need(isinstance(checkpoint.get(key), str), f'"checkpoint"."{key}"', "a string", checkpoint.get(key))
    num_classes = report.get("num_classes")
    need(num_classes is None or isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 1,
         '"num_classes"', "a positive integer", num_classes)
    names = report.get("class_names")
    need(names is None or isinstance(names, list) and all(isinstance(n, str) for n in names)
         and (num_classes is None or len(names) == num_classes), '"class_names"',
         "a list of names, one per class", names)
    labels = report.get("labels", {})
    need(isinstance(labels, dict) and all(v is None or isinstance(v, str) for v in labels.values()), '"labels"',
         "an object of names", labels)
    radii = report.get("radii")
    need(isinstance(radii, dict), '"radii"', "an object", radii)
    for key, radius in radii.items():
        where = f'"radii"."{key}"'
        need(isinstance(radius, dict), where, "an object", radius)
        eps = radius.get("eps_255")
        need(is_number(eps) and math.isfinite(eps) and eps > 0 and radius_key(eps) == key, f"{where}.eps_255",
             f"the radius {key}", eps)
        results = radius.get("results")
        need(isinstance(results, dict), f"{where}.results", "an object", results)
        for name, entry in results.items():
            need(name in PROTOCOLS[protocol].attacks, f"{where}.results key", f"an attack of --protocol {protocol}",
                 name)
            need(isinstance(entry, dict), f"{where}.results.{name}", "an object", entry)
            accuracy = entry.get("accuracy")
            need(is_number(accuracy) and 0 <= accuracy <= 100, f"{where}.results.{name}.accuracy",
                 "a percentage (0 to 100)", accuracy)
            check_per_class(entry, f"{where}.results.{name}", num_classes, names)  # older reports: none, fine
            params = entry.get("params", {})
            need(isinstance(params, dict), f"{where}.results.{name}.params", "an object", params)
            for setting, top in (("seed", seed), ("batch_size", report["batch_size"])):
                if setting in params and params[setting] != top:
                    raise ValueError(f"{where}.results.{name} was made with {setting} {shown(params[setting])}, but "
                                     f"the report says {setting} {top}: it mixes settings")
        gap = radius.get("variance_gap")
        need(gap is None or isinstance(gap, dict) and is_number(gap.get("value")), f"{where}.variance_gap",
             'null or an object with a numeric "value"', gap)
    return report


def existing_report(out: str) -> Optional[Dict]:
    """The report already at `out`, if any; a file there that is not one is not ours to replace."""
    if not os.path.exists(out):
        return None
    try:
        report = load_json(out)
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


def same_file(recorded: str, path: str) -> bool:
    """Whether a report's checkpoint path names `path` (through links too)."""
    return (os.path.abspath(recorded) == os.path.abspath(path)
            or os.path.realpath(recorded) == os.path.realpath(path))


def report_to_extend(cfg, identity: Dict, sha256: str) -> Dict:
    """The report at --out when this run extends it (same checkpoint and settings), else {} (nothing there,
    --overwrite, an older format, or an earlier version of the same checkpoint file). A report of another
    checkpoint, a damaged one, or one of other settings is refused: --overwrite replaces it."""
    report = cfg.existing_report
    if report is None:
        return {}
    checkpoint = report.get("checkpoint") if isinstance(report.get("checkpoint"), dict) else {}
    path, recorded_sha256 = checkpoint.get("path"), checkpoint.get("sha256")
    if recorded_sha256 != sha256:
        if not isinstance(path, str) or not same_file(path, cfg.model_path):
            what = (f"{path} (sha256 {str(recorded_sha256)[:12]})" if isinstance(path, str) else
                    "a checkpoint it does not name")
            raise UserError(f"{cfg.out} is the report of another checkpoint, {what}, not of {cfg.model_path} "
                            f"(sha256 {sha256[:12]}): it is not replaced; choose another --out, or pass --overwrite "
                            f"to replace it")
        print(f"{cfg.out} describes an earlier version of {cfg.model_path} (the same file, another sha256): "
              f"replacing it", flush=True)
        return {}
    if report.get("format") != REPORT_FORMAT:
        print(f"{cfg.out} is a report of an older format ({report.get('format')}): replacing it", flush=True)
        return {}
    try:
        check_report(report)
    except ValueError as exc:
        raise UserError(f"{cfg.out} is a damaged report ({exc}); choose another --out, or pass --overwrite to "
                        f"replace it") from None
    differences = [f"{key} {report.get(key)!r} (now {identity[key]!r})" for key in IDENTITY
                   if report.get(key) != identity[key]]
    if differences:
        raise UserError(f"{cfg.out} holds an evaluation of this checkpoint with other settings "
                        f"({', '.join(differences)}); choose another --out or pass --overwrite to replace it")
    kept = {(name, key): entry for key, radius in report["radii"].items()
            for name, entry in radius["results"].items()
            if name not in cfg.attack_names or float(key) not in cfg.radii}
    # The report's top level states one --seed and --bs for all of its results, and CW-L2's results one --coeff.
    mixed = [f"--{flag} {before} (now {now})" for flag, before, now in
             (("seed", report["seed"], cfg.seed), ("bs", report["batch_size"], cfg.bs)) if kept and before != now]
    other_c = [entry.get("params", {}).get("c") for (name, _), entry in kept.items() if name == "cw_l2"]
    other_c = list(dict.fromkeys(shown(c) for c in other_c if c != cfg.coeff))
    if other_c and "cw_l2" in cfg.attack_names:
        mixed.append(f"--coeff {', '.join(other_c)} (now {cfg.coeff:g})")
    if mixed:
        raise UserError(f"{cfg.out} holds results of this checkpoint made with {', '.join(mixed)}: one report "
                        f"holds one setting; choose another --out, or pass --overwrite to replace it")
    if kept:
        names = [f"{name} at {key}/255" if name != "natural" else name for name, key in kept]
        print(f"keeping {', '.join(dict.fromkeys(names))} from {cfg.out}", flush=True)
    return report


NOT_RECORDED = "–"  # a result written before per-class counts existed (as main_report.py's empty cells)


def worst_class_text(entry: Dict) -> str:
    """'worst class cat 41.20%' and, where the worst 10% is more than one class, 'worst 10% (10 classes) 35.10%'."""
    worst, fraction = entry.get("worst_class"), entry.get("worst_10pct")
    if worst is None:
        return f"worst class {NOT_RECORDED}"
    text = f"worst class {worst['name']} {worst['accuracy']:.2f}%"
    if fraction is not None and fraction["classes"] > 1:
        text += f", worst {fraction['percent']}% ({fraction['classes']} classes) {fraction['accuracy']:.2f}%"
    return text


def format_table(results: Dict, order: Sequence[str]) -> str:
    """The printed table of one radius: each attack's accuracy, its worst class's, and (100 or 200 classes) the
    mean of its worst 10% of classes."""
    entries = [results[name] for name in order if name in results]
    fractions = any((e.get("worst_10pct") or {}).get("classes", 1) > 1 for e in entries)
    head = f"{'attack':<12} {'protocol':<9} {'accuracy %':>10} {'worst class %':>13}"
    head += f" {'worst 10% %':>11}" if fractions else ""
    lines = [head + f" {'n':>7} {'seconds':>9}  worst class"]
    for e in entries:
        worst, fraction = e.get("worst_class"), e.get("worst_10pct")
        line = f"{e['attack']:<12} {e['protocol']:<9} {e['accuracy']:>10.2f} "
        line += f"{worst['accuracy']:>13.2f}" if worst else f"{NOT_RECORDED:>13}"
        if fractions:
            line += f" {fraction['accuracy']:>11.2f}" if fraction else f" {NOT_RECORDED:>11}"
        line += f" {e['n']:>7} {e['seconds']:>9.1f}  {worst['name'] if worst else NOT_RECORDED}"
        lines.append(line)
    return "\n".join(lines)
