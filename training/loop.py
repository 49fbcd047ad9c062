"""fit(config): the training loop of main.py and main_tiny.py, top to bottom.

Per epoch: set the learning rate, train one epoch (the method's attack, forward passes, loss and
SGD step per batch), evaluate clean and PGD-10 accuracy, keep the best and last checkpoints, log a
results.csv row. Device work is queued without host syncs; the host reads the epoch's totals once.
"""
import contextlib
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

from data import Shard, Split, TrainBatches, dataset_info, load_split
from models import build_model
from evaluation.accuracy import ClassCounts, FeatureMoments, attack_accuracy, pgd_ce_attack
from methods import Method, configure, training_step
from runtime.checkpoints import load_weights
from runtime.device import (configure_determinism, device_name, git_commit, make_generator, resolve_device,
                            seed_everything)
from runtime.distributed import JobError, World, join, lost_peer, peer_failure
from runtime.errors import UserError, warn
from runtime.precision import autocast_factory, prepare_batch, prepare_model
from runtime.progress import Progress

from .config import recipe_line
from .finite import FiniteCheck
from .networks import STREAM_SEED_OFFSETS, Trainee, build_trainee, require_teacher_file
from .run_dir import RunDirectory, RunState, result_fields
from .selection import (evaluation_split, final_checkpoints, measure_on_test, on_split, row_split,
                        split_for_selection)
from .swa import AVERAGE_FILES, average_names
from .tracking import Trackers, open_trackers
from .schedule import learning_rate
from .signals import GracefulStop, RunInterrupted

EVAL_PGD_STEPS = 10


def fit(config) -> RunState:
    world = join(config.dist_timeout, torch.cuda.is_available())
    together = False  # whether every process ends the same way (see World.leave)
    try:
        with contextlib.ExitStack() as claimed:
            state = train(config, world, claimed)
        together = True
        return state
    except (RunInterrupted, JobError):  # a stop and a setup error are agreed by all the processes
        together = True
        raise
    except Exception as error:
        if world.distributed and lost_peer(error):
            raise UserError(f"process {world.rank} of {world.size} lost the others ({peer_failure(error)}): another "
                            f"process stopped first (torchrun names it, its log says why); after fixing that, "
                            f"resume with --resume") from None
        raise
    finally:
        world.leave(together)


