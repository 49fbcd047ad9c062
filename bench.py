"""Time training steps of any method on this machine, ours beside the plain reference step.

  python bench.py --method DGAD --model resnet18 --teacher_model wideresnet34_10 --bs 128 \
      --precision bf16 --channels_last --json bench.json

For each path it reports images/s, ms per step split into data / attack / teacher / update,
FLOPs per image counted by torch's flop counter on one real step, achieved TFLOP/s and the
fraction of this device's peak (a large matmul timed in the same run, at the same precision),
peak memory (CUDA), and seconds per epoch extrapolated from the steady-state steps. The plain
path (benchmarks/plain.py) is the step as the methods' released loops run it: fp32, input-only
attack gradients, their host syncs and host-side augmentation in a DataLoader.
"""
import os
import sys
import time
from typing import Callable, Dict, Iterator, Optional

import torch

from benchmarks.measure import (PHASES, PhaseClock, count_flops, matmul_peak_tflops, peak_memory_gib, phase_hooks,
                                reset_peak_memory, synchronize)
from benchmarks.plain import host_batches, plain_models, plain_step
from data import Shard, Split, TrainBatches, dataset_info, load_split
from methods import configure, training_step
from models import build_model
from runtime.checkpoints import atomic_write_json
from runtime.device import configure_determinism, device_name, make_generator, resolve_device, seed_everything
from runtime.distributed import World, join
from runtime.errors import UserError, exit_on_user_error, report
from runtime.precision import autocast_factory, compute_dtype, prepare_batch, prepare_model
from teachers.zoo import ROBUSTBENCH_PREFIX
from training.config import build_parser, resolve
from training.networks import frozen, load_teacher, require_teacher_file
from training.schedule import build_optimizer

DEFAULTS = {"dataset": "CIFAR10", "datasets": ["CIFAR10", "CIFAR100", "Tiny_Image"],
            "teacher_model": "wideresnet34_10"}
TRAIN_IMAGES = {"CIFAR10": 50_000, "CIFAR100": 50_000, "Tiny_Image": 100_000}
SYNTHETIC_BATCHES = 4  # distinct synthetic batches cycled through


def parse_args(argv=None):
    parser = build_parser(DEFAULTS, "Benchmark training steps: ours beside the plain reference step.")
    g = parser.add_argument_group("benchmark")
    g.add_argument("--steps", type=int, default=20, help="timed steps per path")
    g.add_argument("--warmup", type=int, default=3, help="untimed steps per path first (compilation, autotuning)")
    g.add_argument("--json", default=None, help="write every figure to this JSON file")
    g.add_argument("--no_plain", action="store_true", help="time only our path")
    g.add_argument("--plain_workers", type=int, default=2,
                   help="DataLoader worker processes of the plain path's host-side augmentation (the released "
                        "loops use 2 to 4)")
    parser.set_defaults(data_dir=None)
    parser._option_string_actions["--data_dir"].help = (
        "take batches from this dataset folder's training split (default: synthetic batches of the "
        "dataset's shape)")
    cfg = parser.parse_args(argv)
    cfg.teacher_weights = cfg.teacher_path  # random-init teacher unless weights are given
    return cfg


def validate(cfg, config) -> None:
    for flag in ("steps", "bs"):
        if getattr(cfg, flag) < 1:
            raise UserError(f"--{flag} must be >= 1, got {getattr(cfg, flag)}")
    if cfg.warmup < 0 or cfg.plain_workers < 0:
        raise UserError(f"--warmup and --plain_workers must be >= 0, got {cfg.warmup}, {cfg.plain_workers}")
    if cfg.json is not None:
        folder = os.path.dirname(os.path.abspath(cfg.json))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise UserError(f"--json {cfg.json}: {folder} is not a writable folder")
    if cfg.teacher_weights is not None and config.teacher_source is not None:
        require_teacher_file(config)  # zoo:NAME: from the cache, or fetched with --download
    elif cfg.teacher_weights is not None and not os.path.isfile(cfg.teacher_weights):
        raise UserError(f"--teacher_path {cfg.teacher_weights} does not exist (leave it out to time a "
                        f"randomly initialised teacher: the cost does not depend on its weights)")


