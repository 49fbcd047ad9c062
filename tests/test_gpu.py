"""The `gpu` tier (`pytest -m gpu`, run by benchmarks/gpu_check.py): what only a CUDA device can show. Each such
test is marked `gpu` and skipped, with the reason, where `torch.cuda.is_available()` is false.

Each check is a function of the device, and the fast tier runs it on the CPU wherever that means something (the
comparison of two steps, the watch on host reads, the halving, the splits on their device), so that without a GPU
only the choice of the device goes untested:
- a training step on CUDA in fp32 equals the CPU step (same weights, inputs and attack start) within FP32, for
  every method; bf16 autocast steps are finite and within BF16 of fp32; channels_last is the same step;
- no host-device synchronisation in the training loop's steps after warm-up (DGAD, RSLAD, PeerAiD, MTARD), under
  `torch.cuda.set_sync_debug_mode("error")` and a watch on every Python-level host read (`HostReads`);
- a run killed (SIGKILL, or SIGTERM mid-epoch) and resumed with --deterministic equals the unbroken run bitwise;
- the per-epoch evaluation halves its batch on a real CUDA out-of-memory error;
- `torchrun --nproc_per_node 1` trains one epoch, and the collectives run over NCCL (a one-process job that takes
  every collective's path, since a World of one skips them: NCCL refuses two processes on one GPU);
- main_eval.py runs AutoAttack on 64 images;
- the dataset splits stay on the device, where they were loaded, through training batches and evaluation.
"""
import contextlib
import importlib
import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

import pytest
import torch
from torch.overrides import TorchFunctionMode

from data import Split, TrainBatches, load_split
from evaluation.accuracy import pgd_ce_attack
from helpers import REPO, quick_trained_model, run_script, train_config
from methods import configure, get_method, method_names, training_step
from models import build_model
from runtime.checkpoints import atomic_save
from runtime.device import make_generator
from runtime.distributed import World, ddp_buffer_sync_off
from runtime.precision import autocast_factory, prepare_batch, prepare_model
from test_fast_path import update_inputs
from training import loop
from training.networks import Trainee, frozen, run_generators
from training.schedule import build_optimizer
from training.signals import GracefulStop

CUDA = torch.cuda.is_available()
NO_CUDA = ("needs a CUDA GPU and torch.cuda.is_available() is False here: run `pytest -m gpu` on a GPU machine "
           "(benchmarks/gpu_check.py, docs/performance.md)")
MODEL = "wideresnet10_1"
N = 8            # images per step
ATTACK_STEPS = 3
START_SEED = 7   # the attack's random start, drawn on the CPU for every device
PGD_ENGINE = importlib.import_module("attacks.pgd")  # the module (the package exports its function `pgd`)


def on_gpu(test):
    """Marks `test` for the gpu tier and skips it, with the reason, without CUDA."""
    return pytest.mark.gpu(pytest.mark.skipif(not CUDA, reason=NO_CUDA)(test))


def cuda():
    return torch.device("cuda", torch.cuda.current_device())


def method_flags(name: str) -> List[str]:
    """The second teacher of AKD and MTARD is the small model too (its default is a WRN-34-10)."""
    return ["--teacher_st_model", MODEL] if get_method(name).needs_natural_teacher else []


# -- one step, recorded --------------------------------------------------------------------------------------------

@dataclass
class StepRecord:
    """What one training step computed, on the CPU: the loss terms, the adversarial examples, the gradient of every
    trained parameter, and the student's BatchNorm statistics after the SGD step."""
    terms: Dict[str, torch.Tensor]
    x_adv: Optional[torch.Tensor]
    grads: torch.Tensor
    buffers: torch.Tensor


@contextlib.contextmanager
def attack_start_drawn_on_the_cpu(seed: int = START_SEED):
    """The attack's random start drawn from a CPU generator whatever the device, so that steps on two devices start
    from the same point (a CUDA generator's stream is not the CPU's). `pgd` looks `init_delta` up at each call."""
    real, generator = PGD_ENGINE.init_delta, torch.Generator().manual_seed(seed)

    def init_delta(x, eps, init, _generator=None, batch_rows=None):
        return real(x.cpu(), eps, init, generator, batch_rows).to(x.device)
    PGD_ENGINE.init_delta = init_delta
    try:
        yield
    finally:
        PGD_ENGINE.init_delta = real


