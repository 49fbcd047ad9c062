"""The fast training step against the plain reference, bf16 and channels_last steps, and the
benchmark's FLOP counting and phase attribution. Nothing here is timed."""
import copy

import pytest
import torch

from benchmarks.measure import PhaseClock, count_flops, phase_hooks
from benchmarks.plain import plain_models, plain_step
from helpers import train_config
from methods import configure, get_method, method_names, training_step
from models import build_model
from runtime.precision import autocast_factory, prepare_batch, prepare_model

MODEL = "wideresnet10_1"
N = 6


def make_cfg(method="DGAD", num_steps=3, *extra):
    return train_config(method, "--num_steps", str(num_steps), *extra, model=MODEL, bs=N)


def networks(seed=0, teacher=True):
    torch.manual_seed(seed)
    student = build_model(MODEL, 10)
    t = build_model(MODEL, 10).eval().requires_grad_(False) if teacher else None
    return student, t


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(N, 3, 32, 32, generator=g), torch.randint(0, 10, (N,), generator=g)


def update_inputs(student):
    """Records the inputs of the student's update forwards (train mode, grad on, input not
    requiring grad), in the order they run."""
    seen = []

    def hook(module, args):
        if module.training and torch.is_grad_enabled() and not args[0].requires_grad:
            seen.append(args[0].detach().clone())
    return seen, student.register_forward_pre_hook(hook)


def attacking_methods():
    return [name for name in method_names() if get_method(name).attack is not None]


@pytest.mark.parametrize("name", attacking_methods())
def test_plain_and_fast_paths_agree_in_fp32(name):
    """Same init noise (same generator seed), same networks: identical adversarial examples,
    logits and loss, although the plain path takes its gradient with loss.backward()."""
    cfg = make_cfg(name)
    method = configure(cfg)
    student, teacher = networks(teacher=method.needs_teacher)
    natural = networks(seed=3)[1] if method.needs_natural_teacher else None
    plain_student, plain_teacher = plain_models(student, teacher)
    extra = method.extra_module(student, teacher)  # VarGap's projector, PeerAiD's peer: each path its own copy
    plain_extra = copy.deepcopy(extra)
    x, y = batch()
    fast_seen, h1 = update_inputs(student)
    plain_seen, h2 = update_inputs(plain_student)
    terms, out = training_step(method, student, teacher, x, y, 1, generator=torch.Generator().manual_seed(7),
                               extra=extra, natural_teacher=natural)
    plain_terms, plain_out = plain_step(method, plain_student, plain_teacher, x, y, 1,
                                        generator=torch.Generator().manual_seed(7), extra=plain_extra,
                                        natural_teacher=natural)
    h1.remove(), h2.remove()
    student_passes = [key for key in method.passes(1) if key.startswith("s_")]
    assert len(fast_seen) == len(plain_seen) == len(student_passes)
    assert all(torch.equal(a, b) for a, b in zip(fast_seen, plain_seen))
    x_adv = fast_seen[student_passes.index("s_adv")]
    assert not torch.equal(x_adv, x)
    assert (x_adv - x).abs().max() <= cfg.epsilon / 255 + 1e-6
    for key in ("s_clean", "s_adv", "t_clean", "t_adv", "n_clean", "n_adv", "s_minus", "t_minus"):
        a, b = getattr(out, key), getattr(plain_out, key)
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b), key
    assert terms.keys() == plain_terms.keys() == {"loss", *method.logged_parts()}
    for key in terms:
        assert torch.equal(terms[key], plain_terms[key]), key


def test_plain_attack_leaves_no_stale_gradients_and_trains_the_same():
    method = configure(make_cfg("DGAD"))
    student, teacher = networks()
    plain_student, plain_teacher = plain_models(student, teacher)
    assert all(p.requires_grad for p in plain_teacher.parameters())
    x, y = batch()
    for model, t, step in ((student, teacher, training_step), (plain_student, plain_teacher, plain_step)):
        terms, _ = step(method, model, t, x, y, 1, generator=torch.Generator().manual_seed(3))
        terms["loss"].backward()
    for a, b in zip(student.parameters(), plain_student.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7)
    # Input gradients only, as the released loops take them: the teacher's parameters, which still
    # ask for gradients there, never get any.
    assert all(p.grad is None for p in plain_teacher.parameters())


def forward_flops(model, x):
    with torch.no_grad():
        return count_flops(lambda: model(x))


