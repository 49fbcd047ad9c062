"""The student's weight averages (training/swa.py): one AveragedModel mechanism, two update rules. The EMA
(--ema) equals its closed form after k steps, weights and BatchNorm buffers alike, reads nothing back to the
host, resumes exactly, is evaluated from a stream of its own and is saved beside the SWA average."""
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from helpers import TinyNet, train_config
from training.swa import AVERAGE_FILES, EMA, SWA, StudentAverage, average_names

DECAY = 0.9


def sgd_steps(student, steps, seed=0, ema=None):
    """`steps` SGD steps of `student` on random data (its BatchNorm in training mode), the EMA stepped after each;
    returns the snapshots of every parameter and buffer after each step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5, momentum=0.9)
    snapshots = []
    for _ in range(steps):
        x = torch.rand(6, 3, 8, 8, generator=generator)
        y = torch.randint(0, 3, (6,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(student(x), y).backward()
        optimizer.step()
        if ema is not None:
            ema.step(student)
        snapshots.append({k: v.detach().clone() for k, v in student.state_dict().items()})
    return snapshots


def closed_form(snapshots, name, decay):
    """W_ema after k steps: d^(k-1) W_1 + sum_{t=2..k} (1 - d) d^(k-t) W_t (the first step copies), in float64."""
    k = len(snapshots)
    total = decay ** (k - 1) * snapshots[0][name].double()
    for t in range(2, k + 1):
        total = total + (1 - decay) * decay ** (k - t) * snapshots[t - 1][name].double()
    return total


def test_the_ema_after_k_steps_is_the_closed_form_for_weights_and_batchnorm_buffers():
    torch.manual_seed(0)
    student = TinyNet()
    ema = StudentAverage(student, decay=DECAY)
    assert ema.name == EMA and ema.active(1)  # from the first epoch on
    snapshots = sgd_steps(student, 5, ema=ema)
    averaged = ema.model.module.state_dict()
    assert ema.averaged == ema.count == 5
    for name, value in averaged.items():
        if name.endswith("num_batches_tracked"):  # an integer buffer is copied, not averaged
            assert value == snapshots[-1][name] == 5
            continue
        expected = closed_form(snapshots, name, DECAY)
        assert torch.allclose(value.double(), expected, rtol=1e-5, atol=1e-6), name
    for name in ("fc.weight", "bn.running_mean"):  # an average, not the last student
        assert not torch.allclose(averaged[name], snapshots[-1][name], atol=1e-3), name
    # The running statistics are averaged too (use_buffers=True), not copied from the student.
    assert "bn.running_mean" in averaged and "bn.running_var" in averaged


def test_one_ema_step_is_a_copy_then_a_lerp_with_the_library_function():
    student = torch.nn.Linear(2, 1)
    ema = StudentAverage(student, decay=0.75)
    with torch.no_grad():
        student.weight.fill_(4.0)
    ema.step(student)
    assert torch.equal(ema.model.module.weight, torch.full((1, 2), 4.0))
    with torch.no_grad():
        student.weight.fill_(8.0)
    ema.step(student)
    assert torch.equal(ema.model.module.weight, torch.full((1, 2), 0.75 * 4.0 + 0.25 * 8.0))


class HostReads(TorchFunctionMode):
    """Every Python-level read of a tensor's value (item, bool, float, int, tolist) while entered."""
    READS = {torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__,
             torch.Tensor.tolist}

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_the_ema_step_reads_nothing_back_from_the_device():
    """AveragedModel.update_parameters reads its count on the host every call (a sync per step on CUDA); the ema
    rule's step reads nothing."""
    student = TinyNet()
    ema = StudentAverage(student, decay=DECAY)
    sgd_steps(student, 1, ema=ema)  # the first step copies
    with HostReads() as watch:
        for _ in range(3):
            ema.step(student)
    assert watch.reads == []
    with HostReads() as watch:  # the watch sees what the library's own update does
        ema.model.update_parameters(student)
    assert watch.reads


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pytest -m gpu on a GPU machine)")
def test_the_ema_step_does_not_synchronise_a_cuda_device():
    student = TinyNet().cuda()
    ema = StudentAverage(student, decay=DECAY)
    ema.step(student)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            ema.step(student)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert ema.averaged == 4