def record_step(name: str, device, precision: str = "fp32", channels_last: bool = False,
                start_seed: int = START_SEED, perturb: float = 0.0) -> StepRecord:
    """One step of method `name` (attack, forward passes, loss, backward, SGD step) on `device`, from networks, a
    batch and an attack start that do not depend on the device. `perturb` moves the student's first weight (to
    show that a comparison can fail)."""
    device = torch.device(device)
    config = train_config(name, "--num_steps", str(ATTACK_STEPS), *method_flags(name), model=MODEL, bs=N)
    method = configure(config)
    torch.manual_seed(0)
    student = build_model(MODEL, 10)
    teacher = frozen(build_model(MODEL, 10)) if method.needs_teacher else None
    natural = frozen(build_model(MODEL, 10)) if method.needs_natural_teacher else None
    extra = method.extra_module(student, teacher)
    with torch.no_grad():
        next(student.parameters()).view(-1)[0] += perturb
    for network in (student, teacher, natural, extra):
        if network is not None:
            prepare_model(network.to(device), channels_last)
    params = list(student.parameters()) + ([] if extra is None else list(extra.parameters()))
    optimizer = build_optimizer(config, params)
    generator = torch.Generator().manual_seed(1)
    x, y = torch.rand(N, 3, 32, 32, generator=generator), torch.randint(0, 10, (N,), generator=generator)
    x, y = prepare_batch(x.to(device), channels_last), y.to(device)
    seen, hook = update_inputs(student)
    try:
        with attack_start_drawn_on_the_cpu(start_seed):
            terms, _ = training_step(method, student, teacher, x, y, config.epochs,  # past every warm-up
                                     autocast=autocast_factory(precision, device), extra=extra,
                                     natural_teacher=natural)
    finally:
        hook.remove()
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    grads = torch.cat([p.grad.detach().float().flatten().cpu() for p in params if p.grad is not None])
    optimizer.step()
    passes = [key for key in method.passes(config.epochs) if key.startswith("s_")]
    x_adv = seen[passes.index("s_adv")].cpu() if "s_adv" in passes else None
    buffers = torch.cat([b.detach().float().flatten().cpu() for b in student.buffers() if b.is_floating_point()])
    return StepRecord({k: v.detach().float().cpu() for k, v in terms.items()}, x_adv, grads, buffers)


@dataclass(frozen=True)
class Tolerance:
    terms: float    # |a - b| / (max(|a|, |b|) + 1e-3), for every loss term (a KL near 0 is rounding error only)
    pixels: float   # fraction of adversarial pixels that differ (a sign flip of a near-zero gradient moves one a step)
    grads: float    # ||a - b|| / ||a|| of the parameters' gradients
    buffers: float  # ||a - b|| / ||a|| of the BatchNorm statistics after the step


# fp32 on two devices (or two memory layouts), TF32 off: rounding differences only, amplified where a random network's
# near-zero gradient flips an attack step's sign. Measured on the CPU between channels_last and NCHW, over every
# method: at most 6.6e-4 (terms, ARD: tau^2 = 900 times a KL of 4e-6), 0.85% of the pixels (TRADES, whose attack
# starts where its KL's gradient vanishes), 2.0e-3 (grads), 6e-5 (buffers).
FP32 = Tolerance(terms=5e-3, pixels=0.05, grads=2e-2, buffers=1e-3)
# bf16 autocast against fp32 (8 bits of mantissa in the networks), measured on the CPU over every method: at most
# 2.5e-2 (terms, SAAD), 0.16 (grads, AKD), 1.2e-3 (buffers); the pixels are not compared (63% differ for TRADES:
# the signs of near-zero gradients).
BF16 = Tolerance(terms=0.1, pixels=1.0, grads=0.5, buffers=0.01)


