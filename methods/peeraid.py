"""PeerAiD (docs/methods.md section 3.13): no pretrained teacher; a peer network of the student's
architecture is trained online beside it (the run's extra module: optimised, saved and resumed with
the student), and the attack maximises the KL from the peer's clean prediction to the student's."""
from typing import Optional

import torch.nn as nn

from attacks import kl_sum
from data import dataset_info
from losses import peeraid_terms
from models import build_model

from .base import AttackSpec, Method, Option
from .recipes import released


def by_dataset(cifar10, cifar100, tiny):
    """A default that the released configs set per dataset."""
    return lambda args: {"CIFAR10": cifar10, "CIFAR100": cifar100}.get(args.dataset, tiny)


class PeerAiD(Method):
    name = "PeerAiD"
    summary = ("a peer of the student's architecture trained online on the student's adversarial examples "
               "(CE + KL to the student); the student learns from the peer's and its own clean predictions; the "
               "attack maximises KL(peer(x) || student(x'))")
    paper = "PeerAiD: Improving Adversarial Distillation from a Specialized Peer Tutor (Jung et al., CVPR 2024)"
    needs_teacher = False
    attack = AttackSpec(inner_loss=kl_sum, init="gauss", train_mode=False, target="peer_clean")
    # main.py's train_kd: P(x) in eval() for the attack, the attack, P(x') in train(), S(x') twice
    # (the peer's target, then the student's loss), S(x): every pass of the student in train().
    forwards = ("p_adv", "s_adv", "s_adv", "s_clean")
    options = {
        "peer_T": Option(by_dataset(5.0, 5.0, 1.0), type=float, low=0, low_open=True,
                         help="PeerAiD: temperature T of the student's two KL terms (5 on CIFAR, 1 on Tiny ImageNet)"),
        "peer_T_re": Option(1.0, type=float, low=0, low_open=True,
                            help="PeerAiD: temperature of the peer's KL to the student"),
        "peer_lamb1": Option(by_dataset(0.0, 0.0, 0.035), type=float, low=0,
                             help="PeerAiD: weight of the student's CE on x' (0 on CIFAR, 0.035 on Tiny ImageNet)"),
        "peer_lamb2": Option(by_dataset(1.0, 1.0, 35.0), type=float, low=0,
                             help="PeerAiD: weight of the student's KL to the peer (1 on CIFAR, 35 on Tiny ImageNet)"),
        "peer_lamb3": Option(by_dataset(1.0, 1.0, 20.0), type=float, low=0,
                             help="PeerAiD: weight of the student's KL to its own clean prediction (1 on CIFAR, 20 on "
                                  "Tiny ImageNet)"),
        "peer_gamma1": Option(1.0, type=float, low=0, help="PeerAiD: weight of the peer's CE on x'"),
        "peer_gamma2": Option(by_dataset(0.1, 1.0, 100.0), type=float, low=0,
                              help="PeerAiD: weight of the peer's KL to the student (0.1 on CIFAR-10, 1 on CIFAR-100, "
                                   "100 on Tiny ImageNet)"),
    }
    parts = ("ce", "kl_peer", "kl_self", "peer_ce", "peer_kl", "peer_acc")
    # configs/PeerAiD_resnet18_cifar100.json (its CIFAR-10 config is not in the repository we read;
    # the same schedule is assumed); peer and student share these settings.
    recipe = released("jaewonalive/PeerAiD main.py, configs/", 300, (214, 259, 284), 2e-4)

    @classmethod
    def swa_start(cls, args) -> int:
        """Its configs start SWA of the student at the first learning-rate decay."""
        return args.milestones[0] if args.milestones else 0

    def __init__(self, config):
        super().__init__(config)
        o = config.options
        self.arch, self.num_classes = config.model, dataset_info(config.dataset).num_classes
        self.temperature, self.peer_temperature = o["peer_T"], o["peer_T_re"]
        self.lambdas = (o["peer_lamb1"], o["peer_lamb2"], o["peer_lamb3"])
        self.gammas = (o["peer_gamma1"], o["peer_gamma2"])

    def extra_module(self, student: nn.Module, teacher: Optional[nn.Module]) -> nn.Module:
        """The peer: the student's architecture, randomly initialised, trained with the student."""
        return build_model(self.arch, self.num_classes)

    def loss(self, out):
        return peeraid_terms(out.s_clean, out.s_adv, out.p_adv, out.y, self.temperature, self.peer_temperature,
                             self.lambdas, self.gammas)
