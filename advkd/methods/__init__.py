"""Training methods by name. Adding a method: one module here that registers a Method subclass,
plus its import below."""
from . import dgad  # noqa: F401  (registers DGAD)
from .base import AttackSpec, Method, Option, StepOutputs, training_step
from .registry import all_options, get_method, method_names, register_method

__all__ = ["AttackSpec", "Method", "Option", "StepOutputs", "all_options", "get_method", "method_names",
           "register_method", "training_step"]