def step_differences(a: StepRecord, b: StepRecord) -> Dict[str, float]:
    def relative(u, v):
        return float((u - v).norm() / u.norm().clamp(min=1e-12))
    terms = max(float((a.terms[k] - b.terms[k]).abs() / (max(a.terms[k].abs(), b.terms[k].abs()) + 1e-3))
                for k in a.terms)
    pixels = 0.0 if a.x_adv is None else float(((a.x_adv - b.x_adv).abs() > 1e-5).float().mean())
    return {"terms": terms, "pixels": pixels, "grads": relative(a.grads, b.grads),
            "buffers": relative(a.buffers, b.buffers)}


def assert_same_step(a: StepRecord, b: StepRecord, tolerance: Tolerance) -> None:
    assert a.terms.keys() == b.terms.keys()
    for record in (a, b):
        assert all(torch.isfinite(v).all() for v in record.terms.values()) and torch.isfinite(record.grads).all()
    differences = step_differences(a, b)
    beyond = {k: v for k, v in differences.items() if not v <= getattr(tolerance, k)}
    assert not beyond, f"the steps differ beyond {tolerance}: {differences}"


@pytest.fixture
def fp32_without_tf32():
    """fp32 arithmetic on the GPU: TF32 off for convolutions and matmuls (cuDNN's default is on: a precision
    choice like bf16, compared separately), restored after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


FAST_TIER_METHODS = ("DGAD", "RSLAD", "PeerAiD", "MTARD", "VarGap")


@pytest.mark.parametrize("name", FAST_TIER_METHODS)
def test_a_step_recorded_twice_on_the_cpu_is_the_same_step(name):
    a, b = record_step(name, "cpu"), record_step(name, "cpu")
    assert step_differences(a, b) == {"terms": 0.0, "pixels": 0.0, "grads": 0.0, "buffers": 0.0}
    assert_same_step(a, b, FP32)


@pytest.mark.parametrize("change", [{"start_seed": START_SEED + 1}, {"perturb": 0.05}])
def test_the_step_comparison_fails_on_another_attack_start_or_other_weights(change):
    with pytest.raises(AssertionError, match="the steps differ"):
        assert_same_step(record_step("DGAD", "cpu"), record_step("DGAD", "cpu", **change), FP32)


@pytest.mark.parametrize("name", FAST_TIER_METHODS)
def test_channels_last_is_the_same_step_on_the_cpu(name):
    assert_same_step(record_step(name, "cpu"), record_step(name, "cpu", channels_last=True), FP32)


@on_gpu
@pytest.mark.parametrize("name", method_names())
def test_a_cuda_step_in_fp32_equals_the_cpu_step(name, fp32_without_tf32):
    assert_same_step(record_step(name, "cpu"), record_step(name, cuda()), FP32)


@on_gpu
@pytest.mark.parametrize("name", method_names())
def test_bf16_autocast_steps_on_cuda_are_finite_and_close_to_fp32(name, fp32_without_tf32):
    if not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} has no bf16")
    assert_same_step(record_step(name, cuda()), record_step(name, cuda(), precision="bf16"), BF16)


@on_gpu
@pytest.mark.parametrize("name", method_names())
def test_channels_last_is_the_same_step_on_cuda(name, fp32_without_tf32):
    assert_same_step(record_step(name, cuda()), record_step(name, cuda(), channels_last=True), FP32)


# -- no host synchronisation in the steps ----------------------------------------------------------------------------

VALUE_READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__", "__format__",
               "__array__", "equal", "allclose", "is_nonzero"}
VALUE_SHAPED = {"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "repeat_interleave"}
# The one read the loop makes on purpose at every step: --nan_policy stop's is-finite flag of the step before,
# copied to pinned memory behind that step's work (no wait on the step just queued; training/finite.py).
ALLOWED_READS = ("training/finite.py", "check")


def holds_bool_tensor(index) -> bool:
    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(torch.is_tensor(i) and i.dtype == torch.bool for i in items)


class HostReads(TorchFunctionMode):
    """While `armed`, records each Python-level call that makes the host wait for a CUDA device: reading a value
    (.item(), bool(), int(), float(), f-strings, .tolist(), .cpu(), torch.equal), a result whose size depends on
    values (nonzero, masked_select, unique, boolean-mask indexing, torch.where with one argument), and a tensor
    made from host data on a device (torch.tensor(..., device=...)), with where our code made it. The CPU's
    stand-in for torch.cuda.set_sync_debug_mode("error"), which also sees syncs inside kernels."""

    def __init__(self):
        super().__init__()
        self.armed = False
        self.reads: List[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.armed:
            name = getattr(func, "__name__", "")
            if (name in VALUE_READS or name in VALUE_SHAPED
                    or (func is torch.where and len(args) + len(kwargs) == 1)
                    or (name in ("__getitem__", "__setitem__", "index_put_", "index_put") and len(args) > 1
                        and holds_bool_tensor(args[1]))
                    or (name in ("tensor", "as_tensor") and kwargs.get("device") is not None)):
                self.reads.append(f"{name} at {caller_in_repo()}")
        return func(*args, **kwargs)


def caller_in_repo() -> str:
    """'file:line (function)' of the innermost frame of this repository's code (tests excluded) on the stack."""
    frame = sys._getframe(2)
    while frame is not None:
        path = os.path.relpath(frame.f_code.co_filename, REPO)
        if not path.startswith(("..", "tests" + os.sep)) and not os.path.isabs(path):
            return f"{path}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return "outside the repository"


