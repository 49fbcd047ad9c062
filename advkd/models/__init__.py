"""One registry: every model is built by name with `build_model(name, num_classes)`.

Every model takes [0,1] inputs, returns logits, and returns `(logits, features)` with
`return_features=True`, where features are the penultimate, globally pooled activations
(`model.feature_dim` wide).
"""
import re
from typing import Callable, Dict

import torch.nn as nn

from .mobilenetv2 import MobileNetV2
from .resnet import PreActResNet18Tiny, ResNet
from .wideresnet import WideResNet

_REGISTRY: Dict[str, Callable[[int], nn.Module]] = {}
_WRN_PATTERN = re.compile(r"^wideresnet(\d+)_(\d+)$")


def register_model(name: str):
    def decorator(factory):
        _REGISTRY[name] = factory
        return factory
    return decorator


@register_model("resnet18")
def resnet18(num_classes: int) -> nn.Module:
    return ResNet((2, 2, 2, 2), num_classes)


@register_model("mobilenetV2")
def mobilenet_v2(num_classes: int) -> nn.Module:
    return MobileNetV2(num_classes)


@register_model("presnet18")
def presnet18(num_classes: int) -> nn.Module:
    return PreActResNet18Tiny(num_classes)


def model_names():
    return sorted(_REGISTRY) + ["wideresnet{depth}_{widen} (e.g. wideresnet34_10, wideresnet34_20, wideresnet16_2)"]


def is_known_model(name: str) -> bool:
    match = _WRN_PATTERN.match(name)
    if match:
        depth = int(match.group(1))
        return depth >= 10 and (depth - 4) % 6 == 0 and int(match.group(2)) >= 1
    return name in _REGISTRY


def build_model(name: str, num_classes: int) -> nn.Module:
    match = _WRN_PATTERN.match(name)
    if match and is_known_model(name):
        return WideResNet(int(match.group(1)), int(match.group(2)), num_classes)
    if name in _REGISTRY:
        return _REGISTRY[name](num_classes)
    raise ValueError(f"unknown model {name!r}; choose from: {', '.join(model_names())}")