def train(config, world: World, claimed: contextlib.ExitStack) -> RunState:
    print(f"run folder: {config.save_dir}", flush=True)
    setup_error = None
    try:  # every process sets up; any one's error stops all of them, said once
        method = configure(config)
        info = dataset_info(config.dataset)
        device = world.device() if world.distributed else resolve_device(config.gpu_id)
        split = evaluation_split(config.val_images)  # what the per-epoch evaluation measures and selects on
        run = RunDirectory(config.save_dir, result_fields(method.logged_parts(), average_names(config.swa_start,
                                                                                               config.ema), split),
                           config.resume, config.overwrite, writer=world.main)
        check_world(config, world)
        configure_determinism(config.deterministic)
        seed_everything(config.seed)
        if method.needs_teacher:
            require_teacher_file(config)  # before minutes of data loading
        if method.needs_natural_teacher:
            require_teacher_file(config, natural=True)
        train_split = load_split(config.dataset, config.data_dir, "train", device, config.train_subset, config.download)
        train_split, val_split, val_sha256 = split_for_selection(train_split, config.val_images, info.num_classes,
                                                                 config.seed)
        test_split = load_split(config.dataset, config.data_dir, "test", device, config.test_subset, config.download)
        eval_split = test_split if val_split is None else val_split
        check_shards(config, world, len(train_split), min(len(eval_split), len(test_split)))
        trainee = build_trainee(config, method, info.num_classes, device, sync_bn=config.sync_bn and world.distributed)
        record = dict(config.record(), **method.describe(), loss_parts=list(method.logged_parts()),
                      git_commit=git_commit(), torch_version=str(torch.__version__), device=device_name(device),
                      num_classes=info.num_classes, train_images=len(train_split), test_images=len(test_split),
                      **trainee.teacher_record(),  # each teacher file's path and sha256
                      world_size=world.size, batch_norm=batch_norm_scope(config, world),
                      **({"val_sha256": val_sha256} if val_sha256 else {}))  # which images were held out
        print(recipe_line(config), flush=True)
        claimed.enter_context(run.claimed())  # one job per run folder, from here to the end
        state, cursor = run.resume(trainee, config, record) if config.resume else (RunState(), None)
        fresh = state.epoch == 0 and cursor is None
        run.open(record, fresh=fresh)
        steps_per_epoch = -(-len(train_split) // config.bs)
        tracker = open_trackers(config, run.root, record, run.fields, fresh,
                                state.epoch * steps_per_epoch + (cursor["step"] if cursor else 0), world.main)
        claimed.callback(tracker.close)
    except UserError as error:
        setup_error = error
    world.agree_error(setup_error)
    if state.epoch >= config.epochs:
        print(f"{config.save_dir} has already completed {state.epoch} epochs", flush=True)
        if config.val_images and not run.final_measured():  # stopped during the test set's measurement
            measure_selected_on_test(config, run, test_split, config.eval_bs, world, info.num_classes, device)
        return state

    trainee.distribute(world, device)
    batches = TrainBatches(train_split, config.bs, trainee.generators["data"], shard=Shard(world.rank, world.size))
    eval_attack = per_epoch_attack(config, trainee.generators["eval"])
    average_attacks = {average.name: per_epoch_attack(config, trainee.generators["ema_eval"])
                       if average.name == "ema" else eval_attack for average in trainee.averages}
    autocast = autocast_factory(config.precision, device)
    eval_bs, first_epoch = config.eval_bs, state.epoch + 1
    with GracefulStop() as stop:
        for epoch in range(first_epoch, config.epochs + 1):
            lr = learning_rate(config.lr_schedule, config.lr_max, epoch - 1, config.epochs, config.milestones,
                               config.lr_decay)
            resume_at = cursor if cursor is not None and cursor["epoch"] == epoch else None
            cursor = None
            stats = train_one_epoch(method, trainee, batches, epoch, lr, config, autocast, stop, resume_at, world,
                                    tracker)
            if stats.unfinished is not None:  # a signal arrived mid-epoch
                run.save_last(trainee, state, stats.unfinished)
                raise RunInterrupted(stop.signal_name, epoch, stats.unfinished["step"])

            eval_start = time.perf_counter()
            world.broadcast_buffers(trainee.student)  # the model evaluated and saved is process 0's
            evaluated, eval_bs = evaluate(trainee.student, eval_split, eval_bs, eval_attack, config.channels_last,
                                          f"epoch {epoch} evaluation", world)
            averaged, eval_bs = evaluate_averages(trainee, epoch, train_split, eval_split, eval_bs, average_attacks,
                                                  config, world)
            row = results_row(epoch, lr, stats, evaluated, time.perf_counter() - eval_start)
            row = on_split(dict(row, **averaged), split)  # val_* columns when the held-out images were measured
            state.history.append(row)
            state.epoch = epoch
            for name, average in checkpoints_to_save(state, row):
                run.save_best(name, trainee, row, average=average)
            run.write_results(state.history)
            run.save_last(trainee, state)
            tracker.epoch(row, epoch * len(batches))

            print(epoch_line(row, stats, config.epochs), flush=True)
            if stop.agreed(world) is not None and epoch < config.epochs:
                raise RunInterrupted(stop.signal_name, epoch, None)
            if config.stop_after and epoch - first_epoch + 1 >= config.stop_after and epoch < config.epochs:
                print(f"stopped after {config.stop_after} epochs (--stop_after); continue with --resume", flush=True)
                break
    if config.val_images and state.epoch >= config.epochs:
        measure_selected_on_test(config, run, test_split, eval_bs, world, info.num_classes, device)
    return state


def measure_selected_on_test(config, run: RunDirectory, test_split: Split, eval_bs: int, world: World,
                             num_classes: int, device) -> None:
    """--val_images, after the last epoch: the test set's one measurement of every checkpoint the held-out
    images chose, and of last.pth, into final.json. Each file's weights are process 0's (it read them) in every
    process; each measurement's PGD-10 starts from the same fresh stream (the per-epoch evaluation's seed)."""
    def load(payload: Optional[Dict]) -> nn.Module:
        network = build_model(config.model, num_classes).to(device)
        if payload is not None:
            load_weights(network, payload, name=config.model, path=run.root)
        take_process_0_weights(network, world)
        return prepare_model(network, config.channels_last)

    def measure(network: nn.Module, description: str) -> Dict:
        attack = per_epoch_attack(config, make_generator(device, config.seed + STREAM_SEED_OFFSETS["eval"]))
        evaluated, _ = evaluate(network, test_split, eval_bs, attack, config.channels_last, description, world)
        numbers = results_row(0, 0.0, EpochStats(0.0, 0.0, {}, 0, 0.0, 0), evaluated, 0.0)
        return {name: value for name, value in numbers.items() if name.startswith("test_")}

    files = final_checkpoints(average_names(config.swa_start, config.ema), AVERAGE_FILES)
    final = measure_on_test(run.root, files, run.record, len(test_split), load, measure, world.main)
    if final is not None:
        best = final["checkpoints"]["best_PGD10_acc_model.pth"]
        print(f"test set, measured once per checkpoint ({run.file('final.json')}): best_PGD10_acc_model.pth (epoch "
              f"{best['epoch']}, {final['selected_on']}) clean {best['test_clean_acc']:.2f} PGD10 "
              f"{best['test_PGD10_acc']:.2f}", flush=True)


def checkpoints_to_save(state: RunState, row: Dict) -> List[Tuple[str, Optional[str]]]:
    """The files epoch `row` writes, each with the name of the weight average it holds (None: the
    student), and the bests in `state` updated: the best-PGD-10 and best-clean students (each by its
    own accuracy, strictly better than before), and, for each average that exists, its latest and its
    best-PGD-10. The accuracies are those of the split the row measured (row_split: test, or the
    held-out images)."""
    split, files = row_split(row), []
    if row[f"{split}_PGD10_acc"] > state.best_pgd:
        state.best_pgd = row[f"{split}_PGD10_acc"]
        files.append(("best_PGD10_acc_model.pth", None))
    if row[f"{split}_clean_acc"] > state.best_clean:
        state.best_clean = row[f"{split}_clean_acc"]
        files.append(("best_clean_acc_model.pth", None))
    for name, (latest, best) in AVERAGE_FILES.items():
        robust = row.get(f"{split}_PGD10_acc_{name}")
        if robust is None:
            continue
        files.append((latest, name))
        if robust > getattr(state, f"best_pgd_{name}"):
            setattr(state, f"best_pgd_{name}", robust)
            files.append((best, name))
    return files


AVERAGE_TITLES = {"swa": "weight average", "ema": "exponential moving average"}


def evaluate_averages(trainee: Trainee, epoch: int, train_split: Split, eval_split: Split, eval_bs: int,
                      attacks: Dict[str, Callable], config, world: World) -> Tuple[Dict, int]:
    """After an epoch, each of the student's weight averages that is active is evaluated as the student is,
    with its own attack (the EMA's PGD-10 starts come from a stream of their own): swa, past --swa_start,
    first takes the student in and recomputes its BatchNorm statistics; ema was updated at every step, and
    every process takes process 0's average of the BatchNorm buffers (each averaged its own). Their
    results.csv entries, test_{clean_acc,PGD10_acc}_<name> ({} while none is active)."""
    row = {}
    for average in trainee.averages:
        if not average.active(epoch):
            continue
        average.update(trainee.student, train_split, config.bs, config.channels_last)
        world.broadcast_buffers(average.model.module)  # the average evaluated and saved is process 0's
        evaluated, eval_bs = evaluate(average.model.module, eval_split, eval_bs, attacks[average.name],
                                      config.channels_last, f"epoch {epoch} evaluation of the "
                                      f"{AVERAGE_TITLES[average.name]}", world)
        row.update({f"test_clean_acc_{average.name}": round(evaluated.clean, 4),
                    f"test_PGD10_acc_{average.name}": round(evaluated.robust, 4)})
    return row, eval_bs


def take_process_0_weights(network: nn.Module, world: World) -> None:
    """Every process of a distributed job takes process 0's parameters and buffers (it alone read them)."""
    world.broadcast_buffers(network)
    if world.distributed:
        for parameter in network.parameters():
            torch.distributed.broadcast(parameter.data, src=0)


def check_world(config, world: World) -> None:
    """What a distributed job needs of the flags, before any data is read."""
    if config.sync_bn and not torch.cuda.is_available():
        raise UserError("--sync_bn needs GPUs: PyTorch's SyncBatchNorm does not run on the CPU (gloo); without it "
                        "each process normalises its own shard of the batch")
    if world.distributed and config.gpu_id != 0:
        warn(f"--gpu_id {config.gpu_id} is ignored under torchrun: each process uses the GPU of its LOCAL_RANK")
    if world.distributed and config.bs < world.size:
        raise UserError(f"--bs {config.bs} is smaller than the {world.size} processes of the job: --bs is the whole "
                        f"batch, split across them; pass --bs {world.size} or more")


def check_shards(config, world: World, train_images: int, test_images: int) -> None:
    """Every process gets at least one image of every training batch and of the evaluation."""
    last = train_images % config.bs
    if world.distributed and 0 < last < world.size:
        raise UserError(f"the last training batch holds {last} images ({train_images} % --bs {config.bs}), fewer "
                        f"than the {world.size} processes: choose a --bs or --train_subset that leaves none or at "
                        f"least {world.size}")
    if world.distributed and min(config.eval_bs, test_images) < world.size:
        raise UserError(f"the evaluation needs at least one image per process: --eval_bs {config.eval_bs} and "
                        f"{test_images} test images for {world.size} processes")


def batch_norm_scope(config, world: World) -> str:
    """What the student's BatchNorm layers normalise over in training (recorded in config.json)."""
    if not world.distributed:
        return "the whole batch (one process)"
    if config.sync_bn:
        return f"the whole batch (SyncBatchNorm over {world.size} processes)"
    return f"each process's shard (about {config.bs // world.size} of --bs {config.bs}, {world.size} processes)"


def results_row(epoch: int, lr: float, stats: "EpochStats", evaluated: "Evaluation", eval_seconds: float) -> Dict:
    """The epoch's results.csv row (and history entry)."""
    return {"epoch": epoch, "lr": float(f"{lr:.10g}"), "train_loss": round(stats.loss, 6),
            "train_acc": round(stats.accuracy, 4), "test_clean_acc": round(evaluated.clean, 4),
            "test_PGD10_acc": round(evaluated.robust, 4), "test_variance_gap": round(evaluated.variance_gap, 6),
            "test_clean_acc_worst_class": round(evaluated.clean_worst_class, 4),
            "test_PGD10_acc_worst_class": round(evaluated.robust_worst_class, 4),
            "epoch_seconds": round(stats.seconds + eval_seconds, 3),
            "images_per_second": round(stats.seen / max(stats.seconds, 1e-9), 2),
            **{f"train_{name}": round(value, 6) for name, value in stats.parts.items()}}


def epoch_line(row: Dict, stats: "EpochStats", epochs: int) -> str:
    skipped = f", {stats.skipped} non-finite steps skipped" if stats.skipped else ""
    split = row_split(row)
    averaged = "".join(f" {name.upper()} clean {row[f'{split}_clean_acc_{name}']:.2f} PGD10 "
                       f"{row[f'{split}_PGD10_acc_{name}']:.2f}" for name in AVERAGE_FILES
                       if f"{split}_PGD10_acc_{name}" in row)
    measured = "" if split == "test" else f"{split} "
    return (f"epoch {row['epoch']}/{epochs} lr {row['lr']:.4g} loss {stats.loss:.4f} train_acc {stats.accuracy:.2f} "
            f"{measured}clean {row[f'{split}_clean_acc']:.2f} PGD10 {row[f'{split}_PGD10_acc']:.2f}{averaged} "
            f"({row['epoch_seconds']:.1f}s, {row['images_per_second']:.1f} img/s{skipped})")


@dataclass
class EpochTotals:
    """Sums over the samples of an epoch, kept on the device: the host reads them once, at its end.
    Saved in last.pth (with the step reached) when a signal stops the epoch midway."""
    seen: int
    loss: torch.Tensor
    correct: torch.Tensor
    parts: torch.Tensor  # (number of loss parts,)
    seconds: float = 0.0

    @classmethod
    def zeros(cls, num_parts: int, device) -> "EpochTotals":
        return cls(0, torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device),
                   torch.zeros(num_parts, device=device))

    def as_dict(self) -> Dict:
        return {"seen": self.seen, "loss": self.loss, "correct": self.correct, "parts": self.parts,
                "seconds": self.seconds}


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    parts: Dict[str, float]
    seen: int
    seconds: float
    skipped: int
    unfinished: Optional[Dict] = None  # the cursor to save when a signal stopped the epoch