def is_allowed(read: str) -> bool:
    path, function = ALLOWED_READS
    return f" at {path}:" in read and read.endswith(f"({function})")


class WatchedBatches:
    """The training batches, each step after the first `warmup` watched: HostReads armed and, on CUDA, the sync
    debug mode at "error" (a synchronising CUDA call raises). The watch ends when the batches run out, before the
    epoch's one read of its totals. Drawing a batch is part of the step."""

    def __init__(self, batches: TrainBatches, warmup: int, reads: HostReads):
        self.batches, self.warmup, self.reads, self.split = batches, warmup, reads, batches.split
        self.cuda = batches.split.labels.is_cuda
        self.watched = 0

    def __len__(self):
        return len(self.batches)

    def watch(self, on: bool) -> None:
        self.reads.armed = on
        if self.cuda:
            torch.cuda.set_sync_debug_mode("error" if on else "default")

    def __iter__(self):
        try:
            for step, batch in enumerate(self.batches):
                self.watch(step >= self.warmup)
                self.watched += step >= self.warmup
                yield batch
        finally:
            self.watch(False)


SYNC_FREE = ("DGAD", "RSLAD", "PeerAiD", "MTARD")


def watched_epoch(name: str, device, steps: int = 5, warmup: int = 2, precision: str = "fp32",
                  channels_last: bool = False) -> List[str]:
    """One epoch of `steps` steps of `name` through the training loop's own `train_one_epoch` (data, attack,
    passes, loss, backward, SGD step, the totals, the finite check), the steps after `warmup` watched; returns the
    host reads seen there (on CUDA a synchronising call raises first)."""
    device = torch.device(device)
    flags = ["--num_steps", "2", "--precision", precision, *(["--channels_last"] if channels_last else [])]
    config = train_config(name, *flags, *method_flags(name), model=MODEL, bs=N)
    method = configure(config)
    torch.manual_seed(0)
    student = build_model(MODEL, 10).to(device)
    teacher = frozen(build_model(MODEL, 10).to(device)) if method.needs_teacher else None
    natural = frozen(build_model(MODEL, 10).to(device)) if method.needs_natural_teacher else None
    extra = method.extra_module(student, teacher)
    for network in (student, teacher, natural, extra):
        if network is not None:
            prepare_model(network.to(device), channels_last)
    params = list(student.parameters()) + ([] if extra is None else list(extra.parameters()))
    trainee = Trainee(student, teacher, extra, build_optimizer(config, params), run_generators(device, 0),
                      natural_teacher=natural, method=method)
    batches = TrainBatches(synthetic_split(N * steps, device), N, trainee.generators["data"])
    reads = HostReads()
    watched = WatchedBatches(batches, warmup, reads)
    with reads:
        stats = loop.train_one_epoch(method, trainee, watched, config.epochs, 0.01, config,
                                     autocast_factory(precision, device), GracefulStop())
    assert watched.watched == steps - warmup and stats.seen == N * steps and math.isfinite(stats.loss)
    return reads.reads


