"""The robustness evaluation behind main_eval.py and main_eval_tinyimagenet.py: load a checkpoint,
run one protocol's attacks (docs/methods.md section 7) on the test set at one or several radii, check
the numbers for the signs reviewers look for, print a table per radius and write one JSON report."""
import argparse
import datetime
import math
import os
import platform
import shlex
import sys
import time
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from attacks import PAPER_CW_L2
from data import DEFAULT_DATA_DIR, Split, dataset_info, load_split
from data.classes import class_names
from models import build_model, is_known_model, model_names
from runtime.checkpoints import atomic_write_json, build_checked, load_weights, safe_load, sha256_of
from runtime.device import device_name, git_commit, resolve_device, seed_everything
from runtime.distributed import launched_world_size, quiet_unless_first
from runtime.errors import OneLineParser, UserError, exit_on_user_error, warn
from runtime.help import HelpFormatter
from runtime.progress import Progress
from teachers import download, zoo

from .accuracy import ClassCounts, FeatureMoments, attack_accuracy
from .autoattack import pyautoattack_version
from .checks import Inspected, buffers_of, model_checks, ordering_warnings
from .per_class import summary as class_summary
from .protocols import L2_ATTACKS, PROTOCOLS, TITLES, attack_settings, build_attack, parse_attacks
from .report import (REPORT_FORMAT, check_radius, existing_report, format_table, radius_key,
                     refuse_to_replace_a_checkpoint, report_to_extend, worst_class_text)

EPS_SLACK = 1e-6    # float32 rounding of x + delta
SEED_LIMIT = 2**64  # torch.manual_seed takes 0..2**64-1 (negative seeds are refused by some torch versions)


