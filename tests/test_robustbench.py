"""Any RobustBench model as a teacher (teachers/robustbench.py), through robustbench's own load_model, from a
checkpoint placed in the cache first: no test downloads (robustbench's download function is replaced wherever
a test asks for --download). The tests that need the package skip, saying so, where it is not installed; CI
installs requirements-robustbench.txt, so they run there."""
import contextlib
import csv
import glob
import importlib.util
import json
import math
import os
import sys

import pytest
import torch

from helpers import run_script
from runtime.checkpoints import sha256_of
from runtime.errors import UserError
from teachers import robustbench as rb

ENTRY = "Rebuffi2021Fixing_R18_ddpm"  # DMPreActResNet-18 with Swish: the cheapest of robustbench's own families


@pytest.fixture(scope="module")
def robustbench():
    """The package, or a skip where it is not installed (an installed one that fails to import fails the test)."""
    if importlib.util.find_spec("robustbench") is None:
        pytest.skip("robustbench is not installed here (pip install -r requirements-robustbench.txt; CI does)")
    return rb.import_robustbench()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty teacher cache ($ADVKD_CACHE) in which robustbench's download function fails the test."""
    monkeypatch.setenv("ADVKD_CACHE", str(tmp_path / "cache"))
    if "robustbench.utils" in sys.modules:
        def no_download(*args, **kwargs):
            raise AssertionError("a test tried to download")
        monkeypatch.setattr(sys.modules["robustbench.utils"], "download_gdrive_new", no_download)
        monkeypatch.setattr(sys.modules["robustbench.utils"], "download_gdrive", no_download)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def entry_state(robustbench):
    """A randomly initialised state dict of ENTRY's architecture, built by robustbench's own model-zoo entry."""
    torch.manual_seed(0)
    return rb.find_entry(ENTRY, "CIFAR10")["model"]().state_dict()