def test_an_ema_saved_midway_and_loaded_continues_bitwise():
    torch.manual_seed(1)
    student = TinyNet()
    start = {k: v.clone() for k, v in student.state_dict().items()}
    unbroken = StudentAverage(student, decay=DECAY)
    sgd_steps(student, 2, seed=3, ema=unbroken)
    saved_student = {k: v.clone() for k, v in student.state_dict().items()}
    saved = {k: v.clone() for k, v in unbroken.state_dict().items()}
    sgd_steps(student, 2, seed=4, ema=unbroken)

    resumed_student = TinyNet()
    resumed_student.load_state_dict(start)
    resumed = StudentAverage(resumed_student, decay=DECAY)  # a fresh average: everything must come from `saved`
    resumed_student.load_state_dict(saved_student)
    resumed.load_state_dict(saved)
    assert resumed.count == 2
    sgd_steps(resumed_student, 2, seed=4, ema=resumed)
    for name, value in unbroken.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_the_swa_rule_ignores_steps_and_the_ema_rule_ignores_the_epoch_update():
    from data import Split
    student = TinyNet()
    swa = StudentAverage(student, start=1, generator=torch.Generator().manual_seed(0))
    swa.step(student)
    assert swa.name == SWA and swa.averaged == 0 and not swa.active(1) and swa.active(2)
    ema = StudentAverage(student, decay=DECAY)
    split = Split(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    ema.update(student, split, 2)
    assert ema.averaged == 0


def test_a_trainee_keeps_both_averages_saves_each_and_restores_each(tmp_path):
    from runtime.checkpoints import atomic_save, safe_load
    from training.networks import Trainee, run_generators
    from training.run_dir import checkpoint_payload

    def trainee(seed):
        torch.manual_seed(seed)
        student = TinyNet()
        generators = run_generators(torch.device("cpu"), seed)
        return Trainee(student, None, None, torch.optim.SGD(student.parameters(), lr=0.1), generators,
                       average=StudentAverage(student, 1, torch.Generator().manual_seed(seed)),
                       ema=StudentAverage(student, decay=DECAY))
    first = trainee(0)
    assert [a.name for a in first.averages] == [SWA, EMA]
    sgd_steps(first.student, 3, ema=first.ema)
    first.average.model.update_parameters(first.student)
    record = {"model": "tiny", "num_classes": 3}
    row = {"epoch": 1, "test_clean_acc": 1.0, "test_PGD10_acc": 2.0, "test_clean_acc_ema": 3.0,
           "test_PGD10_acc_ema": 4.0}
    payload = checkpoint_payload(first, row, record, average=EMA)
    assert (payload["clean_acc"], payload["PGD10_acc"]) == (3.0, 4.0) and "selected_on" not in payload
    assert all(torch.equal(v, first.ema.model.module.state_dict()[k]) for k, v in payload["net"].items())
    val_row = {f"val{k[4:]}" if k.startswith("test_") else k: v for k, v in row.items()}
    payload = checkpoint_payload(first, val_row, dict(record, val_images=30), average=EMA)
    assert (payload["PGD10_acc"], payload["selected_on"]) == (4.0, "selected on 30 validation images")

    path = str(tmp_path / "last.pth")
    atomic_save(checkpoint_payload(first, row, record, first.resume_state()), path)
    second = trainee(1)
    second.load(safe_load(path), path, "tiny")
    for mine, theirs in ((first.average, second.average), (first.ema, second.ema)):
        assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in mine.state_dict().items())
    assert second.ema.count == 3 and second.average.count == second.average.averaged == 1


