"""What several test modules share: the repository's paths, running an entry script, hand
references in plain Python floats (no torch), a tiny network with the models' interface, a
resolved training config, and a small CIFAR-10 model trained for a few seconds."""
import math
import os
import subprocess
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from data import TrainBatches, load_split, to_float
from models import build_model
from training.config import build_parser, resolve

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR_DEFAULTS = {"dataset": "CIFAR10", "datasets": ["CIFAR10", "CIFAR100"], "teacher_model": "wideresnet34_10"}


def run_script(*args, cwd=REPO, timeout=600):
    """Run one of the entry scripts in a subprocess; returns the CompletedProcess."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


# -- hand references: plain Python floats --------------------------------------------------------

def softmax(row, temperature=1.0):
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def kl(target_row, row, temperature=1.0):
    """KL(softmax(target/T) || softmax(row/T)): the target first, as in every loss."""
    p, q = softmax(target_row, temperature), softmax(row, temperature)
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def ce(row, label):
    return -math.log(softmax(row)[label])


def mean(values):
    return sum(values) / len(values)


# -- tiny networks and configs ---------------------------------------------------------------------

class TinyNet(nn.Module):
    """conv -> BatchNorm -> ReLU -> pool -> linear, with the `return_features` interface of every model."""

    def __init__(self, width=4, num_classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)
        self.feature_dim = width

    def forward(self, x, return_features=False):
        features = F.relu(self.bn(self.conv(x))).mean((2, 3))
        logits = self.fc(features)
        return (logits, features) if return_features else logits


def train_config(method, *flags, dataset="CIFAR10", model="wideresnet10_1", bs=4):
    """The resolved, frozen training config of `method`, as main.py builds it (bs None: the recipe's)."""
    args = ["--method", method, "--dataset", dataset, "--model", model, "--teacher_model", model,
            *(["--bs", str(bs)] if bs is not None else []), "--save_dir", "unused", *flags]
    return resolve(build_parser(CIFAR_DEFAULTS, "test").parse_args(args))


# -- a model that has learned something -----------------------------------------------------------

def quick_trained_model(data_dir: str, images: int = 2048, epochs: int = 2, seed: int = 0) -> torch.nn.Module:
    """wideresnet10_1 after `epochs` of Adam on the first `images` CIFAR-10 training images
    (about 10 s on one core; about 30% test accuracy), in eval mode, frozen. The evaluation tests'
    attacks must face a model that has learned something, not random weights."""
    torch.manual_seed(seed)
    train = load_split("CIFAR10", data_dir, "train", "cpu", images)
    model = build_model("wideresnet10_1", 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for x, y, _ in TrainBatches(train, 64, generator, augment=False):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval().requires_grad_(False)


def first_test_images(data_dir: str, n: int):
    split = load_split("CIFAR10", data_dir, "test", "cpu", n)
    return to_float(split.images), split.labels
