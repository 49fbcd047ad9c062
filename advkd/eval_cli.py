"""The robustness evaluation behind main_eval.py and main_eval_tinyimagenet.py: load a checkpoint,
run one protocol's attacks (SPEC section 5) on the test set, check the numbers for the signs
reviewers look for, print a table and write a JSON report."""
import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .attacks import ce_sum, module_mode, pyautoattack_version
from .checkpoint import atomic_write_json, load_weights, safe_load, sha256_of
from .cli import HelpFormatter
from .data import Split, dataset_info, load_split, to_float
from .errors import UserError, exit_on_user_error, warn
from .evaluation import FeatureMoments, attack_accuracy
from .models import build_model, is_known_model, model_names
from .protocols import L2_ATTACKS, PROTOCOLS, TITLES, attack_settings, build_attack, parse_attacks
from .runtime import device_name, git_commit, resolve_device, seed_everything

REPORT_FORMAT = "advkd-eval/1"
# A report is only extended by a run that evaluates the same thing; these fields say what that is.
IDENTITY = ("dataset", "model", "protocol", "eps", "n_examples")
MASKING_GAP = 10.0  # AutoAttack this many points below PGD suggests masked gradients
EPS_SLACK = 1e-6    # float32 rounding of x + delta


def build_parser(defaults: Dict, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    p.add_argument("--dataset", default=defaults["dataset"], choices=defaults["datasets"])
    p.add_argument("--model", default="resnet18", help=f"architecture: {', '.join(model_names())}")
    p.add_argument("--model_path", required=True,
                   help="checkpoint: a state dict, or a dict holding one under 'net', 'state_dict' or 'model'; "
                        "'module.'/'model.' key prefixes are accepted")
    p.add_argument("--protocol", default="paper", choices=sorted(PROTOCOLS),
                   help="; ".join(f"{p.name}: {p.description}" for p in PROTOCOLS.values()))
    p.add_argument("--attacks", nargs="+", default=None,
                   help="a subset of the protocol's attacks, separated by spaces or commas "
                        "(paper: natural fgsm pgd10 cw_l2 aa; standard: natural fgsm pgd20 cw_inf aa); "
                        "default: all of them")
    p.add_argument("--eps", type=float, default=8, help="L-inf radius, in 1/255 pixel units")
    p.add_argument("--bs", type=int, default=128, help="batch size (CW-L2's early abort is decided per batch)")
    p.add_argument("--data_dir", default="./data", help="folder holding the dataset's standard layout")
    p.add_argument("--download", action="store_true", help="download CIFAR when missing (needs internet)")
    p.add_argument("--n_ex", type=int, default=0, help="evaluate the first N test images (0 = all)")
    p.add_argument("--gpu_id", type=int, default=0, help="use cuda:<id>; the CPU when CUDA is unavailable")
    p.add_argument("--seed", type=int, default=0, help="seeds the random starts of PGD/CW-inf and AutoAttack")
    p.add_argument("--out", default=None,
                   help="JSON report (default: <model_path>.eval.<protocol>.json); a report of the same "
                        "checkpoint and settings is extended, attacks run again are replaced")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out even if it holds a report of other settings (e.g. another --n_ex)")
    return p


def resolve(cfg: argparse.Namespace) -> argparse.Namespace:
    if not is_known_model(cfg.model):
        raise UserError(f"unknown --model {cfg.model!r}; choose from {', '.join(model_names())}")
    cfg.protocol_spec = PROTOCOLS[cfg.protocol]
    cfg.attack_names = parse_attacks(cfg.attacks, cfg.protocol_spec)
    if not cfg.eps > 0:
        raise UserError(f"--eps must be > 0 (in 1/255 units, e.g. 8), got {cfg.eps:g}")
    if cfg.bs < 1:
        raise UserError(f"--bs must be >= 1, got {cfg.bs}")
    if cfg.n_ex < 0:
        raise UserError(f"--n_ex must be >= 0 (0 = the whole test set), got {cfg.n_ex}")
    if cfg.out is None:
        cfg.out = f"{cfg.model_path}.eval.{cfg.protocol}.json"
    folder = os.path.dirname(os.path.abspath(cfg.out))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UserError(f"cannot write the report {cfg.out}: {folder} is not a writable folder (choose --out)")
    cfg.existing_report = None if cfg.overwrite else existing_report(cfg.out)
    return cfg


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
    model = build_model(cfg.model, num_classes)
    load_weights(model, payload, name=cfg.model, path=cfg.model_path)
    return model, meta


def existing_report(out: str) -> Optional[Dict]:
    """The report already at `out`, if any; a file there that is not one is not ours to replace."""
    if not os.path.exists(out):
        return None
    try:
        with open(out) as f:
            report = json.load(f)
        if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
            raise ValueError(f"no \"format\": \"{REPORT_FORMAT}\"")
    except (OSError, ValueError) as exc:
        raise UserError(f"{out} exists and is not an evaluation report of this tool ({exc}); "
                        f"choose another --out or pass --overwrite") from None
    return report


def report_to_extend(cfg, identity: Dict, sha256: str) -> Dict:
    """The report at --out when this run extends it (same checkpoint and settings), else {}."""
    report = cfg.existing_report
    if report is None:
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
    kept = [name for name in report.get("results", {}) if name not in cfg.attack_names]
    if kept:
        print(f"keeping {', '.join(kept)} from {cfg.out}", flush=True)
    return report


# -- checks ----------------------------------------------------------------------------------------

def model_checks(model: nn.Module, split: Split, batch_size: int) -> Dict:
    """On the first batch: is the forward deterministic in eval mode (no dropout or randomised
    defence left on), and how many examples have an exactly zero input gradient."""
    x = to_float(split.images[:batch_size])
    y = split.labels[:batch_size]
    with module_mode(model, False):
        with torch.no_grad():
            first, second = model(x), model(x)
        x = x.clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(ce_sum(model(x), y), [x])
    zero = (grad.flatten(1).abs().sum(1) == 0).sum().item()
    return {"deterministic_forward": bool(torch.allclose(first, second, rtol=1e-5, atol=1e-6)),
            "zero_gradient_examples": int(zero), "zero_gradient_checked": int(y.shape[0])}


def buffers_of(model: nn.Module) -> List[torch.Tensor]:
    return [b.detach().clone() for b in model.buffers()]


def ordering_warnings(results: Dict, pgd_name: str) -> List[str]:
    """The inequalities a sound evaluation satisfies, and what breaking each one suggests."""
    acc = {name: entry["accuracy"] for name, entry in results.items()}
    found = []

    def above(low, high, meaning):
        if low in acc and high in acc and acc[low] > acc[high]:
            found.append(f"{TITLES[low]} accuracy {acc[low]:.2f}% is above {TITLES[high]} {acc[high]:.2f}%: {meaning}")

    for name in acc:
        if name != "natural":
            above(name, "natural", "an attack that raises accuracy is broken or the model is randomised")
    above(pgd_name, "fgsm", "a multi-step attack weaker than one step is a sign of gradient masking")
    above("aa", pgd_name, "AutoAttack weaker than PGD: check that the model is deterministic and in eval mode")
    if "aa" in acc and pgd_name in acc and acc[pgd_name] - acc["aa"] > MASKING_GAP:
        found.append(f"AutoAttack accuracy {acc['aa']:.2f}% is {acc[pgd_name] - acc['aa']:.1f} points below "
                     f"{TITLES[pgd_name]} {acc[pgd_name]:.2f}%: the model may be masking gradients; "
                     f"trust AutoAttack, not the gradient attacks")
    return found


# -- running ---------------------------------------------------------------------------------------

class Inspected:
    """Wraps an attack and keeps, on the device, the largest perturbation and the pixel range of
    its examples, for the report's checks."""

    def __init__(self, attack):
        self.attack = attack
        self.linf = self.l2 = self.low = self.high = None

    def __call__(self, model, x, y):
        x_adv = self.attack(model, x, y)
        delta = (x_adv - x).flatten(1)
        stats = (delta.abs().amax(), delta.norm(dim=1).amax(), x_adv.amin(), x_adv.amax())
        if self.linf is None:
            self.linf, self.l2, self.low, self.high = stats
        else:
            self.linf, self.l2 = torch.maximum(self.linf, stats[0]), torch.maximum(self.l2, stats[1])
            self.low, self.high = torch.minimum(self.low, stats[2]), torch.maximum(self.high, stats[3])
        return x_adv

    def summary(self) -> Dict:
        if self.linf is None:
            return {}
        return {"max_linf_perturbation": self.linf.item(), "max_l2_perturbation": self.l2.item(),
                "pixel_range": [self.low.item(), self.high.item()]}


def run_attack(name: str, model: nn.Module, split: Split, cfg, device, moments: Optional[FeatureMoments]):
    from tqdm import tqdm
    eps = cfg.eps / 255
    attack = build_attack(name, eps, cfg.seed, device)
    inspected = Inspected(attack) if attack is not None else None
    bar = tqdm(total=len(split), desc=TITLES[name], unit="img", leave=False, dynamic_ncols=True,
               disable=not sys.stderr.isatty())
    start = time.perf_counter()
    accuracy = attack_accuracy(model, split, cfg.bs, attack=inspected, progress=bar.update, moments=moments)
    seconds = time.perf_counter() - start
    bar.close()
    params = attack_settings(name, eps, cfg.seed, cfg.bs)
    if name == "aa":
        params.update(attack.describe())
    entry = {"attack": TITLES[name], "protocol": cfg.protocol, "accuracy": round(accuracy, 4),
             "correct": int(round(accuracy * len(split) / 100)), "n": len(split), "seconds": round(seconds, 3),
             "params": params, "evaluated_at": now()}
    entry.update(inspected.summary() if inspected is not None else {})
    problems = []
    if inspected is not None:
        low, high = entry["pixel_range"]
        if low < 0 or high > 1:
            problems.append(f"{TITLES[name]} produced pixels outside [0,1] ({low:.6f}..{high:.6f})")
        if name not in L2_ATTACKS and entry["max_linf_perturbation"] > eps + EPS_SLACK:
            problems.append(f"{TITLES[name]} exceeded eps: L-inf {entry['max_linf_perturbation']:.6f} > {eps:.6f}")
    return entry, problems, attack


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def format_table(results: Dict, order: Sequence[str]) -> str:
    lines = [f"{'attack':<12} {'protocol':<9} {'accuracy %':>10} {'n':>7} {'seconds':>9}"]
    for name in order:
        if name in results:
            e = results[name]
            lines.append(f"{e['attack']:<12} {e['protocol']:<9} {e['accuracy']:>10.2f} {e['n']:>7} {e['seconds']:>9.1f}")
    return "\n".join(lines)


def evaluate(cfg) -> Dict:
    protocol = cfg.protocol_spec
    info = dataset_info(cfg.dataset)
    device = resolve_device(cfg.gpu_id)
    model, checkpoint_meta = load_model(cfg, info.num_classes)
    sha256 = sha256_of(cfg.model_path)
    identity = {"dataset": cfg.dataset, "model": cfg.model, "protocol": cfg.protocol, "eps": cfg.eps / 255}
    seed_everything(cfg.seed)
    split = load_split(cfg.dataset, cfg.data_dir, "test", device, cfg.n_ex, cfg.download)
    identity["n_examples"] = len(split)
    split_name = "val" if cfg.dataset == "Tiny_Image" else "test"  # Tiny ImageNet's labelled held-out set
    previous = report_to_extend(cfg, identity, sha256)
    results = {name: entry for name, entry in previous.get("results", {}).items() if name not in cfg.attack_names}
    model = model.to(device).eval().requires_grad_(False)
    buffers = buffers_of(model)

    report = dict(identity)
    report.update({
        "format": REPORT_FORMAT, "complete": False, "protocol_description": protocol.description,
        "eps_255": cfg.eps, "num_classes": info.num_classes, "split": split_name,
        "batch_size": cfg.bs, "seed": cfg.seed,
        "checkpoint": dict(path=os.path.abspath(cfg.model_path), sha256=sha256, **checkpoint_meta),
        "versions": {"torch": torch.__version__, "pyautoattack": pyautoattack_version(),
                     "python": platform.python_version(), "advkd_git_commit": git_commit()},
        "device": device_name(device), "command": " ".join(shlex.quote(a) for a in cfg.command),
        "created": now(), "results": results, "attacks": [n for n in protocol.attacks if n in results],
        "variance_gap": previous.get("variance_gap"), "warnings": []})
    print(f"evaluating {cfg.model_path} (sha256 {sha256[:12]}), {cfg.model} on {cfg.dataset} {split_name}, "
          f"n={len(split)}, protocol {cfg.protocol} ({protocol.description}), eps {cfg.eps:g}/255, "
          f"device {report['device']}", flush=True)

    checks = dict(model_checks(model, split, cfg.bs), eval_mode=True)
    warnings = []
    if not checks["deterministic_forward"]:
        warnings.append("two eval-mode forward passes on the same batch differ: the model is randomised "
                        "(dropout or a random defence?); use AutoAttack's 'rand' version, these numbers are unreliable")
    if checks["zero_gradient_examples"]:
        warnings.append(f"{checks['zero_gradient_examples']} of {checks['zero_gradient_checked']} examples have an "
                        f"exactly zero input gradient: the model may be masking gradients, so FGSM/PGD/CW "
                        f"overestimate its robustness; trust AutoAttack (its Square attack needs no gradient)")

    clean_moments = FeatureMoments() if "natural" in cfg.attack_names else None
    adv_moments = FeatureMoments() if protocol.pgd in cfg.attack_names else None
    for name in cfg.attack_names:
        moments = clean_moments if name == "natural" else adv_moments if name == protocol.pgd else None
        entry, problems, attack = run_attack(name, model, split, cfg, device, moments)
        if any(m.training for m in model.modules()):
            problems.append(f"the model was left in train mode after {TITLES[name]}")
            checks["eval_mode"] = False
            model.eval()
        results[name] = entry
        warnings += problems
        line = f"{entry['attack']:<10} {entry['accuracy']:6.2f}%  ({len(split)} images, {entry['seconds']:.1f}s)"
        if name == "aa":
            described = attack.describe()
            line += (f"  [pyautoattack {described['pyautoattack_version']}, version='{described['version']}', "
                     f"{described['norm']}; ran {', '.join(described['attacks_run']) or 'nothing (no robust point)'}"
                     f" of {', '.join(described['attacks_to_run'])}]")
            warnings += [f"AutoAttack: {message}" for message in described["autoattack_warnings"]]
        print(line, flush=True)
        report["results"] = results
        report["attacks"] = [n for n in protocol.attacks if n in results]  # JSON objects have no order
        atomic_write_json(cfg.out, report)  # after each attack: a long run that dies keeps what it finished

    if clean_moments is not None and adv_moments is not None:
        clean_trace, adv_trace = clean_moments.trace_cov(), adv_moments.trace_cov()
        if clean_moments.count >= 2:
            report["variance_gap"] = {
                "value": adv_trace - clean_trace, "trace_cov_adversarial": adv_trace, "trace_cov_clean": clean_trace,
                "adversarial_inputs": protocol.pgd, "n": clean_moments.count,
                "features": "penultimate, globally pooled; covariance centred, 1/(N-1)"}
    checks["buffers_unchanged"] = all(torch.equal(a, b) for a, b in zip(buffers, buffers_of(model)))
    if not checks["buffers_unchanged"]:
        warnings.append("the model's buffers (BatchNorm statistics) changed during the evaluation: "
                        "some attack ran it in train mode; these numbers are not of the saved model")
    ordering = ordering_warnings(results, protocol.pgd)
    checks["ordering_ok"] = not ordering
    warnings += ordering
    for message in warnings:
        warn(message)
    report.update({"checks": checks, "warnings": warnings, "complete": True, "finished": now()})
    atomic_write_json(cfg.out, report)

    print(format_table(results, protocol.attacks))
    gap = report["variance_gap"]
    if gap is not None:
        print(f"variance gap (tr Cov of penultimate features, {TITLES[protocol.pgd]} minus clean): "
              f"{gap['value']:.4f} ({gap['trace_cov_adversarial']:.4f} - {gap['trace_cov_clean']:.4f})")
    print(f"report: {cfg.out}", flush=True)
    return report


def run(defaults: Dict, description: str, argv: Optional[Sequence[str]] = None) -> int:
    cfg = build_parser(defaults, description).parse_args(argv)
    cfg.command = [os.path.basename(sys.argv[0])] + list(sys.argv[1:] if argv is None else argv)
    with exit_on_user_error():
        try:
            evaluate(resolve(cfg))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    return 0