def place(path, obj=None, data=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if data is not None:
        with open(path, "wb") as f:
            f.write(data)
    else:
        torch.save(obj, path)
    return path


def files_under(folder):
    return sorted(p for p in glob.glob(os.path.join(str(folder), "**", "*"), recursive=True) + glob.glob(
        os.path.join(str(folder), "**", ".*"), recursive=True) if os.path.isfile(p))


def error_of(*args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        rb.load_robustbench(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_placed_checkpoint_loads_through_robustbench_in_eval_mode(robustbench, cache, entry_state, monkeypatch):
    path = place(str(cache / "robustbench" / "cifar10" / "Linf" / f"{ENTRY}.pt"), entry_state)
    called = []
    original = sys.modules["robustbench.utils"].load_model
    monkeypatch.setattr(sys.modules["robustbench.utils"], "load_model",
                        lambda *a, **k: called.append((a, k)) or original(*a, **k))
    model, returned = rb.load_robustbench(ENTRY, "CIFAR10")
    assert called and called[0][0] == (ENTRY,) and called[0][1]["model_dir"] == str(cache / "robustbench")
    assert returned == path and sha256_of(returned) == sha256_of(path)
    assert not model.training and all(not m.training for m in model.modules())
    reference = rb.find_entry(ENTRY, "CIFAR10")["model"]()
    reference.load_state_dict(entry_state)
    x = torch.rand(2, 3, 32, 32)  # [0, 1] pixels: robustbench's models normalise inside
    with torch.no_grad():
        assert torch.equal(model(x), reference.eval()(x))
    assert files_under(cache) == [path]  # nothing else written


def test_the_cache_is_advkd_cache_or_home(monkeypatch):
    monkeypatch.setenv("ADVKD_CACHE", "/somewhere")
    assert rb.model_dir() == os.path.join("/somewhere", "robustbench")
    monkeypatch.delenv("ADVKD_CACHE")
    assert rb.model_dir() == os.path.join(os.path.expanduser("~"), ".cache", "advkd", "teachers", "robustbench")


def test_unknown_name_lists_the_close_ones(robustbench, cache):
    message = error_of("Rebufi2021Fixing_R18_ddpm", "CIFAR10")
    assert message.startswith("unknown RobustBench model 'Rebufi2021Fixing_R18_ddpm' for cifar10 Linf")
    assert f"close names: {ENTRY}" in message
    assert f"close names: {ENTRY}" in error_of(ENTRY.lower(), "CIFAR10")  # case differs
    assert "close names" not in error_of("Nothing", "CIFAR10")
    assert not cache.exists()


def test_a_name_of_another_dataset_or_threat_model_says_which(robustbench, cache):
    zoo = rb._zoo(robustbench)
    cifar100_only = next(n for n in zoo[("cifar100", "Linf")] if all(n not in zoo[k] for k in zoo
                                                                      if k != ("cifar100", "Linf")))
    message = error_of(cifar100_only, "CIFAR10")
    assert f"is a RobustBench model of cifar100 Linf, not of cifar10 Linf (pass --dataset CIFAR100)" in message
    l2_only = next(n for n in zoo[("cifar10", "L2")] if all(n not in zoo[k] for k in zoo if k != ("cifar10", "L2")))
    assert f"robustbench:{l2_only} is a RobustBench model of cifar10 L2, not of cifar10 Linf" == error_of(l2_only,
                                                                                                        "CIFAR10")
    imagenet_only = next(n for n in zoo[("imagenet", "Linf")] if all(n not in zoo[k] for k in zoo
                                                                     if k != ("imagenet", "Linf")))
    assert "of imagenet Linf, not of cifar100 Linf" in error_of(imagenet_only, "CIFAR100")
    assert "RobustBench has no Tiny_Image models" in error_of(ENTRY, "Tiny_Image")
    assert "RobustBench has no Linf2 models for cifar10" in error_of(ENTRY, "CIFAR10", threat="Linf2")
    assert not cache.exists()


def test_entries_without_one_checkpoint_file_are_refused(robustbench, cache, monkeypatch):
    assert "is served by timm" in error_of("Debenedetti2022Light_XCiT-S12", "CIFAR10")  # pretrained from the hub
    assert "is an ensemble of 3 checkpoint files" in error_of("Chen2020Adversarial", "CIFAR10")
    timm = sys.modules["timm"]  # robustbench asks timm first: an entry timm knows never reads our file
    monkeypatch.setattr(timm, "is_model", lambda name: name == f"{ENTRY.lower()}_cifar10_linf")
    assert "is served by timm" in error_of(ENTRY, "CIFAR10")
    assert not cache.exists()


def test_no_cached_file_and_no_download_says_where_to_put_it(robustbench, cache):
    message = error_of(ENTRY, "CIFAR10")
    path = cache / "robustbench" / "cifar10" / "Linf" / f"{ENTRY}.pt"
    gdrive_id = rb.find_entry(ENTRY, "CIFAR10")["gdrive_id"]
    assert message == (f"the checkpoint of robustbench:{ENTRY} is not in the cache: put it at {path} "
                       f"(from https://drive.google.com/uc?id={gdrive_id}) or add --download")
    assert not cache.exists()


def test_an_html_body_in_place_of_the_file_is_named_never_an_unpickling_error(robustbench, cache, monkeypatch):
    monkeypatch.setattr(sys.modules["robustbench.utils"], "load_model", lambda *a, **k: pytest.fail("not checked"))
    path = place(str(cache / "robustbench" / "cifar10" / "Linf" / f"{ENTRY}.pt"),
                 data=b"\n<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>")
    message = error_of(ENTRY, "CIFAR10")
    assert message.startswith(f"{path} is an HTML page ('Google Drive - Virus scan warning') instead of the "
                              f"checkpoint; ")
    assert f"download https://drive.google.com/uc?id=" in message and f"by hand into {path}" in message
    assert "invalid load key" not in message


@pytest.mark.parametrize("body, expected", [
    (b"PK\x03\x04" + b"\0" * 64, "the file is truncated or corrupt"),
    (b"plain text, not a checkpoint", "is not a torch checkpoint (it starts with b'plain te')"),
])
def test_an_unreadable_cached_file_is_one_line(robustbench, cache, monkeypatch, body, expected):
    monkeypatch.setattr(sys.modules["robustbench.utils"], "load_model", lambda *a, **k: pytest.fail("not checked"))
    path = place(str(cache / "robustbench" / "cifar10" / "Linf" / f"{ENTRY}.pt"), data=body)
    message = error_of(ENTRY, "CIFAR10")
    assert expected in message and f"by hand into {path}" in message


class _Crafted:
    """Unpickling it would create `marker`: the code a crafted checkpoint runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_crafted_pickle_is_refused_and_runs_nothing(robustbench, cache, tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules["robustbench.utils"], "load_model", lambda *a, **k: pytest.fail("not checked"))
    marker = tmp_path / "ran"
    place(str(cache / "robustbench" / "cifar10" / "Linf" / f"{ENTRY}.pt"), {"state_dict": _Crafted(str(marker))})
    message = error_of(ENTRY, "CIFAR10")
    assert message.startswith("refused to load") and "nothing in it was run" in message
    assert not marker.exists()


def test_a_file_of_another_architecture_is_one_line(robustbench, cache):
    place(str(cache / "robustbench" / "cifar10" / "Linf" / f"{ENTRY}.pt"), {"fc.weight": torch.zeros(10, 4)})
    message = error_of(ENTRY, "CIFAR10")
    assert message.startswith(f"robustbench could not load") and "RuntimeError" in message


def test_download_writes_the_file_only_once_checked(robustbench, cache, entry_state, monkeypatch):
    """--download goes through robustbench's own Google Drive download into a temporary name: an HTML page or a
    network failure leaves nothing in the cache; a checkpoint is renamed into place and then used as cached."""
    utils = sys.modules["robustbench.utils"]
    path = str(cache / "robustbench" / "cifar10" / "Linf" / f"{ENTRY}.pt")
    gdrive_id = rb.find_entry(ENTRY, "CIFAR10")["gdrive_id"]

    def fake(body=None, error=None):
        def download(got_id, fname_save):
            assert got_id == gdrive_id and os.path.dirname(fname_save) == os.path.dirname(path) and fname_save != path
            with open(str(fname_save) + "abc.part", "wb") as f:  # gdown's own partial file beside it
                f.write(b"partial")
            if error:
                raise error
            place(fname_save, data=body) if isinstance(body, bytes) else torch.save(body, fname_save)
        monkeypatch.setattr(utils, "download_gdrive_new", download)

    fake(body=b"<html><body>Too many users have viewed or downloaded this file recently</body></html>")
    message = error_of(ENTRY, "CIFAR10", download=True)
    assert message.startswith(f"the download of https://drive.google.com/uc?id={gdrive_id} is an HTML page ")
    assert message.endswith(f"nothing was kept; download it by hand into {path}")
    assert files_under(cache) == []
    fake(error=ConnectionError("Failed to resolve 'drive.google.com'"))
    assert error_of(ENTRY, "CIFAR10", download=True) == (
        f"downloading https://drive.google.com/uc?id={gdrive_id} failed (ConnectionError: Failed to resolve "
        f"'drive.google.com'); nothing was kept; download it by hand into {path}")
    assert files_under(cache) == []
    fake(body=entry_state)
    model, returned = rb.load_robustbench(ENTRY, "CIFAR10", download=True)
    assert returned == path and files_under(cache) == [path] and not model.training
    fake(error=AssertionError("a cached file is downloaded again"))
    assert rb.load_robustbench(ENTRY, "CIFAR10", download=True)[1] == path


def test_download_into_a_cache_that_is_not_writable_is_one_line(robustbench, cache, monkeypatch):
    folder = cache / "robustbench" / "cifar10" / "Linf"
    cache.parent.mkdir(exist_ok=True)
    cache.write_bytes(b"")  # a file where the cache folder should be: unwritable even for root
    message = error_of(ENTRY, "CIFAR10", download=True)
    assert message.startswith(f"the teacher cache folder {folder} is not writable (")
    assert message.endswith("); set ADVKD_CACHE to a writable folder")
    if os.geteuid() != 0:  # root writes into any folder
        cache.unlink()
        cache.mkdir(mode=0o500)
        try:
            assert error_of(ENTRY, "CIFAR10", download=True) == (
                f"the teacher cache folder {folder} is not writable (Permission denied); "
                f"set ADVKD_CACHE to a writable folder")
        finally:
            cache.chmod(0o700)


def test_autoattack_is_pyautoattack_for_robustbench(robustbench):
    import pyautoattack
    assert sys.modules["robustbench.eval"].AutoAttack is pyautoattack.AutoAttack


def test_the_package_missing_is_one_line_naming_the_install(monkeypatch, cache):
    for name in [n for n in sys.modules if n == "robustbench" or n.startswith("robustbench.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "robustbench", None)  # what `import robustbench` meets when it is absent
    message = error_of(ENTRY, "CIFAR10")
    assert message == ("a robustbench: teacher needs the robustbench package, which is not installed: "
                       "pip install robustbench==1.1.1 setuptools==80.9.0 (or pip install -r "
                       "requirements-robustbench.txt)")


def test_a_setuptools_without_pkg_resources_is_one_line_naming_the_pin(robustbench, monkeypatch, cache):
    for name in [n for n in sys.modules if n == "robustbench" or n.startswith("robustbench.")]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh, then restored
    monkeypatch.setitem(sys.modules, "pkg_resources", None)  # setuptools 81 and later
    message = error_of(ENTRY, "CIFAR10")
    assert message.startswith("robustbench is installed but does not import (ModuleNotFoundError: ")
    assert "pkg_resources" in message and "setuptools==80.9.0" in message


def test_a_download_waits_for_another_process_and_uses_its_file(robustbench, cache, entry_state, monkeypatch):
    """--download under torchrun or reproduce.py: one process fetches (under the folder's lock), the others
    find the file when the lock is theirs and download nothing."""
    path = str(cache / "robustbench" / "cifar10" / "Linf" / f"{ENTRY}.pt")
    real_lock = rb.folder_lock

    @contextlib.contextmanager
    def lock_won_after_another_process(folder):
        with real_lock(folder):
            torch.save(entry_state, path)  # what the other process left while this one waited
            yield
    monkeypatch.setattr(rb, "folder_lock", lock_won_after_another_process)
    assert rb.load_robustbench(ENTRY, "CIFAR10", download=True)[1] == path  # the cache fixture forbids a download
    assert files_under(cache) == [path]


@pytest.mark.slow
def test_one_dgad_epoch_with_a_robustbench_teacher(robustbench, cache, entry_state, real_data_dir, tmp_path):
    """main.py --teacher_path robustbench:NAME in a subprocess: the teacher is robustbench's model of the file in
    the cache, whose path and sha256 config.json records; a wrong name is one line and writes no run folder."""
    path = place(str(cache / "robustbench" / "cifar10" / "Linf" / f"{ENTRY}.pt"), entry_state)
    tiny = ("--method", "DGAD", "--model", "wideresnet10_1", "--train_subset", "64", "--test_subset", "32", "--bs",
            "32", "--eval_bs", "32", "--num_steps", "2", "--epochs", "1", "--data_dir", real_data_dir)
    run = tmp_path / "run"
    result = run_script("main.py", *tiny, "--teacher_path", f"robustbench:{ENTRY}", "--save_dir", str(run))
    assert result.returncode == 0, result.stderr
    with open(run / "config.json") as f:
        config = json.load(f)
    assert config["teacher_model"] == f"robustbench:{ENTRY}"
    assert (config["teacher_path"], config["teacher_sha256"]) == (path, sha256_of(path))
    with open(run / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["train_loss"]))
    wrong = tmp_path / "wrong"
    result = run_script("main.py", *tiny, "--teacher_path", "robustbench:Rebufi2021Fixing_R18_ddpm",
                        "--save_dir", str(wrong))
    assert result.returncode == 2 and not wrong.exists()
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: unknown RobustBench model 'Rebufi2021Fixing_R18_ddpm' for cifar10 Linf; close names: {ENTRY}")