def synthetic_split(n: int, device, seed: int = 0) -> Split:
    generator = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator).to(device),
                 torch.randint(0, 10, (n,), generator=generator).to(device))


@pytest.mark.parametrize("name", method_names())
def test_the_training_steps_read_nothing_from_the_device_but_the_lagged_finite_flag(name):
    reads = watched_epoch(name, "cpu")
    assert [read for read in reads if not is_allowed(read)] == []
    assert len(reads) == 3  # the flag of each watched step's predecessor, read once per step


def test_the_host_read_watch_catches_a_read_in_a_step(monkeypatch):
    """A host read in a method's loss (what the released DGAD loop does with n_ST) is caught, with its place."""
    dgad = type(configure(train_config("DGAD", model=MODEL, bs=N)))
    real = dgad.loss

    def loss_reading_n_st(self, out):
        terms = real(self, out)
        float(terms["st_fraction"])
        return terms
    monkeypatch.setattr(dgad, "loss", loss_reading_n_st)
    reads = [read for read in watched_epoch("DGAD", "cpu") if not is_allowed(read)]
    assert len(reads) == 3 and all(read.startswith("__float__ at ") for read in reads), reads


@on_gpu
@pytest.mark.parametrize("name, precision, channels_last",
                         [(name, "fp32", False) for name in SYNC_FREE] + [("DGAD", "bf16", True)])
def test_no_host_sync_in_cuda_training_steps_after_warm_up(name, precision, channels_last):
    try:
        reads = watched_epoch(name, cuda(), precision=precision, channels_last=channels_last)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [read for read in reads if not is_allowed(read)] == []


# -- the dataset splits stay on their device -------------------------------------------------------------------------

def assert_the_split_stays_on_its_device(split: Split, batch_size: int) -> None:
    """Training batches and the per-epoch evaluation read the split where it is, and leave it there."""
    device, pointers = split.labels.device, (split.images.data_ptr(), split.labels.data_ptr())
    for x, y, _ in TrainBatches(split, batch_size, make_generator(device, 0)):
        assert x.device == y.device == device and x.dtype == torch.float32
    model = build_model(MODEL, 10).to(device)
    attack = pgd_ce_attack(8 / 255, 2 / 255, 2, generator=make_generator(device, 1))
    evaluated, _ = loop.evaluate(model, split, batch_size, attack)
    assert 0 <= evaluated[0] <= 100 and 0 <= evaluated[1] <= 100
    assert split.images.device == split.labels.device == device
    assert (split.images.data_ptr(), split.labels.data_ptr()) == pointers


def test_the_split_stays_on_the_cpu():
    assert_the_split_stays_on_its_device(synthetic_split(40, "cpu"), 16)


@on_gpu
def test_the_dataset_splits_stay_on_the_gpu(cifar10_data_dir):
    split = load_split("CIFAR10", cifar10_data_dir, "test", cuda(), 512)
    assert split.images.device == split.labels.device == cuda() and split.images.dtype == torch.uint8
    assert_the_split_stays_on_its_device(split, 128)


# -- the evaluation's batch halves on a real out-of-memory error ----------------------------------------------------

@on_gpu
def test_the_per_epoch_evaluation_halves_its_batch_on_a_real_cuda_out_of_memory_error(capsys):
    """The caching allocator is capped 1 GiB above what this process holds, so PGD-10 through a ResNet-18 on 1024
    images (about 6 GiB of activations) runs out of memory for real, until the batch fits."""
    device = cuda()
    split = synthetic_split(1024, device)
    model = build_model("resnet18", 10).to(device)
    attack = pgd_ce_attack(8 / 255, 2 / 255, 10, generator=make_generator(device, 0))
    torch.cuda.empty_cache()
    cap = torch.cuda.memory_reserved(device) + 2 ** 30
    torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.get_device_properties(device).total_memory, device)
    try:
        evaluated, batch_size = loop.evaluate(model, split, 1024, attack)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()
    assert batch_size < 1024 and f"--eval_bs lowered to {batch_size}" in capsys.readouterr().err
    again, size = loop.evaluate(model, split, batch_size, attack)
    assert size == batch_size and again[0] == evaluated[0]  # clean accuracy does not depend on the batch


