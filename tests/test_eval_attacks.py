"""The evaluation attacks: exact numbers by hand on linear models, then their effect on a trained model."""
import math

import pytest
import torch
import torch.nn as nn

from attacks import PAPER_CW_L2, cw_hinge, cw_inf, cw_l2, cw_margin_sum, fgsm, init_delta
from attacks.cw import from_tanh_space, misclassified_by, to_tanh_space
from data import load_split, to_float
from evaluation.accuracy import attack_accuracy
from evaluation.protocols import build_attack
from helpers import quick_trained_model

EPS = 8 / 255


def linear_model(weight, bias=None):
    """Logits = W x + b on a flattened (N, 1, 2, 2) image."""
    weight = torch.tensor(weight)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias))
    return nn.Sequential(nn.Flatten(), layer).eval()


# -- CW loss ---------------------------------------------------------------------------------------

def test_cw_hinge_by_hand():
    logits = torch.tensor([[2.0, 5.0, 1.0], [4.0, -1.0, 3.5], [0.0, 10.0, 0.0]])
    y = torch.tensor([1, 0, 0])
    # 5 - max(2, 1) + 0.5 = 3.5;  4 - 3.5 + 0.5 = 1;  0 - 10 + 0.5 < 0 -> 0
    assert cw_hinge(logits, y, 0.5).tolist() == [3.5, 1.0, 0.0]
    assert cw_margin_sum(logits, y, confidence=0.5).item() == -4.5
    assert cw_margin_sum(logits, y).item() == -(53.0 + 50.5 + 40.0)  # confidence 50 by default


def test_cw_margin_gradient_stops_only_once_misclassified_by_the_confidence():
    logits = torch.tensor([[100.0, 0.0, -1.0],   # right by a margin of 100: still pushed
                           [0.0, 60.0, 1.0],     # wrong by 60 > 50: done, no gradient
                           [0.0, 40.0, 1.0]],    # wrong by 40 < 50: still pushed
                          requires_grad=True)
    y = torch.tensor([0, 0, 0])
    (grad,) = torch.autograd.grad(cw_margin_sum(logits, y, confidence=50.0), [logits])
    assert grad.tolist() == [[-1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 1.0, 0.0]]


# -- FGSM and CW-inf by hand -----------------------------------------------------------------------

def test_fgsm_by_hand_on_a_linear_model():
    # CE gradient wrt x = W^T (p - e_y) = p_1 (W_1 - W_0) for y = 0: sign(W_1 - W_0) = (-, +, -, +).
    model = linear_model([[1.0, -1.0, 2.0, 0.0], [-1.0, 1.0, 0.0, 3.0]])
    x = torch.tensor([0.5, 0.95, 0.99, 0.02]).reshape(1, 1, 2, 2)
    x_adv = fgsm(model, x, torch.tensor([0]), eps=0.1)
    expected = torch.tensor([0.4, 1.0, 0.89, 0.12]).reshape(1, 1, 2, 2)  # 0.95 + 0.1 clipped to 1
    assert torch.allclose(x_adv, expected, atol=1e-7)


def test_cw_inf_by_hand_from_its_seeded_uniform_start():
    # The CW loss rises along W_other - W_y while z_y leads: sign (+, -, +, -) for y = 0, other = 1.
    model = linear_model([[1.0, -1.0, 2.0, 0.0], [2.0, -2.0, 3.0, -1.0]])
    x = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]]).reshape(2, 1, 2, 2)
    y = torch.tensor([0, 1])
    eps, step = 0.1, 0.03
    start = init_delta(x, eps, "uniform", torch.Generator().manual_seed(3))
    x_adv = cw_inf(model, x, y, eps=eps, step_size=step, steps=1, confidence=50.0,
                   generator=torch.Generator().manual_seed(3))
    direction = torch.tensor([[1.0, -1.0, 1.0, -1.0], [-1.0, 1.0, -1.0, 1.0]]).reshape(2, 1, 2, 2)
    expected = torch.min(torch.max(start + step * direction, x - eps), x + eps)
    assert torch.allclose(x_adv, expected, atol=1e-7)


