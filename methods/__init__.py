"""Training methods by name (docs/methods.md sections 2-4). Adding a method: a Method subclass in a
module here, and its class in the table below (whose order is the order --help lists them in)."""
from .adversarial_training import PGDAT, TRADES, Natural
from .base import AttackSpec, Budget, Method, Option, StepOutputs, attack_target, forward, training_step
from .dgad import DGAD
from .distillation import ARD, IAD, RSLAD, AdaAD, AdaIAD
from .fairness import ABSLD, FairARD, FairIAD, FairMTARD, FairRSLAD
from .igdm import IGDM
from .multi_teacher import AKD, MTARD
from .peeraid import PeerAiD
from .saad import SAAD
from .registry import MethodTable
from .vargap import VarGap

METHODS = MethodTable([Natural, PGDAT, TRADES, ARD, IAD, RSLAD, AKD, AdaAD, AdaIAD, MTARD, IGDM, PeerAiD, SAAD,
                       FairARD, FairIAD, FairRSLAD, FairMTARD, ABSLD, DGAD, VarGap])
get_method = METHODS.get
method_names = METHODS.names
all_options = METHODS.all_options
register_method = METHODS.register


def configure(config) -> Method:
    """The run's method, with its options bound once from the resolved config."""
    return get_method(config.method)(config)


__all__ = ["METHODS", "AttackSpec", "Budget", "Method", "MethodTable", "Option", "StepOutputs", "all_options",
           "attack_target", "configure", "forward", "get_method", "method_names", "register_method",
           "training_step"]