# -- a run killed and resumed is the unbroken run --------------------------------------------------------------------

def cuda_run_args(data_dir: str, teacher: str, save_dir) -> List[str]:
    """test_reliability's tiny --deterministic DGAD run, with enough steps per epoch (256) that a GPU is still in
    the second of three epochs when the first one's line is read."""
    from test_reliability import tiny_args
    return tiny_args(data_dir, teacher, save_dir) + ["--train_subset", "4096"]


@pytest.fixture(scope="module")
def unbroken_cuda_run(tmp_path_factory, cifar10_data_dir, small_teacher):
    from test_reliability import finish
    save_dir = tmp_path_factory.mktemp("unbroken") / "run"
    finish(cuda_run_args(cifar10_data_dir, small_teacher, save_dir))
    assert "cuda" in json.loads((save_dir / "config.json").read_text())["device"]
    return save_dir


@on_gpu
@pytest.mark.parametrize("stop", ["SIGKILL", "SIGTERM"])
def test_a_cuda_run_killed_and_resumed_with_deterministic_equals_the_unbroken_run_bitwise(
        tmp_path, cifar10_data_dir, small_teacher, unbroken_cuda_run, stop):
    """SIGKILL: the resume restarts the second epoch from the first's last.pth; SIGTERM: the step finishes and the
    resume continues mid-epoch from its cursor (the data stream's CUDA generator state, the totals on the device)."""
    from test_reliability import assert_same_run, finish, start, wait_for_line
    args = cuda_run_args(cifar10_data_dir, small_teacher, tmp_path / "run")
    process = start(args)
    wait_for_line(process, "epoch 1/3")
    process.send_signal(getattr(signal, stop))
    _, err = process.communicate(timeout=300)
    assert process.returncode == (-signal.SIGKILL if stop == "SIGKILL" else 143), err
    saved = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert saved["epoch"] < 3, "the run ended before the signal: give its epochs more steps"
    out = finish(args + ["--resume"])
    assert "resumed" in out and "epoch 1/3" not in out
    assert_same_run(tmp_path / "run", unbroken_cuda_run)


# -- torchrun and NCCL ------------------------------------------------------------------------------------------------

