"""Any RobustBench model as a teacher, through the `robustbench` package's own `load_model`.

The package is optional (requirements-robustbench.txt). Its checkpoints live in our teacher cache, in the layout
robustbench itself reads (`<cache>/robustbench/<dataset>/<threat>/<name>.pt`), and nothing is downloaded unless
the caller asks. A cached file is decoded with weights_only (runtime.checkpoints.safe_load) before robustbench
unpickles it, so a crafted pickle runs nothing and a Google Drive HTML page left in its place is named as such.
"""
import contextlib
import glob
import importlib
import importlib.util
import os
import sys
import warnings
from typing import Tuple

import torch.nn as nn

from runtime.checkpoints import safe_load
from runtime.errors import UserError, report

from .download import checkpoint_kind, describe_body, folder_lock
from .zoo import close_names, cache_dir

INSTALL = "pip install robustbench==1.1.1 setuptools==80.9.0 (or pip install -r requirements-robustbench.txt)"
# Our dataset names -> robustbench's; Tiny ImageNet has no RobustBench leaderboard.
DATASETS = {"CIFAR10": "cifar10", "CIFAR100": "cifar100"}
LEADERBOARD = "https://robustbench.github.io"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else 'no detail'}"


def model_dir() -> str:
    """robustbench's `model_dir` in our teacher cache: it reads `<model_dir>/<dataset>/<threat>/<name>.pt`."""
    return os.path.join(cache_dir(), "robustbench")


def import_robustbench():
    """`robustbench` (with `robustbench.utils` and its model zoo) imported, or one line naming the install.

    robustbench imports `autoattack`, the fra31 code that PyPI ships as `pyautoattack` (no `autoattack` exists
    on PyPI): where no real `autoattack` is importable, `pyautoattack` is registered under that name first."""
    try:
        if importlib.util.find_spec("autoattack") is None and importlib.util.find_spec("pyautoattack") is not None:
            import pyautoattack
            import pyautoattack.state
            sys.modules["autoattack"] = pyautoattack
            sys.modules["autoattack.state"] = pyautoattack.state
        with warnings.catch_warnings():  # pkg_resources' and timm's deprecation notices at import time
            warnings.simplefilter("ignore")
            robustbench = importlib.import_module("robustbench")
            importlib.import_module("robustbench.utils")
            importlib.import_module("robustbench.model_zoo")
    except ImportError as exc:
        if exc.name == "robustbench":
            raise UserError(f"a robustbench: teacher needs the robustbench package, which is not installed: "
                            f"{INSTALL}") from None
        raise UserError(f"robustbench is installed but does not import ({_first_line(exc)}); {INSTALL}") from None
    except Exception as exc:  # e.g. a torchvision built for another torch fails inside its own import
        raise UserError(f"robustbench is installed but does not import ({_first_line(exc)}); "
                        f"torchvision must be the build of the installed torch (see README), then {INSTALL}") from None
    return robustbench


def _zoo(robustbench):
    """{(dataset, threat): {name: entry}} over robustbench's whole model zoo, in its own order."""
    model_dicts = sys.modules["robustbench.model_zoo"].model_dicts
    return {(ds.value, tm.value): models for ds, threats in model_dicts.items() for tm, models in threats.items()}


def find_entry(name: str, dataset: str, threat: str = "Linf") -> dict:
    """The robustbench model-zoo entry of `name` for our `dataset` and `threat`, or one line saying why not."""
    robustbench = import_robustbench()
    if dataset not in DATASETS:
        raise UserError(f"RobustBench has no {dataset} models (its datasets are CIFAR-10, CIFAR-100 and ImageNet); "
                        f"for --dataset {dataset} pass a teacher checkpoint file")
    zoo = _zoo(robustbench)
    key = (DATASETS[dataset], threat)
    threats = sorted({tm for _, tm in zoo})
    if key not in zoo:
        raise UserError(f"RobustBench has no {threat} models for {DATASETS[dataset]} "
                        f"(its threat models: {', '.join(threats)})")
    models = zoo[key]
    if name in models:
        return models[name]
    elsewhere = [f"{ds} {tm}" for (ds, tm), entries in zoo.items() if name in entries]
    if elsewhere:
        ours = {v: k for k, v in DATASETS.items()}
        hint = "; ".join(f"--dataset {ours[ds]}" for ds, tm in (k.split() for k in elsewhere)
                         if ds in ours and tm == threat)
        raise UserError(f"robustbench:{name} is a RobustBench model of {' and '.join(elsewhere)}, not of "
                        f"{DATASETS[dataset]} {threat}" + (f" (pass {hint})" if hint else ""))
    close = close_names(name, list(models))
    raise UserError(f"unknown RobustBench model {name!r} for {DATASETS[dataset]} {threat}"
                    + (f"; close names: {', '.join(close)}" if close else "")
                    + f" (the {len(models)} names are robustbench.model_zoo's, as listed on {LEADERBOARD})")