def test_flop_count_per_attack_step_input_gradients_only_and_the_recomputed_targets():
    """Per attack step the flop counter sees, per network the attack runs through, one forward plus
    the input gradient (2 forwards' worth; conv and linear backward each cost one forward) on both
    paths: neither takes weight gradients. The plain RSLAD attack also recomputes its fixed target
    T(x) at every step, as the released attack does (one teacher forward more)."""
    student, teacher = networks()
    plain_student, plain_teacher = plain_models(student, teacher)
    x, y = batch()
    one = forward_flops(student, x)
    assert one == forward_flops(teacher, x) > 0  # same architecture

    def per_step(name, step, s, t):
        def flops(k):
            method = configure(make_cfg(name, k))
            return count_flops(lambda: step(method, s, t, x, y, 1)[0]["loss"].backward())
        return flops(3) - flops(2)

    assert per_step("DGAD", training_step, student, teacher) == 4 * one
    assert per_step("DGAD", plain_step, plain_student, plain_teacher) == 4 * one
    assert per_step("RSLAD", training_step, student, teacher) == 2 * one
    assert per_step("RSLAD", plain_step, plain_student, plain_teacher) == 3 * one


def run_prepared_step(precision, channels_last):
    cfg = make_cfg("DGAD", 3)
    student, teacher = networks()
    student, teacher = prepare_model(student, channels_last), prepare_model(teacher, channels_last)
    autocast = autocast_factory(precision, torch.device("cpu"))
    x, y = batch()
    x = prepare_batch(x, channels_last)
    conv_dtypes = []
    handle = student.conv1.register_forward_hook(lambda m, a, o: conv_dtypes.append(o.dtype))
    seen, h = update_inputs(student)
    terms, out = training_step(configure(cfg), student, teacher, x, y, 1,
                               generator=torch.Generator().manual_seed(5), autocast=autocast)
    loss = terms["loss"]
    loss.backward()
    handle.remove(), h.remove()
    return cfg, student, x, seen[-1], loss, out, conv_dtypes


def test_bf16_step_runs_networks_in_bf16_and_keeps_images_fp32():
    cfg, student, x, x_adv, loss, out, conv_dtypes = run_prepared_step("bf16", False)
    assert set(conv_dtypes) == {torch.bfloat16}  # attack and update forwards both autocast
    assert len(conv_dtypes) == cfg.num_steps + 2
    assert x_adv.dtype == torch.float32 and out.s_adv.dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.isfinite(loss) and loss > 0
    assert (x_adv - x).abs().max() <= cfg.epsilon / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(torch.isfinite(p.grad).all() for p in student.parameters())
    fp32_loss = run_prepared_step("fp32", False)[4]
    assert abs(loss.item() - fp32_loss.item()) < 0.1 * fp32_loss.item()  # the same quantity, rounded


def test_channels_last_step_matches_nchw():
    cfg, student, x, x_adv, loss, out, _ = run_prepared_step("fp32", True)
    assert student.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(loss)
    assert (x_adv - x).abs().max() <= cfg.epsilon / 255 + 1e-6
    _, _, _, nchw_adv, nchw_loss, _, _ = run_prepared_step("fp32", False)
    # Convolution kernels differ between layouts; a sign flip on a near-zero gradient moves a
    # pixel by one step, so compare the loss and the bulk of the pixels.
    assert (x_adv != nchw_adv).float().mean() < 0.01
    assert torch.allclose(loss, nchw_loss, rtol=1e-3)


def test_autocast_factory_and_prepare_model():
    assert autocast_factory("fp32", torch.device("cpu")) is None
    with autocast_factory("bf16", torch.device("cpu"))():
        assert torch.is_autocast_enabled("cpu")
    from runtime.errors import UserError
    with pytest.raises(UserError, match="--precision"):
        autocast_factory("fp16", torch.device("cpu"))
    model = build_model(MODEL, 10)
    assert prepare_model(model) is model
    assert prepare_model(None) is None


class Recorder:
    """A PhaseClock stand-in that only records the order of phases."""
    def __init__(self):
        self.current, self.phases = None, []

    def mark(self, phase):
        self.current = phase
        self.phases.append(phase)


def collapse(phases):
    return [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]


@pytest.mark.parametrize("path", ["ours", "plain"])
def test_phase_hooks_attribute_dgad_forwards(path):
    cfg = make_cfg("DGAD", 2)
    student, teacher = networks()
    if path == "plain":
        student, teacher = plain_models(student, teacher)
    step = training_step if path == "ours" else plain_step
    x, y = batch()
    clock = Recorder()
    with phase_hooks(clock, student, teacher):
        clock.mark("attack")
        step(configure(cfg), student, teacher, x, y, 1)
    if path == "ours":  # T(x) first (outside the attack), then K attack steps, S(x), S(x'), T(x')
        assert collapse(clock.phases) == ["attack", "teacher", "attack", "update", "teacher", "update"]
    else:  # the attack, then S(x), S(x'), T(x), T(x') in the update
        assert collapse(clock.phases) == ["attack", "update", "teacher", "update", "teacher", "update"]
    assert student._forward_pre_hooks == {} and teacher._forward_hooks == {}


def test_phase_clock_sums_intervals_by_phase():
    clock = PhaseClock(torch.device("cpu"))
    clock.marks = [("data", 10.0), ("attack", 10.5), ("teacher", 12.0), ("attack", 12.25), ("end", 13.0)]
    assert clock.milliseconds() == {"data": 500.0, "attack": 2250.0, "teacher": 250.0}