def torchrun(*args, timeout: int = 180) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 1 <args>`, keeping PYTHONPATH (wheels carried to a GPU machine are
    installed there), the repository and tests/ put first."""
    path = os.pathsep.join(p for p in (REPO, os.path.join(REPO, "tests"), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=path)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                           *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@on_gpu
def test_torchrun_with_one_process_trains_one_epoch_on_the_gpu(tmp_path, cifar10_data_dir, small_teacher):
    save_dir = tmp_path / "run"
    result = torchrun("main.py", "--model", MODEL, "--teacher_model", MODEL, "--teacher_path", small_teacher,
                      "--data_dir", cifar10_data_dir, "--train_subset", "512", "--test_subset", "128", "--bs", "64",
                      "--num_steps", "2", "--epochs", "1", "--save_dir", str(save_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("epoch 1/1") == 1
    config = json.loads((save_dir / "config.json").read_text())
    assert config["world_size"] == 1 and "cuda" in config["device"]


class EveryCollective(World):
    """A job of one process that still runs every collective (a World of one skips them all)."""

    @property
    def distributed(self) -> bool:
        return True


def nccl_job(out_path: str) -> None:
    """Under `torchrun --nproc_per_node 1`: one DGAD epoch and its evaluation on the GPU, alone and through every
    collective over NCCL (DistributedDataParallel, the rows gathered, buffers broadcast, the stop agreed over gloo,
    the evaluation's counts and moments reduced); process 0 saves both for the test to compare."""
    import torch.distributed as dist
    from runtime.distributed import join
    assert not join(1.0, use_cuda=True).distributed  # torchrun's one process is the single-process path
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)
    job = EveryCollective(control=dist.new_group(backend="gloo"))
    results = {"alone": dgad_epoch(device, World()), "nccl": dgad_epoch(device, job)}
    job.leave()
    torch.save(results, out_path)


def dgad_epoch(device, world: World) -> Dict:
    config = train_config("DGAD", "--num_steps", "2", model=MODEL, bs=N)
    method = configure(config)
    torch.manual_seed(0)
    student, teacher = build_model(MODEL, 10).to(device), frozen(build_model(MODEL, 10).to(device))
    trainee = Trainee(student, teacher, None, build_optimizer(config, list(student.parameters())),
                      run_generators(device, 3), method=method)
    trainee.distribute(world, device)
    batches = TrainBatches(synthetic_split(5 * N, device), N, trainee.generators["data"])
    stats = loop.train_one_epoch(method, trainee, batches, 1, 0.1, config, None, GracefulStop(), None, world)
    evaluated, _ = loop.evaluate(student, synthetic_split(40, device, seed=1), 16,
                                 loop.per_epoch_attack(config, trainee.generators["eval"]), world=world)
    return {"weights": {k: v.cpu() for k, v in student.state_dict().items()}, "loss": stats.loss,
            "accuracy": stats.accuracy, "evaluated": list(evaluated)}


def test_the_ddp_keyword_that_stops_forward_buffer_syncs_exists_in_this_torch():
    """Named for the torch that runs (2.13 renamed it); a torch without the new name gets the old one."""
    import inspect
    (name,) = ddp_buffer_sync_off()
    assert name in inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters

    class OlderDDP:
        def __init__(self, module, device_ids=None, broadcast_buffers=True):
            pass
    assert ddp_buffer_sync_off(OlderDDP) == {"broadcast_buffers": False}


@on_gpu
def test_collectives_over_nccl_train_as_one_process_does(tmp_path):
    out = tmp_path / "nccl.pt"
    result = torchrun(os.path.join(REPO, "tests", "test_gpu.py"), str(out))
    assert result.returncode == 0, result.stderr
    results = torch.load(out, weights_only=True)
    alone, nccl = results["alone"], results["nccl"]
    for key, value in alone["weights"].items():
        assert torch.allclose(nccl["weights"][key].float(), value.float(), rtol=1e-5, atol=1e-6), key
    assert nccl["loss"] == pytest.approx(alone["loss"], rel=1e-5) and nccl["accuracy"] == alone["accuracy"]
    assert nccl["evaluated"][:2] == alone["evaluated"][:2]


# -- main_eval.py with AutoAttack -------------------------------------------------------------------------------------

@on_gpu
def test_main_eval_runs_autoattack_on_64_images_on_the_gpu(tmp_path, cifar10_data_dir):
    checkpoint, report_path = tmp_path / "model.pth", tmp_path / "report.json"
    atomic_save({"net": quick_trained_model(cifar10_data_dir).state_dict()}, str(checkpoint))
    result = run_script("main_eval.py", "--model", MODEL, "--model_path", str(checkpoint), "--data_dir",
                        cifar10_data_dir, "--attacks", "natural", "aa", "--n_ex", "64", "--bs", "64", "--out",
                        str(report_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert report["complete"] and report["device"].startswith("cuda") and report["n_examples"] == 64
    natural, aa = (report["radii"]["8"]["results"][name] for name in ("natural", "aa"))
    assert aa["n"] == natural["n"] == 64 and 0 <= aa["accuracy"] <= natural["accuracy"]
    assert natural["accuracy"] > 0 and aa["params"]["attacks_run"][:1] == ["apgd-ce"]


if __name__ == "__main__":  # the NCCL job of test_collectives_over_nccl_train_as_one_process_does, under torchrun
    nccl_job(sys.argv[1])
