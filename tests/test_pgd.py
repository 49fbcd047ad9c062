"""The PGD engine: exact steps on a linear model, constraints, mode handling, gradients."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks import ce_sum, init_delta, kl_sum, pgd, pgd_step
from models import build_model

EPS, STEP = 8 / 255, 2 / 255


class Linear(nn.Module):
    """logits = x.flatten() @ W: the input gradient of CE is hand-computable."""

    def __init__(self, weight):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x):
        return x.flatten(1) @ self.weight


def test_one_step_moves_by_step_size_along_gradient_sign_then_clips():
    # Two classes, 3 pixels. With y = 0, d CE / d x = (p1) (w1 - w0) where p1 = softmax()[1] > 0,
    # so the sign of the gradient is sign(w1 - w0) = [+, -, +].
    weight = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 2.0]])
    model = Linear(weight)
    x = torch.tensor([[0.5, 0.5, 0.999]])
    adv = pgd(model, x, torch.tensor([0]), eps=EPS, step_size=STEP, steps=1, loss_fn=ce_sum, init="none")
    assert torch.allclose(adv, torch.tensor([[0.5 + STEP, 0.5 - STEP, 1.0]]))


def test_pgd_step_projects_onto_eps_ball_and_unit_box():
    x = torch.tensor([0.0, 0.5, 1.0])
    x_adv = torch.tensor([0.02, 0.5 + EPS, 1.0])
    out = pgd_step(x_adv, torch.tensor([1.0, 1.0, -1.0]), x, EPS, STEP)
    assert torch.allclose(out, torch.tensor([0.02 + STEP, 0.5 + EPS, 1.0 - STEP]))
    out = pgd_step(torch.tensor([0.001, 0.5, 0.999]), torch.tensor([-1.0, 1.0, 1.0]), x, EPS, STEP)
    assert torch.allclose(out, torch.tensor([0.0, 0.5 + STEP, 1.0]))


def test_inits():
    x = torch.full((2000,), 0.5)
    gauss = init_delta(x, EPS, "gauss") - x
    assert 0.0008 < gauss.std().item() < 0.0012
    uniform = init_delta(x, EPS, "uniform") - x
    assert uniform.abs().max() <= EPS + 1e-7 and uniform.std().item() == pytest.approx(EPS / 3 ** 0.5, rel=0.1)
    edge = init_delta(torch.zeros(1000), EPS, "uniform")
    assert edge.min() == 0.0  # clamped into [0,1]


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


def trained_small_cnn():
    """A tiny CNN trained in the test to tell bright from dark images apart."""
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8) * 0.5
    y = torch.arange(64) % 2
    x[y == 1] += 0.5
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(60):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval(), x, y


def test_attack_respects_constraints_and_raises_the_loss_of_a_trained_model():
    model, x, y = trained_small_cnn()
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(x), y).item()
    adv = pgd(model, x, y, eps=EPS, step_size=STEP, steps=10, loss_fn=ce_sum, init="uniform")
    assert (adv - x).abs().max() <= EPS + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y).item() > clean_loss * 1.5


@pytest.mark.parametrize("train_mode", [False, True])
@pytest.mark.parametrize("start_training", [False, True])
def test_mode_is_restored_and_no_parameter_gradients_are_left(train_mode, start_training):
    model = small_cnn().train(start_training)
    teacher = small_cnn(1).train(start_training)
    x = torch.rand(4, 3, 8, 8)
    seen_modes = []
    model.register_forward_hook(lambda m, i, o: seen_modes.append(m.training))
    pgd(model, x, torch.tensor([0, 1, 0, 1]), eps=EPS, step_size=STEP, steps=2, loss_fn=kl_sum,
        init="gauss", target=teacher, train_mode=train_mode)
    assert seen_modes == [train_mode, train_mode]
    assert all(m.training == start_training for m in list(model.modules()) + list(teacher.modules()))
    assert all(p.grad is None for p in list(model.parameters()) + list(teacher.parameters()))


def test_train_mode_attack_updates_batchnorm_statistics_and_eval_mode_does_not():
    x = torch.rand(4, 3, 8, 8)
    for train_mode, changes in ((False, False), (True, True)):
        model = small_cnn()
        before = model[1].running_mean.clone()
        pgd(model, x, torch.tensor([0, 1, 0, 1]), eps=EPS, step_size=STEP, steps=2, loss_fn=ce_sum,
            init="uniform", train_mode=train_mode)
        assert (not torch.equal(before, model[1].running_mean)) == changes


def test_dgad_inner_loss_gradient_flows_through_the_teacher():
    class Constant(nn.Module):
        """A student whose output ignores its input: any movement of x' comes from the teacher."""

        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([0.3, -0.2]))

        def forward(self, x):
            return self.bias.expand(x.shape[0], 2) + 0 * x.flatten(1)[:, :1]

    teacher = small_cnn(3).eval().requires_grad_(False)
    x = torch.rand(4, 3, 8, 8) * 0.5 + 0.25
    torch.manual_seed(0)
    through = pgd(Constant(), x, None, eps=EPS, step_size=STEP, steps=3, loss_fn=kl_sum, init="gauss", target=teacher)
    torch.manual_seed(0)
    with torch.no_grad():
        fixed = teacher(x)
    detached = pgd(Constant(), x, None, eps=EPS, step_size=STEP, steps=3, loss_fn=kl_sum, init="gauss",
                   target=fixed)
    assert (through - x).abs().max() > 3 * STEP * 0.99  # the teacher's gradient moved every step
    assert (detached - x).abs().max() < 0.01  # only the init noise: no gradient without the teacher


def test_real_student_attack_keeps_fp32_images():
    model = build_model("wideresnet10_1", 10).eval()
    x = torch.rand(2, 3, 32, 32)
    adv = pgd(model, x, torch.tensor([1, 2]), eps=EPS, step_size=STEP, steps=2, loss_fn=ce_sum, init="uniform")
    assert adv.dtype == torch.float32 and not adv.requires_grad
    assert (adv - x).abs().max() <= EPS + 1e-6