def host_split(cfg, info) -> Split:
    """The batches' source on the host: the real training split, or synthetic uint8 images; cut to
    whole batches so every timed step has the configured size."""
    if cfg.data_dir is not None:
        split = load_split(cfg.dataset, cfg.data_dir, "train", "cpu", cfg.train_subset)
    else:
        generator = torch.Generator().manual_seed(cfg.seed)
        n, size = cfg.bs * SYNTHETIC_BATCHES, info.image_size
        split = Split(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator),
                      torch.randint(0, info.num_classes, (n,), generator=generator))
    keep = len(split) // cfg.bs * cfg.bs
    if keep == 0:
        raise UserError(f"--bs {cfg.bs} is larger than the {len(split)} training images available; lower --bs")
    return Split(split.images[:keep], split.labels[:keep])


def endless(epoch: Callable[[], Iterator]) -> Iterator:
    while True:
        yield from epoch()


def time_path(name: str, step: Callable, batches: Iterator, hooked, cfg, device, clock: PhaseClock) -> Dict:
    """Warm up, then time cfg.steps steps; phases are read once, after the last one. Under torchrun
    every process times its share of the same steps of --bs images (the whole batch)."""
    def one_step():
        clock.mark("data")
        batch = next(batches)
        clock.mark("attack")
        step(*batch, clock=clock)

    with phase_hooks(clock, *hooked):
        for _ in range(cfg.warmup):
            one_step()
        synchronize(device)
        reset_peak_memory(device)
        clock.reset()
        start = time.perf_counter()
        for _ in range(cfg.steps):
            one_step()
        clock.mark("end")
        synchronize(device)
        seconds = time.perf_counter() - start
    phase_ms = clock.milliseconds()
    clock.reset()
    images = cfg.steps * cfg.bs
    return {"path": name, "images_per_second": images / seconds, "ms_per_step": 1000.0 * seconds / cfg.steps,
            "ms_per_step_by_phase": {p: phase_ms.get(p, 0.0) / cfg.steps for p in PHASES},
            "peak_memory_gib": peak_memory_gib(device),
            "epoch_seconds": TRAIN_IMAGES[cfg.dataset] / (images / seconds)}


def add_rates(result: Dict, flops_per_image: int, peak_tflops: float) -> Dict:
    achieved = flops_per_image * result["images_per_second"] / 1e12
    result.update({"flops_per_image": flops_per_image, "achieved_tflops": achieved,
                   "peak_tflops": peak_tflops, "fraction_of_peak": achieved / peak_tflops})
    return result