def train_one_epoch(method: Method, trainee: Trainee, batches: TrainBatches, epoch: int, lr: float, config,
                    autocast: Optional[Callable], stop: GracefulStop, resume_at: Optional[Dict] = None,
                    world: World = World(), tracker: Trackers = Trackers()) -> EpochStats:
    """One pass over the training set. `resume_at` (from an interrupted run's last.pth) replays the
    batches already taken, without training on them, so that the epoch ends exactly as unbroken.
    In a distributed job each process trains on its rows of every batch; the loss, the totals and
    the decision to stop are those of the whole batch, the same on every process."""
    device = batches.split.labels.device
    data_stream, parts = trainee.generators["data"], method.logged_parts()
    for group in trainee.optimizer.param_groups:
        group["lr"] = lr
    if resume_at is None:
        done, epoch_start_data = 0, data_stream.get_state()
        totals = EpochTotals.zeros(len(parts), device)
    else:
        done, epoch_start_data = resume_at["step"], resume_at["data_stream"]
        data_stream.set_state(epoch_start_data)
        totals = EpochTotals(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in resume_at["totals"].items()})
    start = time.perf_counter() - totals.seconds
    progress = Progress(len(batches.split), f"epoch {epoch}/{config.epochs}", initial=totals.seen)
    pending_check, skipped = None, 0
    with progress:
        for step, (x, y, rows) in enumerate(batches):
            if step < done:
                continue  # replayed only to advance the data stream exactly as the interrupted run did
            x = prepare_batch(x, config.channels_last)
            if not config.sync_bn:
                world.broadcast_buffers(trainee.student)  # every process attacks the model process 0 saves
            if trainee.extra is not None:
                world.broadcast_buffers(trainee.extra)  # e.g. PeerAiD's peer, whose eval() pass is the attack's target
            terms, out = training_step(method, trainee.student, trainee.teacher, x, y, epoch,
                                       generator=trainee.generators["attack"], autocast=autocast,
                                       extra=trainee.trained_extra, world=world, rows=rows,
                                       trained_student=trainee.trained_student,
                                       natural_teacher=trainee.natural_teacher)
            loss = terms["loss"]
            finite = torch.isfinite(loss.detach())
            if config.nan_policy == "skip":
                if not finite.item():  # the host must decide before the update: one sync per step
                    skipped += 1
                    continue
            elif pending_check is not None:
                pending_check.check()  # the previous step's flag: no wait on the step just queued
            trainee.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trainee.optimizer.step()
            for average in trainee.averages:
                average.step(trainee.student)  # ema: every step, on the device (swa waits for the epoch's end)
            tracker.step((epoch - 1) * len(batches) + step + 1, loss)  # every 50th step's loss, read later
            if config.nan_policy == "stop":
                pending_check = FiniteCheck(finite, epoch, step + 1)
            n = out.y.shape[0]  # the whole batch
            totals.seen += n
            totals.loss += loss.detach() * n
            totals.correct += (out.trained_logits.detach().argmax(1) == out.y).sum()
            if parts:
                totals.parts += torch.stack([terms[name].detach().float() for name in parts]) * n
            progress.update(n)
            if progress.bar is not None and step % 20 == 0:  # one host sync per 20 steps, for the display only
                progress.note(f"loss {(totals.loss / totals.seen).item():.4f}")
            if stop.agreed(world) is not None:
                if pending_check is not None:
                    pending_check.check()
                totals.seconds = time.perf_counter() - start
                cursor = {"epoch": epoch, "step": step + 1, "data_stream": epoch_start_data, "totals": totals.as_dict()}
                return EpochStats(0.0, 0.0, {}, totals.seen, totals.seconds, skipped, unfinished=cursor)
    if pending_check is not None:
        pending_check.check()
    seen = max(totals.seen, 1)
    means = (totals.parts / seen).tolist()
    return EpochStats((totals.loss / seen).item(), 100.0 * totals.correct.item() / seen,
                      dict(zip(parts, means)), totals.seen, time.perf_counter() - start, skipped)


