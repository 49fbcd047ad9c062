"""Saving and loading checkpoints: atomic writes, `weights_only` loads, every public format.

Teacher files come from the internet, so nothing here unpickles arbitrary objects.
"""
import hashlib
import io
import json
import os
import pickle
import re
import tempfile
import zipfile
from typing import Any, Dict, Mapping

import torch
import torch.nn as nn

from .errors import UserError

STATE_DICT_KEYS = ("net", "state_dict", "model")
KEY_PREFIXES = ("module.", "model.")
# Public WRN checkpoints (TRADES, LTD) carry an unused copy of block1 under this name.
UNUSED_GROUPS = ("sub_block1.",)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A crash or a full disk mid-write leaves the previous file as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; checkpoints are shared like any file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_save(obj: Any, path: str) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:
        raise UserError(f"could not write {path}: {exc.strerror or exc}; "
                        f"the previous file is intact (free disk space or fix permissions, then resume)") from exc


def atomic_write_text(path: str, text: str) -> None:
    try:
        atomic_write_bytes(path, text.encode("utf-8"))
    except OSError as exc:
        raise UserError(f"could not write {path}: {exc.strerror or exc}") from exc


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _looks_like(path: str) -> str:
    """What a file that is not a torch.save file seems to be, for the error message."""
    with open(path, "rb") as f:
        head = f.read(512)
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"["):
        return "it looks like JSON (an evaluation report?)"
    try:
        head.decode("utf-8")
        return "it looks like a text file"
    except UnicodeDecodeError:
        return "its bytes are not a torch.save file"


def safe_load(path: str, map_location="cpu") -> Any:
    """torch.load with weights_only=True, every failure a one-line UserError."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory, not a checkpoint file; pass the .pth file in it "
                        f"(e.g. {os.path.join(path, 'best_PGD10_acc_model.pth')})")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if not found:
            raise UserError(f"{path} is not a checkpoint: {_looks_like(path)}") from None
        raise UserError(
            f"refused to load {path}: it references {found.group(1)}, which needs arbitrary code to unpickle; "
            "only tensors and plain containers are accepted (weights_only=True), and nothing in it was run. "
            "Re-save it as a plain state dict: torch.save(model.state_dict(), path)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        with open(path, "rb") as f:
            zip_start = f.read(4) == b"PK\x03\x04"  # torch.save's container: a damaged checkpoint
        if zip_start or isinstance(exc, EOFError):
            raise UserError(f"cannot read {path}: the file is truncated or corrupt ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:160] if str(exc) else 'no detail'})") from None
        raise UserError(f"{path} is not a checkpoint: {_looks_like(path)}") from None
    except Exception:  # a legacy-format unpickler fed bytes that are not a pickle (KeyError, TypeError ...)
        raise UserError(f"{path} is not a checkpoint: {_looks_like(path)}") from None


def build_checked(build, name: str, num_classes: int, flag: str):
    """build(name, num_classes), with an allocation failure (a network too wide or deep for this
    machine's memory) turned into a one-line error naming the flag."""
    try:
        return build(name, num_classes)
    except (RuntimeError, MemoryError) as exc:
        if isinstance(exc, MemoryError) or "allocate" in str(exc):
            raise UserError(f"{flag} {name} is too large to allocate on this machine "
                            f"({str(exc).splitlines()[0][-120:]}); choose a smaller depth or width") from None
        raise


def extract_state_dict(obj: Any, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """Unwrap `{'net'|'state_dict'|'model': sd}` and strip `module.` / `model.` prefixes."""
    for key in STATE_DICT_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"{source} holds no state dict (expected a state dict or a dict with one of "
                        f"{', '.join(repr(k) for k in STATE_DICT_KEYS)})")
    state = {}
    for key, value in obj.items():
        changed = True
        while changed:
            changed = False
            for prefix in KEY_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        state[key] = value
    return state


def _class_count(state: Mapping[str, torch.Tensor], model: nn.Module):
    head = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    weight = state.get(f"{head}.weight")
    return (weight.shape[0] if weight is not None else None), getattr(model, head).out_features


def load_weights(model: nn.Module, source: Any, name: str = "model", path: str = "checkpoint") -> nn.Module:
    """Load a checkpoint (path or loaded object) into `model` strictly, explaining any mismatch."""
    obj = safe_load(source) if isinstance(source, str) else source
    state = extract_state_dict(obj, path if isinstance(source, str) else "checkpoint")
    own = model.state_dict()
    state = {k: v for k, v in state.items()
             if not (k.startswith(UNUSED_GROUPS) and k not in own)}
    ckpt_classes, model_classes = _class_count(state, model)
    if ckpt_classes is not None and ckpt_classes != model_classes:
        raise UserError(f"{path} is for {ckpt_classes} classes but {name} was built for {model_classes} "
                        f"(check --dataset)")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        def show(keys):
            return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} keys ({show(missing)})")
        if unexpected:
            detail.append(f"unexpected {len(unexpected)} keys ({show(unexpected)})")
        raise UserError(f"{path} does not fit architecture {name}: {'; '.join(detail)} "
                        f"(is it a checkpoint of another architecture?)")
    wrong_shape = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                   if state[k].shape != v.shape]
    if wrong_shape:
        raise UserError(f"{path} does not fit architecture {name}: shapes differ for "
                        f"{'; '.join(wrong_shape[:3])}{' ...' if len(wrong_shape) > 3 else ''}")
    model.load_state_dict(state, strict=True)
    return model