def run_bench(cfg, config, world: World = World()) -> Dict:
    """cfg: the parsed arguments (the benchmark's own flags); config: the resolved training config.
    world: the processes of a torchrun job, which time DistributedDataParallel steps of --bs
    images split across them (the plain path is a single process's and is left out)."""
    method = configure(config)
    info = dataset_info(cfg.dataset)
    device = world.device() if world.distributed else resolve_device(cfg.gpu_id)
    if world.distributed:
        if cfg.bs < world.size:
            raise UserError(f"--bs {cfg.bs} is smaller than the {world.size} processes; --bs is the whole batch")
        cfg.no_plain = True
    autocast = autocast_factory(cfg.precision, device)  # rejects bf16 on a GPU without it, before any work
    configure_determinism(cfg.deterministic)  # as training does: cuDNN autotuning unless --deterministic
    seed_everything(cfg.seed)

    report(f"measuring the matmul peak on {device_name(device)} ...")
    peaks = {"fp32": matmul_peak_tflops(device, torch.float32)}
    if cfg.precision != "fp32":
        peaks[cfg.precision] = matmul_peak_tflops(device, compute_dtype(cfg.precision))

    host = host_split(cfg, info)
    on_device = Split(host.images.to(device), host.labels.to(device))
    student = build_model(cfg.model, info.num_classes).to(device)
    teacher = None
    if method.needs_teacher:
        if cfg.teacher_weights is not None:
            teacher = load_teacher(cfg.teacher_model, cfg.teacher_weights, cfg.dataset, info.num_classes, device,
                                   download=cfg.download)
        else:
            teacher = frozen(build_model(cfg.teacher_model, info.num_classes).to(device))
    # A second teacher (AKD, MTARD) is randomly initialised: its cost does not depend on its weights (a
    # robustbench:NAME one is loaded: only robustbench builds its architecture).
    natural = None
    if method.needs_natural_teacher and config.teacher_st_model.startswith(ROBUSTBENCH_PREFIX):
        natural = load_teacher(config.teacher_st_model, config.teacher_st_path, cfg.dataset, info.num_classes, device,
                               natural=True, download=cfg.download)
    elif method.needs_natural_teacher:
        natural = frozen(build_model(config.teacher_st_model, info.num_classes).to(device))
    extra = method.extra_module(student, teacher)
    if extra is not None:
        extra.to(device)
    # The plain copies are taken before our networks change layout or get compiled. A method's
    # extra module (e.g. VarGap's projector) is passed to both steps: they share it.
    plain_student, plain_teacher = plain_models(student, teacher)
    extra_params = [] if extra is None else list(extra.parameters())
    ours_optimizer = build_optimizer(config, list(student.parameters()) + extra_params)
    plain_optimizer = build_optimizer(config, list(plain_student.parameters()) + extra_params)
    device_generator = make_generator(device, cfg.seed)
    trained_student, trained_extra = world.wrap(student, device), world.wrap(extra, device)

    def ours(x, y, rows=None, clock: Optional[PhaseClock] = None):
        x = prepare_batch(x, cfg.channels_last)
        world.broadcast_buffers(student)
        terms, _ = training_step(method, student, teacher, x, y, 1, generator=device_generator,
                                 autocast=autocast, extra=trained_extra, world=world, rows=rows,
                                 trained_student=trained_student, natural_teacher=natural)
        if clock is not None:
            clock.mark("update")
        ours_optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        ours_optimizer.step()

    def plain(x, y, clock: Optional[PhaseClock] = None):
        terms, _ = plain_step(method, plain_student, plain_teacher, x, y, 1, generator=device_generator, extra=extra,
                              natural_teacher=natural)
        if clock is not None:
            clock.mark("update")
        plain_optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        plain_optimizer.step()

    clock = PhaseClock(device)
    device_batches = endless(lambda: iter(TrainBatches(on_device, cfg.bs, device_generator,
                                                       shard=Shard(world.rank, world.size))))
    # FLOPs are counted before our networks are compiled (in place): the same arithmetic, without
    # tracing the counter. Each process counts its own rows.
    x, y, rows = next(device_batches)
    ours_flops = count_flops(lambda: ours(x, y, rows)) // (rows.stop - rows.start)
    for network in (student, teacher):
        prepare_model(network, cfg.channels_last, cfg.compile)
    results = {}
    report(f"timing ours: {cfg.warmup} warm-up + {cfg.steps} steps ...")
    results["ours"] = time_path("ours", ours, device_batches, (student, teacher), cfg, device, clock)
    # The job's throughput against the peak of all its devices.
    add_rates(results["ours"], ours_flops, peaks[cfg.precision] * world.size)
    results["ours"]["images_per_second_per_process"] = results["ours"]["images_per_second"] / world.size
    results["ours"].update(precision=cfg.precision, channels_last=cfg.channels_last, compile=cfg.compile)

    if not cfg.no_plain:
        plain_batches = host_batches(host, cfg.bs, device, workers=cfg.plain_workers, seed=cfg.seed)
        report(f"timing plain: {cfg.warmup} warm-up + {cfg.steps} steps ...")
        results["plain"] = time_path("plain", plain, plain_batches, (plain_student, plain_teacher), cfg, device, clock)
        x, y = next(plain_batches)
        add_rates(results["plain"], count_flops(lambda: plain(x, y)) // cfg.bs, peaks["fp32"])
        results["plain"].update(precision="fp32", channels_last=False, compile=False)

    figures = {
        "device": device_name(device), "torch_version": str(torch.__version__), "processes": world.size,
        "tf32_convolutions": bool(torch.backends.cudnn.allow_tf32) if device.type == "cuda" else False,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if device.type == "cuda" else False,
        "config": {"method": cfg.method, "model": cfg.model, "teacher_model": cfg.teacher_model,
                   "teacher_weights": cfg.teacher_weights or ("random init" if method.needs_teacher else None),
                   "dataset": cfg.dataset, "data": cfg.data_dir or "synthetic", "bs": cfg.bs,
                   "num_steps": cfg.num_steps, "epsilon": cfg.epsilon, "step_size": cfg.step_size,
                   "precision": cfg.precision, "channels_last": cfg.channels_last, "compile": cfg.compile,
                   "steps": cfg.steps, "warmup": cfg.warmup, "seed": cfg.seed, "plain_workers": cfg.plain_workers},
        "peak_tflops": peaks,
        "paths": results,
    }
    if "plain" in results:
        ours_r, plain_r = results["ours"], results["plain"]
        compute = {name: r["ms_per_step"] - r["ms_per_step_by_phase"]["data"] for name, r in results.items()}
        figures["speedup"] = ours_r["images_per_second"] / plain_r["images_per_second"]
        figures["speedup_excluding_data"] = compute["plain"] / compute["ours"]
    return figures


def format_report(report: Dict) -> str:
    c = report["config"]
    processes = report.get("processes", 1)
    lines = [f"device: {report['device']}  torch {report['torch_version']}"
             + (f"  {processes} processes (torchrun), --bs split across them; img/s of the whole job"
                if processes > 1 else ""),
             f"{c['method']}  {c['model']}"
             + (f" <- {c['teacher_model']} ({c['teacher_weights']})" if c["teacher_model"] else " (no teacher)")
             + f"  {c['dataset']} "
             f"{c['data']}  bs {c['bs']}  K={c['num_steps']}  {c['steps']} steps after {c['warmup']} warm-up",
             "peak (matmul): " + ", ".join(f"{k} {v:.3g} TFLOP/s" for k, v in report["peak_tflops"].items())]
    header = (f"{'path':<6} {'prec':<5} {'img/s':>9} {'ms/step':>9} {'data':>8} {'attack':>9} {'teacher':>8} "
              f"{'update':>8} {'GFLOP/img':>10} {'TFLOP/s':>8} {'%peak':>6} {'mem GiB':>8} {'s/epoch':>9}")
    lines.append(header)
    for name, r in report["paths"].items():
        ph = r["ms_per_step_by_phase"]
        memory = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f}"
        lines.append(f"{name:<6} {r['precision']:<5} {r['images_per_second']:>9.2f} {r['ms_per_step']:>9.1f} "
                     f"{ph['data']:>8.1f} {ph['attack']:>9.1f} {ph['teacher']:>8.1f} {ph['update']:>8.1f} "
                     f"{r['flops_per_image'] / 1e9:>10.3g} {r['achieved_tflops']:>8.3g} "
                     f"{100 * r['fraction_of_peak']:>5.1f}% {memory:>8} {r['epoch_seconds']:>9.0f}")
    if "speedup" in report:
        lines.append(f"ours/plain: {report['speedup']:.2f}x the images/s "
                     f"({report['speedup_excluding_data']:.2f}x without the data phase)")
    return "\n".join(lines)


def main(argv=None) -> int:
    cfg = parse_args(argv)
    with exit_on_user_error():
        config = resolve(cfg)
        if cfg.teacher_weights is not None:
            cfg.teacher_weights = config.teacher_path  # a zoo:NAME resolved to its file in the cache
        validate(cfg, config)
        world = join(config.dist_timeout, torch.cuda.is_available())
        report = run_bench(cfg, config, world)
        world.leave()
        print(format_report(report), flush=True)
        if cfg.json is not None and world.main:
            atomic_write_json(cfg.json, report)
            print(f"wrote {cfg.json}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