def per_epoch_attack(config, generator: torch.Generator) -> Callable:
    """The PGD-10 of the per-epoch evaluation (docs/methods.md section 7.3): uniform start, cross-entropy,
    --eval_epsilon and --eval_step_size (8/255 and 2/255, as the authors' loops, whatever the training
    radius)."""
    return pgd_ce_attack(config.eval_epsilon / 255, config.eval_step_size / 255, EVAL_PGD_STEPS,
                         generator=generator)


def halving_on_oom(measure: Callable[[int], Tuple], batch_size: int, world: World = World()) -> Tuple[Tuple, int]:
    """measure(batch_size) at the largest batch size that fits: halved on each CUDA out-of-memory
    error; returns the result and the size that worked (the run keeps it). A distributed job's
    processes share each batch, so one of them cannot change it alone: it stops instead."""
    while True:
        try:
            return measure(batch_size), batch_size
        except torch.cuda.OutOfMemoryError:
            if world.distributed:
                raise UserError(f"evaluation ran out of GPU memory at --eval_bs {batch_size} ({world.size} "
                                f"processes share each batch); resume with a smaller --eval_bs") from None
            if batch_size == 1:
                raise
            batch_size //= 2
            torch.cuda.empty_cache()
            print(f"evaluation ran out of GPU memory: --eval_bs lowered to {batch_size}", file=sys.stderr)


