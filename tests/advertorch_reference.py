"""Import the real advertorch 0.2.3 (pinned in requirements.txt) on current torch, for the
agreement tests only; no code of the package runs anywhere else.

Two of its imports broke after 2019, both in code these tests never call:
  * `torch.autograd.gradcheck.zero_gradients` (removed from torch), imported by its FAB attack;
  * `torchvision.transforms`, imported by its JPEG defense (torchvision is not a dependency here),
    which builds two transforms at import time.
During the import only, a `zero_gradients` with the removed function's behaviour is put into
torch, and `torchvision` modules whose two transforms raise if called are put into sys.modules;
both are taken out again afterwards, so torch and any later `import torchvision` behave exactly
as before."""
import importlib
import sys
import types

import torch


def _zero_gradients(x):
    if isinstance(x, torch.Tensor):
        if x.grad is not None:
            x.grad.detach_()
            x.grad.zero_()
    else:
        for element in x:
            _zero_gradients(element)


class _Unavailable:
    """Stands in for the torchvision transforms that advertorch instantiates at import time."""

    def __call__(self, *args, **kwargs):
        raise NotImplementedError("torchvision is not installed: advertorch's JPEG defense is unavailable")


def import_advertorch():
    """The `advertorch` package, imported once; raises ImportError when it is not installed."""
    if "advertorch" in sys.modules:
        return sys.modules["advertorch"]
    gradcheck = importlib.import_module("torch.autograd.gradcheck")  # the module, not the function
    added_zero_gradients = not hasattr(gradcheck, "zero_gradients")
    if added_zero_gradients:
        gradcheck.zero_gradients = _zero_gradients
    stubs = {}
    if "torchvision" not in sys.modules:
        vision, transforms = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")
        vision.transforms = transforms
        transforms.ToPILImage = transforms.ToTensor = _Unavailable
        stubs = {"torchvision": vision, "torchvision.transforms": transforms}
        sys.modules.update(stubs)
    try:
        import advertorch
        import advertorch.attacks  # noqa: F401
    finally:
        for name, module in stubs.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
        if added_zero_gradients:
            del gradcheck.zero_gradients
    return advertorch
