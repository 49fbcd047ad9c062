"""Device choice, seeding, and the random-number state a run saves to resume exactly."""
import os
import random
import subprocess
import sys
from typing import Any, Dict, Optional

import numpy as np
import torch

from .errors import UserError

_CPU_NOTICE_SHOWN = False


def resolve_device(gpu_id: int) -> torch.device:
    """cuda:<gpu_id> when CUDA is available (error if that GPU does not exist); else the CPU, said once."""
    global _CPU_NOTICE_SHOWN
    if gpu_id < 0:
        raise UserError(f"--gpu_id must be >= 0, got {gpu_id}")
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if gpu_id >= count:
            raise UserError(f"--gpu_id {gpu_id} names no GPU: this machine has {count} (ids 0..{count - 1})")
        torch.cuda.set_device(gpu_id)
        return torch.device(f"cuda:{gpu_id}")
    if not _CPU_NOTICE_SHOWN:
        print("CUDA is not available: running on the CPU", file=sys.stderr, flush=True)
        _CPU_NOTICE_SHOWN = True
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"


def configure_determinism(deterministic: bool) -> None:
    """Deterministic kernels make a resumed run bitwise equal to an unbroken one; otherwise cuDNN
    may pick the fastest (nondeterministic) algorithms."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def capture_rng_state(generators: Optional[Dict[str, torch.Generator]] = None) -> Dict[str, Any]:
    """Every random state a run consumes, as tensors and plain containers (weights_only-loadable):
    the global streams and each of the run's own `generators` by name."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }


def restore_rng_state(state: Dict[str, Any], generators: Optional[Dict[str, torch.Generator]] = None) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, generator in (generators or {}).items():
        generator.set_state(state["generators"][name])


def git_commit() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None