def test_cw_inf_leaves_an_example_misclassified_by_more_than_the_confidence_where_it_started():
    model = linear_model([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], bias=[0.0, 60.0])
    x = torch.full((1, 1, 2, 2), 0.5)
    start = init_delta(x, 0.1, "uniform", torch.Generator().manual_seed(1))
    x_adv = cw_inf(model, x, torch.tensor([0]), eps=0.1, step_size=0.03, steps=3,
                   generator=torch.Generator().manual_seed(1))
    assert torch.equal(x_adv, start)


# -- CW-L2 pieces by hand --------------------------------------------------------------------------

def test_tanh_space_squeezes_the_ends_of_the_pixel_range():
    w = to_tanh_space(torch.tensor([0.0, 0.5, 1.0]))
    squeeze = 1 - 17 / 2**24  # 0.999999 in float32 (17 float32 steps below 1)
    end = 0.5 * math.log((1 + squeeze) / (1 - squeeze))  # arctanh of it: 7.2477...
    assert w[1].item() == 0.0
    assert w[2].item() == pytest.approx(end, rel=1e-5) and w[0].item() == pytest.approx(-end, rel=1e-5)
    assert from_tanh_space(torch.tensor([0.0])).item() == 0.5
    back = from_tanh_space(w)
    assert back[0].item() == pytest.approx(5e-7, abs=1e-7) and back[2].item() == pytest.approx(1 - 5e-7, abs=1e-7)


def test_misclassified_by_needs_the_confidence_margin():
    logits = torch.tensor([[1.0, 1.005], [1.0, 1.005], [2.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    assert misclassified_by(logits[:1], y[:1], 0.01).tolist() == [False]  # 1.01 still beats 1.005
    assert misclassified_by(logits[1:], y[1:], 0.001).tolist() == [True, True]


def test_cw_l2_returns_inputs_it_cannot_fool_unchanged_and_keeps_the_closest_success():
    # Example 0: class 0 leads by 1000, never overturned -> returned exactly as given.
    # Example 1: already misclassified -> the first iterate, (tanh(w0) + 1) / 2 at distance 0, is kept.
    model = linear_model([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], bias=[1000.0, 0.0])
    x = torch.tensor([[0.2, 0.4, 0.6, 0.8], [0.3, 0.3, 0.3, 0.3]]).reshape(2, 1, 2, 2)
    y = torch.tensor([0, 1])
    x_adv = cw_l2(model, x, y, **dict(PAPER_CW_L2, max_iterations=5))
    assert torch.equal(x_adv[0], x[0])
    assert torch.equal(x_adv[1], from_tanh_space(to_tanh_space(x[1])))


# -- on a trained model ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(real_data_dir):
    model = quick_trained_model(real_data_dir)
    split = load_split("CIFAR10", real_data_dir, "test", "cpu", 64)
    return model, to_float(split.images), split.labels, split


@pytest.mark.parametrize("name", ["fgsm", "pgd10", "pgd20", "cw_inf", "cw_l2"])
def test_each_attack_lowers_accuracy_within_eps_and_the_pixel_range(trained, name):
    model, x, y, split = trained
    attack = build_attack(name, EPS, seed=0, device="cpu")
    natural = attack_accuracy(model, split, 64)
    assert natural >= 25.0  # the model has learned something: the test would not be vacuous
    examples = []

    def recorded(model, x, y):
        examples.append(attack(model, x, y))
        return examples[-1]
    robust = attack_accuracy(model, split, 40, attack=recorded)  # two batches: 40 + 24
    x_adv = torch.cat(examples)
    assert robust < natural
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    if name != "cw_l2":  # CW-L2 is an L2 attack, unbounded in L-inf
        assert (x_adv - x).abs().max() <= EPS + 1e-6
    with torch.no_grad():
        assert robust == pytest.approx(100.0 * (model(x_adv).argmax(1) == y).float().mean().item())
    assert not any(m.training for m in model.modules())


def test_multi_step_attacks_are_at_least_as_strong_as_fgsm(trained):
    model, _, _, split = trained
    accuracy = {name: attack_accuracy(model, split, 64, attack=build_attack(name, EPS, 0, "cpu"))
                for name in ("fgsm", "pgd10", "pgd20")}
    assert accuracy["pgd20"] <= accuracy["pgd10"] <= accuracy["fgsm"]
