"""Readers for the standard on-disk layouts. Each returns uint8 images (N, 3, H, W) and int64 labels."""
import os
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from runtime.errors import UserError

from .classes import tiny_imagenet_wnids


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    image_size: int
    folder: str


DATASETS = {
    "CIFAR10": DatasetInfo("CIFAR10", 10, 32, "cifar-10-batches-py"),
    "CIFAR100": DatasetInfo("CIFAR100", 100, 32, "cifar-100-python"),
    "Tiny_Image": DatasetInfo("Tiny_Image", 200, 64, "tiny-imagenet-200"),
}

_CIFAR_FILES = {
    "CIFAR10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"], "label": "labels"},
    "CIFAR100": {"train": ["train"], "test": ["test"], "label": "fine_labels"},
}
_CIFAR_URLS = {
    "CIFAR10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "CIFAR100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return DATASETS[name]


def download_cifar(name: str, data_dir: str) -> None:
    """Fetch and unpack the official CIFAR archive (needs internet); verifies its md5."""
    import hashlib
    url, md5 = _CIFAR_URLS[name]
    os.makedirs(data_dir, exist_ok=True)
    archive = os.path.join(data_dir, os.path.basename(url))
    print(f"downloading {url} -> {archive}", flush=True)
    try:
        urllib.request.urlretrieve(url, archive + ".part")
    except OSError as exc:
        raise UserError(f"could not download {url}: {exc}; fetch it by hand and unpack it into {data_dir}") from exc
    with open(archive + ".part", "rb") as f:
        if hashlib.md5(f.read()).hexdigest() != md5:
            raise UserError(f"downloaded {url} has the wrong md5; delete {archive}.part and retry")
    os.replace(archive + ".part", archive)
    with tarfile.open(archive) as tar:
        tar.extractall(data_dir, filter="data")


# What CIFAR's python batches hold: dicts, lists, bytes, strings and numbers (no globals needed) and
# numpy arrays, which pickle through these three callables (numpy 1 names the first
# numpy.core.multiarray._reconstruct, numpy 2 numpy._core.multiarray._reconstruct).
_RECONSTRUCT = np.ndarray(0).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT, ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR, ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
}


class _CifarUnpickler(pickle.Unpickler):
    """Decodes only the types CIFAR's files contain: anything else is refused before it can run."""

    def find_class(self, module, name):
        if (module, name) in _CIFAR_GLOBALS:
            return _CIFAR_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(f"it references {module}.{name}, which no CIFAR file contains")


def _read_pickle(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError) as exc:
        raise UserError(f"cannot read {path} as a CIFAR batch file: {exc}; nothing in it was run "
                        f"(re-download or re-extract the dataset)") from None
    if not isinstance(batch, dict):
        raise UserError(f"{path} is not a CIFAR batch file: it holds a {type(batch).__name__}, not a dict "
                        f"(re-download or re-extract the dataset)")
    return batch


def load_cifar(name: str, data_dir: str, split: str, download: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    info = dataset_info(name)
    root = os.path.join(data_dir, info.folder)
    files = [os.path.join(root, f) for f in _CIFAR_FILES[name][split]]
    if not all(os.path.isfile(f) for f in files):
        if download:
            download_cifar(name, data_dir)
        else:
            missing = [os.path.basename(f) for f in files if not os.path.isfile(f)]
            raise UserError(f"{name} not found: expected {', '.join(missing)} in {root} "
                            f"(the standard python layout); pass --download or point --data_dir at its parent")
    images, labels = [], []
    for path in files:
        batch = _read_pickle(path)
        try:
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[_CIFAR_FILES[name]["label"]], dtype=np.int64))
        except (KeyError, ValueError, TypeError) as exc:
            raise UserError(f"{path} is not a {name} batch file ({type(exc).__name__}: {exc})") from None
    return np.concatenate(images), np.concatenate(labels)


def _decode_jpegs(paths: List[str], size: int) -> np.ndarray:
    from PIL import Image
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for truncated or foreign files
            raise UserError(f"cannot decode {path}: {exc} (re-extract the dataset)") from None
        if arr.shape != (size, size, 3):
            raise UserError(f"{path}: expected a {size}x{size} image, got {arr.shape[1]}x{arr.shape[0]}")
        out[i] = arr.transpose(2, 0, 1)
    return out


def load_tiny_imagenet(data_dir: str, split: str, limit: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Tiny ImageNet-200 in its standard layout; class index = position in sorted wnids.

    `limit` > 0 decodes only the first `limit` images of the split's fixed order."""
    root = os.path.join(data_dir, "tiny-imagenet-200")
    wnids_path = os.path.join(root, "wnids.txt")
    if not os.path.isfile(wnids_path):
        raise UserError(f"Tiny ImageNet not found: expected {wnids_path} (the standard tiny-imagenet-200 layout); "
                        f"point --data_dir at the folder that holds tiny-imagenet-200/")
    wnids = tiny_imagenet_wnids(wnids_path)
    index = {w: i for i, w in enumerate(wnids)}
    items = []
    if split == "train":
        per_class = []
        for wnid in wnids:
            folder = os.path.join(root, "train", wnid, "images")
            if not os.path.isdir(folder):
                raise UserError(f"incomplete Tiny ImageNet layout: missing {folder}")
            per_class.append([(os.path.join(folder, f), index[wnid]) for f in sorted(os.listdir(folder))
                              if f.lower().endswith((".jpeg", ".jpg", ".png"))])
        # Round-robin over classes, so that the first N images (--train_subset) cover every class.
        for k in range(max(map(len, per_class))):
            items += [images[k] for images in per_class if k < len(images)]
    else:
        annotations = os.path.join(root, "val", "val_annotations.txt")
        if not os.path.isfile(annotations):
            raise UserError(f"incomplete Tiny ImageNet layout: missing {annotations}")
        with open(annotations) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 2:
                    if parts[1] not in index:
                        raise UserError(f"{annotations} names class {parts[1]} that wnids.txt lacks")
                    items.append((os.path.join(root, "val", "images", parts[0]), index[parts[1]]))
        items.sort()
    if not items:
        raise UserError(f"no {split} images found under {root}")
    if limit:
        items = items[:limit]
    missing = [p for p, _ in items if not os.path.isfile(p)]
    if missing:
        raise UserError(f"incomplete Tiny ImageNet layout: {len(missing)} listed images are missing, e.g. {missing[0]}")
    images = _decode_jpegs([p for p, _ in items], 64)
    return images, np.asarray([label for _, label in items], dtype=np.int64)
