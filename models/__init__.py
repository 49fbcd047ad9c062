"""Every model by name: `build_model(name, num_classes)` (docs/methods.md section 5).

Every model takes [0,1] inputs, returns logits, and returns `(logits, features)` with
`return_features=True`, where features are the penultimate, globally pooled activations
(`model.feature_dim` wide). This folder depends on torch only: copy it into another project as it is.
"""
import re
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch.nn as nn

from .mobilenetv2 import MobileNetV2
from .resnet import PreActResNet18Tiny, ResNet
from .wideresnet import WideResNet

Factory = Callable[[int], nn.Module]
WIDERESNET = re.compile(r"^wideresnet(\d+)_(\d+)$")
WIDERESNET_HELP = "wideresnet{depth}_{widen} (e.g. wideresnet34_10, wideresnet34_20, wideresnet16_2)"


def model_table(entries: Iterable[Tuple[str, Factory]]) -> Dict[str, Factory]:
    """An ordered name -> factory table; a name given twice is an error, not a silent replacement."""
    table: Dict[str, Factory] = {}
    for name, factory in entries:
        if name in table or WIDERESNET.match(name):
            raise ValueError(f"model name {name!r} is registered twice")
        table[name] = factory
    return table


MODELS = model_table([
    ("resnet18", lambda num_classes: ResNet((2, 2, 2, 2), num_classes)),
    ("mobilenetV2", MobileNetV2),
    ("presnet18", PreActResNet18Tiny),
])


def wideresnet_shape(name: str) -> Optional[Tuple[int, int]]:
    """(depth, widen factor) for a valid `wideresnet{depth}_{widen}` name (depth 6n+4, n >= 1), else None."""
    match = WIDERESNET.match(name)
    if not match:
        return None
    depth, widen = int(match.group(1)), int(match.group(2))
    return (depth, widen) if depth >= 10 and (depth - 4) % 6 == 0 and widen >= 1 else None


def model_names():
    return list(MODELS) + [WIDERESNET_HELP]


def is_known_model(name: str) -> bool:
    return name in MODELS or wideresnet_shape(name) is not None


def build_model(name: str, num_classes: int) -> nn.Module:
    shape = wideresnet_shape(name)
    if shape is not None:
        return WideResNet(*shape, num_classes)
    if name in MODELS:
        return MODELS[name](num_classes)
    raise ValueError(f"unknown model {name!r}; choose from: {', '.join(model_names())}")