def build_parser(defaults: Dict, description: str) -> argparse.ArgumentParser:
    p = OneLineParser(description=description, formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("--dataset", default=defaults["dataset"], choices=defaults["datasets"],
                   help="the dataset whose test split is evaluated (read from --data_dir)")
    p.add_argument("--model", default=None,
                   help=f"architecture (default resnet18; a zoo: --model_path sets it): {', '.join(model_names())}")
    p.add_argument("--model_path", required=True,
                   help="checkpoint: a state dict, or a dict holding one under 'net', 'state_dict' or 'model'; "
                        "'module.'/'model.' key prefixes are accepted; zoo:NAME: a teacher of the zoo by name (in "
                        "the cache, or fetched with --download; docs/teachers.md)")
    p.add_argument("--protocol", default="paper", choices=sorted(PROTOCOLS),
                   help="; ".join(f"{p.name}: {p.description}" for p in PROTOCOLS.values()))
    p.add_argument("--attacks", nargs="+", default=None,
                   help="a subset of the protocol's attacks, separated by spaces or commas "
                        "(paper: natural fgsm pgd10 cw_l2 aa; standard: natural fgsm pgd20 cw_inf aa); "
                        "default: all of them")
    p.add_argument("--eps", default="8",
                   help="L-inf radius, in 1/255 pixel units (8 means 8/255; the authors' scripts take the fraction, "
                        "0.031, which is refused here with this hint); several radii, comma-separated (2,4,8,12,16), "
                        "are evaluated in one call: clean accuracy once, each attack at each radius")
    p.add_argument("--bs", type=int, default=200,
                   help="batch size; 200 as the authors' evaluation (CW-L2's early abort is decided per batch)")
    p.add_argument("--coeff", type=float, default=PAPER_CW_L2["c"], help="CW-L2's constant c, as the authors' --coeff")
    g = p.add_argument_group("the authors' evaluation flags, recorded as labels in the report")
    g.add_argument("--method", default=None, help="how the checkpoint was trained")
    g.add_argument("--teacher_model", default=None, help="the teacher it was distilled from")
    g.add_argument("--steps", default=None, help=argparse.SUPPRESS)
    g.add_argument("--random-start", dest="random_start", nargs="?", const=True, default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR, help="folder holding the dataset's standard layout")
    p.add_argument("--download", action="store_true",
                   help="download CIFAR, and a zoo: --model_path not in the cache yet, when missing (needs internet)")
    p.add_argument("--n_ex", type=int, default=0, help="evaluate the first N test images (0 = all)")
    p.add_argument("--gpu_id", type=int, default=0, help="use cuda:<id>; the CPU when CUDA is unavailable")
    p.add_argument("--seed", type=int, default=0, help="seeds the random starts of PGD/CW-inf and AutoAttack")
    p.add_argument("--out", default=None,
                   help="JSON report (default: <model_path>.eval.<protocol>.json); a report of the same "
                        "checkpoint (sha256) and settings (--n_ex, --seed, --bs, and --coeff for CW-L2) is extended, "
                        "attacks run again are replaced; one of an earlier version of the same checkpoint file is "
                        "replaced; one of another checkpoint or other settings is refused (see --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out even if it holds a report of another checkpoint or of other settings (e.g. "
                        "another --n_ex or --seed); a file "
                        "that is not a report, and any checkpoint, is never replaced")
    return p


def check_settings(cfg: argparse.Namespace) -> argparse.Namespace:
    """The checks of main_eval.py's arguments that need no file: model, protocol, attacks, radii and numbers.
    Raises UserError; never reads or writes a file but the zoo's registry (reproduce.py checks each evaluation job
    with it before starting anything). Sets cfg.protocol_spec, cfg.attack_names and cfg.radii; a zoo:NAME
    --model_path becomes the zoo file's place in the cache (cfg.model_source keeps the name) and sets --model."""
    resolve_model_source(cfg)
    if not is_known_model(cfg.model):
        raise UserError(f"unknown --model {cfg.model!r}; choose from {', '.join(model_names())}")
    if cfg.protocol not in PROTOCOLS:
        raise UserError(f"unknown --protocol {cfg.protocol!r}; choose from {', '.join(sorted(PROTOCOLS))}")
    cfg.protocol_spec = PROTOCOLS[cfg.protocol]
    cfg.attack_names = parse_attacks(cfg.attacks, cfg.protocol_spec)
    for flag in ("steps", "random_start"):
        if getattr(cfg, flag, None) is not None:
            raise UserError(f"--{flag.replace('_', '-')} is ignored by the authors' evaluation code, and here each "
                            f"protocol fixes its attacks' steps and starts: choose them with --protocol and --attacks "
                            f"(pgd10, pgd20)")
    cfg.radii = parse_radii(cfg.eps)
    if not math.isfinite(cfg.coeff):
        raise UserError(f"--coeff must be a finite number, got {cfg.coeff}")
    if not cfg.coeff > 0:
        raise UserError(f"--coeff must be > 0 (the CW-L2 constant, 0.1 in the papers), got {cfg.coeff:g}")
    if cfg.bs < 1:
        raise UserError(f"--bs must be >= 1, got {cfg.bs}")
    if cfg.n_ex < 0:
        raise UserError(f"--n_ex must be >= 0 (0 = the whole test set), got {cfg.n_ex}")
    if not 0 <= cfg.seed < SEED_LIMIT:
        raise UserError(f"--seed must be an integer in 0..2**64-1 (what torch.manual_seed accepts on every "
                        f"version), got {cfg.seed}")
    return cfg


def resolve_model_source(cfg: argparse.Namespace) -> None:
    cfg.model_source = getattr(cfg, "model_source", None)  # check_settings may see its own result again
    parsed = zoo.split_source(cfg.model_path)
    if parsed is not None and parsed[0] == "robustbench":
        raise UserError(f"--model_path {cfg.model_path}: main_eval.py evaluates the architectures of models/ (a zoo: "
                        f"name is one); evaluate a RobustBench model with RobustBench's own benchmark")
    if parsed is not None:
        entry = zoo.entry(parsed[1], cfg.dataset, flag="--model_path")
        if cfg.model is not None and cfg.model != entry.architecture:
            raise UserError(f"--model {cfg.model} conflicts with --model_path {entry.source}, which is a "
                            f"{entry.architecture}: leave --model out (the architecture comes with the name)")
        cfg.model, cfg.model_path, cfg.model_source = entry.architecture, zoo.cached_path(entry), entry.source
    if cfg.model is None:
        cfg.model = "resnet18"


def resolve(cfg: argparse.Namespace) -> argparse.Namespace:
    """check_settings, then the file-system part: a zoo model in the cache (fetched with --download), the --out
    folder and the report already there."""
    check_settings(cfg)
    if cfg.model_source is not None:
        download.ensure(zoo.entry(cfg.model_source[len(zoo.ZOO_PREFIX):], cfg.dataset, flag="--model_path"),
                        cfg.download, "--model_path")
    if cfg.out is None:
        cfg.out = f"{cfg.model_path}.eval.{cfg.protocol}.json"
    folder = os.path.dirname(os.path.abspath(cfg.out))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UserError(f"cannot write the report {cfg.out}: {folder} is not a writable folder (choose --out)")
    refuse_to_replace_a_checkpoint(cfg.out, cfg.model_path)
    report = existing_report(cfg.out)  # a file there that is not a report is refused even with --overwrite
    cfg.existing_report = None if cfg.overwrite else report
    return cfg


def parse_radii(text: str) -> Tuple[float, ...]:
    """'2,4,8' -> (2.0, 4.0, 8.0): distinct radii in 1/255 units, in increasing order."""
    try:
        radii = [float(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--eps {text!r} is not a radius or a comma-separated list of radii in 1/255 units "
                        f"(e.g. 8, or 2,4,8,12,16)") from None
    if not radii:
        raise UserError("--eps is empty; give a radius in 1/255 units, e.g. 8")
    for eps in radii:
        check_radius("--eps", eps, "--eps 8")
    return tuple(sorted(set(radii)))


# -- checkpoint ------------------------------------------------------------------------------------

def load_model(cfg, num_classes: int) -> Tuple[nn.Module, Dict]:
    """The model with the checkpoint's weights, and what the checkpoint says about itself."""
    payload = safe_load(cfg.model_path)
    meta = {}
    if isinstance(payload, dict):
        arch = payload.get("arch")
        if isinstance(arch, str) and arch != cfg.model:
            raise UserError(f"{cfg.model_path} was saved for --model {arch}, not {cfg.model}; pass --model {arch}")
        for key in ("arch", "epoch", "clean_acc", "PGD10_acc", "num_classes"):
            if isinstance(payload.get(key), (int, float, str)):
                meta[key] = payload[key]
        config = payload.get("config")
        if isinstance(config, dict) and isinstance(config.get("method"), str):
            meta["method"] = config["method"]
    model = build_checked(build_model, cfg.model, num_classes, "--model")
    load_weights(model, payload, name=cfg.model, path=cfg.model_path)
    return model, meta


# -- running ---------------------------------------------------------------------------------------

def run_attack(name: str, eps_255: float, model: nn.Module, split: Split, cfg, device,
               moments: Optional[FeatureMoments], names: Sequence[str]):
    eps = eps_255 / 255
    attack = build_attack(name, eps, cfg.seed, device, cw_c=cfg.coeff)
    inspected = Inspected(attack) if attack is not None else None
    start = time.perf_counter()
    title = TITLES[name] if name == "natural" else f"{TITLES[name]} at {eps_255:g}/255"
    with Progress(len(split), title) as progress:
        if name == "aa":  # one batch can take many minutes: say which of its attacks is running
            attack.on_stage = lambda stage: progress.note(f"batch at {progress.done}: running {stage}")
        classes = ClassCounts()  # from the same predictions: worst-class robustness costs no extra pass
        accuracy = attack_accuracy(model, split, cfg.bs, attack=inspected, progress=progress.update,
                                   moments=moments, per_class=classes)
    seconds = time.perf_counter() - start
    params = attack_settings(name, eps, cfg.seed, cfg.bs, cw_c=cfg.coeff)
    if name == "aa":
        params.update(attack.describe())
    entry = {"attack": TITLES[name], "protocol": cfg.protocol, "accuracy": round(accuracy, 4),
             "correct": int(round(accuracy * len(split) / 100)), "n": len(split), "seconds": round(seconds, 3),
             "params": params, "evaluated_at": now()}
    entry.update(class_summary(*classes.counts(), names))
    entry.update(inspected.summary() if inspected is not None else {})
    problems = []
    if inspected is not None:
        low, high = entry["pixel_range"]
        if low < 0 or high > 1:
            problems.append(f"{TITLES[name]} produced pixels outside [0,1] ({low:.6f}..{high:.6f})")
        if name not in L2_ATTACKS and entry["max_linf_perturbation"] > eps + EPS_SLACK:
            problems.append(f"{TITLES[name]} exceeded eps: L-inf {entry['max_linf_perturbation']:.6f} > {eps:.6f}")
    return entry, problems, attack


def named(entry: Dict, names: Sequence[str]) -> Dict:
    """A result kept from the report being extended, its worst class named as this run names the classes (the
    report holds one list of class names; Tiny ImageNet's come from the --data_dir's words.txt)."""
    if entry.get("per_class") is None:
        return entry  # written before per-class counts existed: shown as not recorded
    return dict(entry, **class_summary(entry["per_class"]["correct"], entry["per_class"]["n"], names))


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def evaluate(cfg) -> Dict:
    protocol = cfg.protocol_spec
    info = dataset_info(cfg.dataset)
    device = resolve_device(cfg.gpu_id)
    model, checkpoint_meta = load_model(cfg, info.num_classes)
    sha256 = sha256_of(cfg.model_path)
    identity = {"dataset": cfg.dataset, "model": cfg.model, "protocol": cfg.protocol}
    seed_everything(cfg.seed)
    split = load_split(cfg.dataset, cfg.data_dir, "test", device, cfg.n_ex, cfg.download, subset_flag="--n_ex")
    identity["n_examples"] = len(split)
    names = class_names(cfg.dataset, info.num_classes, cfg.data_dir)
    split_name = "val" if cfg.dataset == "Tiny_Image" else "test"  # Tiny ImageNet's labelled held-out set
    previous = report_to_extend(cfg, identity, sha256)
    # Radii evaluated before and not now are kept whole, their worst classes named as this run names the classes.
    radii = {key: dict(radius, results={n: named(e, names) for n, e in radius["results"].items()})
             for key, radius in previous.get("radii", {}).items()}
    for eps_255 in cfg.radii:
        kept = radii.get(radius_key(eps_255), {})
        radii[radius_key(eps_255)] = {
            "eps": eps_255 / 255, "eps_255": eps_255,
            "results": {n: e for n, e in kept.get("results", {}).items() if n not in cfg.attack_names},
            "attacks": [], "variance_gap": kept.get("variance_gap")}
    model = model.to(device).eval().requires_grad_(False)
    buffers = buffers_of(model)

    report = dict(identity)
    report.update({
        "format": REPORT_FORMAT, "complete": False, "protocol_description": protocol.description,
        "num_classes": info.num_classes, "class_names": names, "split": split_name,
        "batch_size": cfg.bs, "seed": cfg.seed, "labels": {"method": cfg.method, "teacher_model": cfg.teacher_model},
        "checkpoint": dict(path=os.path.abspath(cfg.model_path), sha256=sha256, **checkpoint_meta,
                           **({"source": cfg.model_source} if getattr(cfg, "model_source", None) else {})),
        "versions": {"torch": torch.__version__, "pyautoattack": pyautoattack_version(),
                     "python": platform.python_version(), "advkd_git_commit": git_commit()},
        "device": device_name(device), "command": " ".join(shlex.quote(a) for a in cfg.command),
        "created": now(), "eps_255": [], "radii": {}, "warnings": []})

    def save() -> None:  # after each attack: a long run that dies keeps what it finished
        for entry in radii.values():
            entry["attacks"] = [n for n in protocol.attacks if n in entry["results"]]  # JSON objects have no order
        ordered = sorted(radii.values(), key=lambda entry: entry["eps_255"])
        report["radii"] = {radius_key(entry["eps_255"]): entry for entry in ordered}
        report["eps_255"] = [entry["eps_255"] for entry in ordered]
        atomic_write_json(cfg.out, report)

    print(f"evaluating {cfg.model_path} (sha256 {sha256[:12]}), {cfg.model} on {cfg.dataset} {split_name}, "
          f"n={len(split)}, protocol {cfg.protocol} ({protocol.description}), eps "
          f"{', '.join(f'{e:g}' for e in cfg.radii)}/255, device {report['device']}", flush=True)

    checks = dict(model_checks(model, split, cfg.bs), eval_mode=True)
    warnings = []
    if not checks["finite_outputs"]:
        warnings.append("the model's outputs are not finite (NaN or inf) on the first batch: the checkpoint's "
                        "weights are broken (a diverged run?), so every accuracy below is meaningless")
    if not checks["deterministic_forward"]:
        warnings.append("two eval-mode forward passes on the same batch differ: the model is randomised "
                        "(dropout or a random defence?); use AutoAttack's 'rand' version, these numbers are unreliable")
    if checks["zero_gradient_examples"]:
        warnings.append(f"{checks['zero_gradient_examples']} of {checks['zero_gradient_checked']} examples have an "
                        f"exactly zero input gradient: the model may be masking gradients, so FGSM/PGD/CW "
                        f"overestimate its robustness; trust AutoAttack (its Square attack needs no gradient)")

    clean_moments = FeatureMoments() if "natural" in cfg.attack_names else None
    # Clean accuracy does not depend on the radius: measured once, recorded at every radius of this call.
    jobs = [("natural", cfg.radii[0])] if "natural" in cfg.attack_names else []
    jobs += [(name, eps_255) for eps_255 in cfg.radii for name in cfg.attack_names if name != "natural"]
    for name, eps_255 in jobs:
        adv_moments = FeatureMoments() if name == protocol.pgd and clean_moments is not None else None
        moments = clean_moments if name == "natural" else adv_moments
        entry, problems, attack = run_attack(name, eps_255, model, split, cfg, device, moments, names)
        if any(m.training for m in model.modules()):
            problems.append(f"the model was left in train mode after {TITLES[name]}")
            checks["eval_mode"] = False
            model.eval()
        for radius in (cfg.radii if name == "natural" else (eps_255,)):
            radii[radius_key(radius)]["results"][name] = entry
        warnings += problems
        at = "" if name == "natural" else f" at {eps_255:g}/255"
        line = (f"{entry['attack'] + at:<18} {entry['accuracy']:6.2f}%  ({len(split)} images, {entry['seconds']:.1f}s)"
                f"; {worst_class_text(entry)}")
        if name == "aa":
            described = attack.describe()
            line += (f"  [pyautoattack {described['pyautoattack_version']}, version='{described['version']}', "
                     f"{described['norm']}; ran {', '.join(described['attacks_run']) or 'nothing (no robust point)'}"
                     f" of {', '.join(described['attacks_to_run'])}]")
            warnings += [f"AutoAttack: {message}" for message in described["autoattack_warnings"]]
        print(line, flush=True)
        if adv_moments is not None and clean_moments.count >= 2:
            clean_trace, adv_trace = clean_moments.trace_cov(), adv_moments.trace_cov()
            radii[radius_key(eps_255)]["variance_gap"] = {
                "value": adv_trace - clean_trace, "trace_cov_adversarial": adv_trace, "trace_cov_clean": clean_trace,
                "adversarial_inputs": protocol.pgd, "n": clean_moments.count,
                "features": "penultimate, globally pooled; covariance centred, 1/(N-1)"}
        save()

    checks["buffers_unchanged"] = all(torch.equal(a, b) for a, b in zip(buffers, buffers_of(model)))
    if not checks["buffers_unchanged"]:
        warnings.append("the model's buffers (BatchNorm statistics) changed during the evaluation: "
                        "some attack ran it in train mode; these numbers are not of the saved model")
    ordering = []
    for eps_255 in cfg.radii:
        found = ordering_warnings(radii[radius_key(eps_255)]["results"], protocol.pgd)
        ordering += [f"at {eps_255:g}/255: {message}" for message in found] if len(cfg.radii) > 1 else found
    checks["ordering_ok"] = not ordering
    warnings += ordering
    for message in warnings:
        warn(message)
    report.update({"checks": checks, "warnings": warnings, "complete": True, "finished": now()})
    save()

    for eps_255 in cfg.radii:
        radius = radii[radius_key(eps_255)]
        print(f"\neps {eps_255:g}/255")
        print(format_table(radius["results"], protocol.attacks))
        gap = radius["variance_gap"]
        if gap is not None:
            print(f"variance gap (tr Cov of penultimate features, {TITLES[protocol.pgd]} minus clean): "
                  f"{gap['value']:.4f} ({gap['trace_cov_adversarial']:.4f} - {gap['trace_cov_clean']:.4f})")
    print(f"report: {cfg.out}", flush=True)
    return report


def main(defaults: Dict, description: str, argv: Optional[Sequence[str]] = None) -> int:
    quiet_unless_first()
    with exit_on_user_error():
        try:
            if launched_world_size() > 1:
                raise UserError("main_eval.py evaluates in one process: run it with python, not torchrun (under "
                                "torchrun, training runs shard their per-epoch evaluation)")
            cfg = build_parser(defaults, description).parse_args(argv)
            cfg.command = [os.path.basename(sys.argv[0])] + list(sys.argv[1:] if argv is None else argv)
            evaluate(resolve(cfg))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    return 0