class Evaluation(NamedTuple):
    """The per-epoch evaluation's numbers (%, but the variance gap)."""
    clean: float
    robust: float
    variance_gap: float
    clean_worst_class: float  # the lowest per-class accuracy (docs/evaluation.md, "Worst-class robustness")
    robust_worst_class: float


def evaluate(student: nn.Module, split: Split, batch_size: int, attack: Callable, channels_last: bool = False,
             desc: str = "evaluation", world: World = World()) -> Tuple[Evaluation, int]:
    """Clean and PGD-10 accuracy, the student's variance gap tr Cov(f(x')) - tr Cov(f(x))
    (docs/methods.md section 7.4) from the features of the same forward passes, and the worst
    class's clean and PGD-10 accuracy from their per-class counts. In a distributed job each
    process evaluates its rows of every batch and the counts and moments are reduced: every
    process gets the single-process numbers."""
    def measure(size: int) -> Evaluation:
        clean_moments, adv_moments = FeatureMoments(), FeatureMoments()
        clean_classes, adv_classes = ClassCounts(), ClassCounts()
        with Progress(2 * len(split), desc) as progress:
            clean = attack_accuracy(student, split, size, moments=clean_moments, channels_last=channels_last,
                                    progress=progress.update, world=world, per_class=clean_classes)
            progress.note("PGD-10")
            robust = attack_accuracy(student, split, size, attack=attack, moments=adv_moments,
                                     channels_last=channels_last, progress=progress.update, world=world,
                                     per_class=adv_classes)
        return Evaluation(clean, robust, adv_moments.trace_cov() - clean_moments.trace_cov(),
                          clean_classes.worst_accuracy(), adv_classes.worst_accuracy())
    return halving_on_oom(measure, batch_size, world)