def test_each_average_has_its_files_columns_and_checkpoints():
    from training.loop import checkpoints_to_save
    from training.run_dir import CHECKPOINT_FILES, RunState, result_fields
    assert AVERAGE_FILES[EMA] == ("ema_model.pth", "best_PGD10_acc_ema_model.pth")
    assert set(AVERAGE_FILES[EMA]) | set(AVERAGE_FILES[SWA]) <= set(CHECKPOINT_FILES)
    assert average_names(0, None) == [] and average_names(3, 0.995) == [SWA, EMA] and average_names(0, 0.9) == [EMA]
    fields = result_fields(["ce"], [SWA, EMA])
    assert fields[-5:] == ["test_clean_acc_swa", "test_PGD10_acc_swa", "test_clean_acc_ema", "test_PGD10_acc_ema",
                           "train_ce"]
    state = RunState()
    rows = [{"epoch": 1, "test_clean_acc": 5.0, "test_PGD10_acc": 1.0, "test_clean_acc_ema": 9.0,
             "test_PGD10_acc_ema": 3.0},
            {"epoch": 2, "test_clean_acc": 4.0, "test_PGD10_acc": 0.5, "test_clean_acc_ema": 8.0,
             "test_PGD10_acc_ema": 2.0}]
    assert checkpoints_to_save(state, rows[0]) == [("best_PGD10_acc_model.pth", None),
                                                   ("best_clean_acc_model.pth", None), ("ema_model.pth", EMA),
                                                   ("best_PGD10_acc_ema_model.pth", EMA)]
    assert checkpoints_to_save(state, rows[1]) == [("ema_model.pth", EMA)]
    assert state.best_pgd_ema == 3.0


def test_ema_is_recorded_named_in_the_default_folder_and_its_stream_seeded_within_range():
    from helpers import CIFAR_DEFAULTS
    from runtime.device import make_generator
    from training.config import SEED_MAX, build_parser, resolve
    from training.networks import EMA_EVAL_SEED_OFFSET, build_trainee
    from methods import configure
    config = train_config("PGDAT", "--ema", "0.995")
    assert config.ema == 0.995 and config.record()["ema"] == 0.995 and train_config("PGDAT").ema is None
    folder = resolve(build_parser(CIFAR_DEFAULTS, "test").parse_args(["--method", "PGDAT", "--ema", "0.995"])).save_dir
    assert "_ema0.995_" in folder
    make_generator(torch.device("cpu"), SEED_MAX + EMA_EVAL_SEED_OFFSET)  # the largest seed seeds its stream too
    trainee = build_trainee(config, configure(config), 10, torch.device("cpu"))
    assert trainee.ema is not None and trainee.average is None and "ema_eval" in trainee.generators
    assert "ema_eval" not in build_trainee(train_config("PGDAT"), configure(config), 10, torch.device("cpu")).generators


def test_turning_on_the_ema_leaves_the_students_run_as_it_was(tmp_path, real_data_dir):
    import csv
    import os
    from helpers import run_script
    common = ["main.py", "--method", "PGDAT", "--model", "wideresnet10_1", "--data_dir", real_data_dir,
              "--train_subset", "64", "--test_subset", "32", "--bs", "16", "--num_steps", "1", "--epochs", "2",
              "--deterministic"]
    columns = {}
    for name, extra in (("plain", []), ("ema", ["--ema", "0.9"])):
        done = run_script(*common, *extra, "--save_dir", str(tmp_path / name))
        assert done.returncode == 0, done.stderr
        with open(os.path.join(tmp_path, name, "results.csv")) as f:
            columns[name] = list(csv.DictReader(f))
    assert "test_PGD10_acc_ema" in columns["ema"][0] and "EMA clean" in done.stdout
    timing = ("epoch_seconds", "images_per_second")
    for plain, with_ema in zip(columns["plain"], columns["ema"]):
        assert {k: v for k, v in plain.items() if k not in timing} == \
            {k: v for k, v in with_ema.items() if k in plain and k not in timing}
