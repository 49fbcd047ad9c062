"""Dataset readers on the real CIFAR-10 / Tiny ImageNet copies and a generated CIFAR-100, and
the on-device augmentation."""
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data import Split, TrainBatches, load_split, random_crop_flip
from data.datasets import load_cifar, load_tiny_imagenet
from runtime.errors import UserError


def test_real_cifar10(real_data_dir):
    train = load_split("CIFAR10", real_data_dir, "train", "cpu")
    test = load_split("CIFAR10", real_data_dir, "test", "cpu")
    assert train.images.shape == (50000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    with open(os.path.join(real_data_dir, "cifar-10-batches-py", "data_batch_2"), "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    # Image 10000 is the first of data_batch_2, channel-major as the release stores it.
    assert np.array_equal(train.images[10000].numpy().reshape(-1), batch["data"][0])
    assert train.labels[10000].item() == batch["labels"][0]
    subset = load_split("CIFAR10", real_data_dir, "test", "cpu", subset=100)
    assert torch.equal(subset.images, test.images[:100])


def write_cifar100(root, n_train=30, n_test=20):
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "fine_labels": [(7 * i) % 100 for i in range(n)], "coarse_labels": [i % 20 for i in range(n)]}
        with open(os.path.join(folder, split), "wb") as f:
            pickle.dump(batch, f)
    with open(os.path.join(folder, "meta"), "wb") as f:
        pickle.dump({"fine_label_names": [str(i) for i in range(100)]}, f)
    return batch


def test_generated_cifar100(tmp_path):
    last = write_cifar100(str(tmp_path))
    images, labels = load_cifar("CIFAR100", str(tmp_path), "test")
    assert images.shape == (20, 3, 32, 32)
    assert np.array_equal(images.reshape(20, -1), last["data"])
    assert labels.tolist() == last["fine_labels"]  # fine labels, not coarse
    assert len(load_split("CIFAR100", str(tmp_path), "train", "cpu")) == 30


def test_real_tiny_imagenet_subset(real_data_dir):
    with open(os.path.join(real_data_dir, "tiny-imagenet-200", "wnids.txt")) as f:
        wnids = sorted(line.strip() for line in f if line.strip())
    images, labels = load_tiny_imagenet(real_data_dir, "test", limit=50)
    assert images.shape == (50, 3, 64, 64) and images.dtype == np.uint8
    with open(os.path.join(real_data_dir, "tiny-imagenet-200", "val", "val_annotations.txt")) as f:
        first = sorted(line.split("\t")[:2] for line in f)[0]
    assert labels[0] == wnids.index(first[1])  # class index = position in the sorted wnids
    train_images, train_labels = load_tiny_imagenet(real_data_dir, "train", limit=400)
    # The first 200 training images are one per class, so small subsets cover every class.
    assert sorted(train_labels[:200].tolist()) == list(range(200))
    assert train_images.shape == (400, 3, 64, 64)


def test_tiny_imagenet_full_splits(real_data_dir):
    labels = load_tiny_imagenet(real_data_dir, "test")[1]
    assert labels.shape == (10000,) and torch.bincount(torch.from_numpy(labels)).tolist() == [50] * 200


def test_missing_datasets_name_the_expected_path(tmp_path):
    with pytest.raises(UserError, match=r"cifar-10-batches-py.*--download"):
        load_split("CIFAR10", str(tmp_path), "train", "cpu")
    with pytest.raises(UserError, match=r"tiny-imagenet-200[/\\]wnids.txt"):
        load_split("Tiny_Image", str(tmp_path), "train", "cpu")
    os.makedirs(tmp_path / "tiny-imagenet-200")
    (tmp_path / "tiny-imagenet-200" / "wnids.txt").write_text("n01\nn02\n")
    with pytest.raises(UserError, match=r"incomplete Tiny ImageNet layout: missing .*n01"):
        load_split("Tiny_Image", str(tmp_path), "train", "cpu")
    with pytest.raises(UserError, match="val_annotations.txt"):
        load_split("Tiny_Image", str(tmp_path), "test", "cpu")


def test_augmentation_is_a_padded_crop_or_its_mirror():
    images = torch.randint(1, 256, (16, 3, 6, 6), dtype=torch.uint8)  # no zeros: padding is visible
    generator = torch.Generator().manual_seed(0)
    out = random_crop_flip(images, generator, padding=2)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = F.pad(images, (2, 2, 2, 2))
    flips = 0
    for i in range(16):
        candidates = [(dy, dx, flip) for dy in range(5) for dx in range(5) for flip in (False, True)
                      if torch.equal(out[i], (padded[i, :, dy:dy + 6, dx:dx + 6].flip(2) if flip
                                              else padded[i, :, dy:dy + 6, dx:dx + 6]))]
        assert candidates, f"image {i} is no crop of its padded input"
        flips += candidates[0][2]
    assert 0 < flips < 16


def test_augmentation_is_seeded_and_keeps_the_pixel_range():
    images = torch.rand(32, 3, 32, 32)
    a = random_crop_flip(images, torch.Generator().manual_seed(1))
    b = random_crop_flip(images, torch.Generator().manual_seed(1))
    c = random_crop_flip(images, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_train_batches_cover_the_split_once_per_epoch_in_seeded_order():
    split = Split(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2)
                  .contiguous(), torch.arange(10))
    order = lambda seed: [y.tolist() for _, y, _ in TrainBatches(split, 4, torch.Generator().manual_seed(seed))]
    first = order(0)
    assert [len(b) for b in first] == [4, 4, 2]
    assert sorted(sum(first, [])) == list(range(10))
    assert first == order(0) and first != order(5)


class _Runs:
    """Unpickling this would create a marker file: a stand-in for code in a crafted dataset file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_cifar10(root, test_batch):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    good = {"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0, 1]}
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(good, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(test_batch, f)


def test_a_crafted_cifar_file_runs_no_code_and_is_a_one_line_error(tmp_path):
    marker = tmp_path / "ran"
    write_cifar10(tmp_path, {"data": _Runs(str(marker)), "labels": [0]})
    # Python 3.11 pickles the builtin `open` as io.open, 3.12 (the GPU machine's) as _io.open.
    with pytest.raises(UserError, match=r"test_batch as a CIFAR batch file: it references _?io\.open.*nothing in "
                                        r"it was run"):
        load_cifar("CIFAR10", str(tmp_path), "test")
    assert not marker.exists()


def test_a_cifar_file_that_holds_a_list_is_a_one_line_error(tmp_path):
    write_cifar10(tmp_path, [1, 2, 3])
    with pytest.raises(UserError, match="test_batch is not a CIFAR batch file: it holds a list, not a dict"):
        load_cifar("CIFAR10", str(tmp_path), "test")
    images, labels = load_cifar("CIFAR10", str(tmp_path), "train")  # the good files still read
    assert images.shape == (10, 3, 32, 32) and labels.tolist() == [0, 1] * 5


def test_the_allowed_globals_are_numpys_array_reconstruction_under_both_names():
    from data.datasets import _CIFAR_GLOBALS
    assert _CIFAR_GLOBALS[("numpy.core.multiarray", "_reconstruct")] is \
        _CIFAR_GLOBALS[("numpy._core.multiarray", "_reconstruct")]
    assert {module for module, _ in _CIFAR_GLOBALS} == {"numpy", "numpy.core.multiarray", "numpy._core.multiarray"}


def test_a_truncated_tiny_imagenet_jpeg_is_a_one_line_error(tmp_path):
    from PIL import Image
    root = tmp_path / "tiny-imagenet-200"
    images = root / "train" / "n01443537" / "images"
    images.mkdir(parents=True)
    (root / "wnids.txt").write_text("n01443537\n")
    Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8)).save(images / "a.JPEG")
    whole = (images / "a.JPEG").read_bytes()
    (images / "b.JPEG").write_bytes(whole[:len(whole) // 3])
    with pytest.raises(UserError, match=r"cannot decode .*b\.JPEG: .*re-extract the dataset"):
        load_tiny_imagenet(str(tmp_path), "train")
