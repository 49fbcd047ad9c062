"""Training methods by name. Adding a method: one module here that registers a Method subclass,
plus its import below."""
# Registration order is the order --help lists the methods in.
from . import adversarial_training, distillation, dgad, vargap  # noqa: F401,I001  (each registers its methods)
from .base import AttackSpec, Method, Option, StepOutputs, training_step
from .registry import all_options, get_method, method_names, register_method

__all__ = ["AttackSpec", "Method", "Option", "StepOutputs", "all_options", "get_method", "method_names",
           "register_method", "training_step"]