def checkpoint_path(name: str, dataset: str, threat: str = "Linf") -> str:
    """Where robustbench's load_model reads the checkpoint of `name` (our cache's robustbench folder)."""
    return os.path.join(model_dir(), DATASETS[dataset], threat, f"{name}.pt")


def _replace_by_hand(path: str, url: str) -> str:
    return f"delete it, then download {url} by hand into {path} or rerun with --download"


def check_file(path: str, url: str, shown: str = "", fallback: str = "") -> None:
    """Decode the checkpoint at `path` with weights_only, so that robustbench's own torch.load (torch's default,
    weights_only since torch 2.6, which an environment variable can turn off) meets a file that runs no code.
    An HTML page (a failed Google Drive download) or any other unreadable body is one line naming the file
    (`shown`, default `path`) and the manual fallback."""
    shown = shown or path
    fallback = fallback or _replace_by_hand(path, url)
    if os.path.isfile(path):
        with open(path, "rb") as f:
            head = f.read(4096)
        if checkpoint_kind(head) is None:  # an HTML page (Google Drive's answer instead of the file), or other bytes
            raise UserError(f"{shown} is {describe_body(head)}; {fallback}")
    try:
        safe_load(path)
    except UserError as exc:
        raise UserError(f"{str(exc).replace(path, shown)}; {fallback}") from None


def _download(gdrive_id: str, path: str, url: str) -> None:
    """robustbench's own Google Drive download (gdown) into a temporary name, checked, then renamed over `path`:
    a partial or HTML body never sits at `path`."""
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise UserError(f"the teacher cache folder {folder} is not writable ({exc.strerror or exc}); "
                        f"set ADVKD_CACHE to a writable folder") from None
    partial = os.path.join(folder, f".{os.path.basename(path)}.download")
    by_hand = f"nothing was kept; download it by hand into {path}"
    with folder_lock(folder), _removed_after(partial):
        if os.path.isfile(path):  # another process (of a torchrun job, of reproduce.py) fetched it meanwhile
            return
        report(f"downloading robustbench:{os.path.splitext(os.path.basename(path))[0]} from {url} into {path}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sys.modules["robustbench.utils"].download_gdrive_new(gdrive_id, partial)
        except Exception as exc:  # gdown: no network, a refused link, a quota page ...
            raise UserError(f"downloading {url} failed ({_first_line(exc)}); {by_hand}") from None
        if not os.path.isfile(partial):
            raise UserError(f"downloading {url} produced no file; {by_hand}")
        check_file(partial, url, shown=f"the download of {url}", fallback=by_hand)
        os.replace(partial, path)


@contextlib.contextmanager
def _removed_after(partial: str):
    """Whatever happens, no partial file is left: ours, and gdown's own beside it (its name plus a suffix)."""
    try:
        yield
    finally:
        for leftover in glob.glob(glob.escape(partial) + "*"):
            with contextlib.suppress(OSError):
                os.unlink(leftover)


def load_robustbench(name: str, dataset: str, threat: str = "Linf", download: bool = False) -> Tuple[nn.Module, str]:
    """RobustBench model `name` of our `dataset` (CIFAR10/CIFAR100) in eval mode (the caller freezes it), and the
    path of its checkpoint file (whose sha256 the run records). It takes pixels in [0, 1], as our models do."""
    entry = find_entry(name, dataset, threat)
    ds = DATASETS[dataset]
    gdrive_id = entry.get("gdrive_id")
    timm_name = f"{name.lower().replace('-', '_')}_{ds}_{threat.lower()}"  # robustbench asks timm first
    if gdrive_id is None or sys.modules["timm"].is_model(timm_name):
        raise UserError(f"robustbench:{name} is served by timm from the Hugging Face hub, not as a file of "
                        f"robustbench's; it cannot be a teacher here (its checkpoint has no file to record)")
    if isinstance(gdrive_id, list):
        raise UserError(f"robustbench:{name} is an ensemble of {len(gdrive_id)} checkpoint files; a teacher here is "
                        f"one network with one checkpoint file, so choose another {ds} {threat} model")
    path = checkpoint_path(name, dataset, threat)
    url = f"https://drive.google.com/uc?id={gdrive_id}"
    if not os.path.exists(path):
        if not download:
            raise UserError(f"the checkpoint of robustbench:{name} is not in the cache: put it at {path} "
                            f"(from {url}) or add --download")
        _download(gdrive_id, path, url)
    check_file(path, url)
    utils = sys.modules["robustbench.utils"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = utils.load_model(name, model_dir=model_dir(), dataset=ds, threat_model=threat)
    except Exception as exc:  # a state dict of another architecture, a file of another layout ...
        raise UserError(f"robustbench could not load {path} as {name} ({_first_line(exc)}); "
                        f"{_replace_by_hand(path, url)}") from None
    return model.eval(), path
