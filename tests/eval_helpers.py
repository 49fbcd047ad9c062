"""A small CIFAR-10 model trained for a few seconds, shared by the evaluation tests (their
attacks must face a model that has learned something, not random weights)."""
import torch
import torch.nn.functional as F

from advkd.data import TrainBatches, load_split, to_float
from advkd.models import build_model


def quick_trained_model(data_dir: str, images: int = 2048, epochs: int = 2, seed: int = 0) -> torch.nn.Module:
    """wideresnet10_1 after `epochs` of Adam on the first `images` CIFAR-10 training images
    (about 10 s on one core; about 30% test accuracy), in eval mode, frozen."""
    torch.manual_seed(seed)
    train = load_split("CIFAR10", data_dir, "train", "cpu", images)
    model = build_model("wideresnet10_1", 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for x, y in TrainBatches(train, 64, generator, augment=False):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval().requires_grad_(False)


def first_test_images(data_dir: str, n: int):
    split = load_split("CIFAR10", data_dir, "test", "cpu", n)
    return to_float(split.images), split.labels
