"""Fixtures only (shared helpers live in helpers.py): the real datasets from ../shared/data,
unpacked once into a cache folder. A test that reads them is marked `slow` here, so that
`pytest -m "not slow"` is the fast tier."""
import os
import subprocess
import sys

import pytest
import torch

from helpers import REPO

SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
DATA_CACHE = os.environ.get("ADVKD_TEST_DATA", os.path.join(os.path.expanduser("~"), ".cache", "advkd-data"))

torch.set_num_threads(max(1, min(2, int(os.environ.get("OMP_NUM_THREADS", "2")))))


def pytest_collection_modifyitems(items):
    for item in items:
        if {"real_data_dir", "cifar10_data_dir"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def real_data_dir():
    """A folder holding cifar-10-batches-py/ and tiny-imagenet-200/ unpacked from ../shared/data."""
    prepare = os.path.join(SHARED_DATA, "prepare.py")
    if not os.path.isfile(prepare):
        pytest.skip(f"real datasets need {SHARED_DATA} (the shared/ folder beside the checkout), absent here")
    done = all(os.path.exists(os.path.join(DATA_CACHE, p))
               for p in ("cifar-10-batches-py/batches.meta", "tiny-imagenet-200/val/val_annotations.txt"))
    if not done:
        subprocess.run([sys.executable, prepare, DATA_CACHE], check=True, capture_output=True)
    return DATA_CACHE


@pytest.fixture(scope="session")
def small_teacher(tmp_path_factory):
    """A randomly initialised wideresnet10_1 teacher checkpoint for CIFAR-10 (the cost of a teacher, not its skill)."""
    from models import build_model
    path = tmp_path_factory.mktemp("teacher") / "wrn10_1.pth"
    torch.manual_seed(0)
    torch.save({"net": build_model("wideresnet10_1", 10).state_dict()}, path)
    return str(path)


@pytest.fixture(scope="session")
def cifar10_data_dir(request):
    """A folder holding cifar-10-batches-py/: $ADVKD_CIFAR10_DIR when set (benchmarks/gpu_check.py unpacks one on a
    machine without ../shared), else real_data_dir's."""
    folder = os.environ.get("ADVKD_CIFAR10_DIR")
    if folder:
        if not os.path.isfile(os.path.join(folder, "cifar-10-batches-py", "batches.meta")):
            pytest.fail(f"ADVKD_CIFAR10_DIR={folder} holds no cifar-10-batches-py/ (unpack it with prepare.py)")
        return folder
    return request.getfixturevalue("real_data_dir")
