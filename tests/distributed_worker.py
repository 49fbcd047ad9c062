"""Run by test_distributed.py, alone or under torchrun: one epoch (two steps, the second one
smaller) of every method on a network without BatchNorm, then the per-epoch evaluation; process 0
saves the weights and numbers, which must not depend on the number of processes."""
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from data import Shard, Split, TrainBatches
from helpers import train_config
from methods import METHODS, configure
from runtime.distributed import join
from training.loop import evaluate, per_epoch_attack, train_one_epoch
from training.networks import Trainee, frozen, run_generators
from training.schedule import build_optimizer
from training.signals import GracefulStop

NUM_CLASSES = 10


class NoNormNet(nn.Module):
    """conv -> ReLU -> conv -> ReLU -> pool -> linear: nothing that depends on the batch."""

    def __init__(self, width=6):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, stride=2)
        self.fc = nn.Linear(width, NUM_CLASSES)
        self.feature_dim = width

    def forward(self, x, return_features=False):
        features = F.relu(self.conv2(F.relu(self.conv1(x)))).mean((2, 3))
        logits = self.fc(features)
        return (logits, features) if return_features else logits


def images(n, seed):
    generator = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=generator),
                 torch.randint(0, NUM_CLASSES, (n,), generator=generator))


def one_epoch(name, world):
    config = train_config(name, "--num_steps", "2", bs=7)
    method = configure(config)
    torch.manual_seed(0)
    student, teacher = NoNormNet(), frozen(NoNormNet(width=8))
    extra = NoNormNet() if name == "PeerAiD" else method.extra_module(student, teacher)  # the peer, without BN
    params = list(student.parameters()) + ([] if extra is None else list(extra.parameters()))
    natural = frozen(NoNormNet(width=5)) if method.needs_natural_teacher else None
    trainee = Trainee(student, teacher, extra, build_optimizer(config, params), run_generators("cpu", 3),
                      natural_teacher=natural, method=method)
    trainee.distribute(world, torch.device("cpu"))
    batches = TrainBatches(images(10, 1), config.bs, trainee.generators["data"], shard=Shard(world.rank, world.size))
    epoch = config.epochs  # past every warm-up (IAD's introspection runs)
    stats = train_one_epoch(method, trainee, batches, epoch, 0.1, config, None, GracefulStop(), None, world)
    return {"weights": {k: v.clone() for k, v in student.state_dict().items()},
            "extra": None if extra is None else {k: v.clone() for k, v in extra.state_dict().items()},
            "loss": stats.loss, "accuracy": stats.accuracy, "parts": stats.parts, "seen": stats.seen,
            "method_state": method.state_dict()}


def evaluation(world):
    """The per-epoch evaluation of a model that gets some of its 30 images right, clean and under
    PGD-10, in batches of 8 (the last one 6)."""
    torch.manual_seed(5)
    model = NoNormNet(width=8)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)  # confident enough that the attack flips some answers
        split = images(30, 2)
        predicted = model(split.images.float() / 255).argmax(1)
    split = Split(split.images, torch.where(torch.arange(30) % 3 == 0, split.labels, predicted))
    config = train_config("PGDAT", bs=7)
    evaluated, _ = evaluate(model, split, 8, per_epoch_attack(config, run_generators("cpu", 4)["eval"]), world=world)
    return evaluated._asdict()


def main(out_path):
    world = join(5.0, use_cuda=False)
    results = {name: one_epoch(name, world) for name in METHODS.names()}
    results["evaluation"] = evaluation(world)
    if world.main:
        torch.save(results, out_path)
    world.leave()


if __name__ == "__main__":
    main(sys.argv[1])
