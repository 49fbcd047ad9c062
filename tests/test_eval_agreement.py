"""Our FGSM, PGD and CW-L2 against advertorch 0.2.3 itself (pinned in requirements.txt, imported
through tests/advertorch_reference.py) on the same trained model, inputs and start points."""
import copy
import importlib
import sys

import pytest
import torch

from advertorch_reference import import_advertorch
from attacks import PAPER_CW_L2, ce_sum, cw_l2, fgsm, init_delta, pgd
from helpers import first_test_images, quick_trained_model

EPS = 8 / 255


@pytest.fixture(scope="module")
def advertorch():
    return import_advertorch()


@pytest.fixture(scope="module")
def model(real_data_dir):
    return quick_trained_model(real_data_dir)


@pytest.fixture(scope="module")
def batch(real_data_dir):
    return first_test_images(real_data_dir, 64)


class Counted(torch.nn.Module):
    """Counts forward passes: equal counts show that both implementations stop at the same iteration."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def test_compat_layer_leaves_torch_and_sys_modules_as_they_were(advertorch):
    assert advertorch.__version__ == "0.2.3"
    from advertorch.attacks import CarliniWagnerL2Attack, GradientSignAttack, LinfPGDAttack  # noqa: F401
    assert not hasattr(importlib.import_module("torch.autograd.gradcheck"), "zero_gradients")
    assert "torchvision" not in sys.modules and "torchvision.transforms" not in sys.modules


def test_fgsm_is_bit_identical_to_GradientSignAttack(advertorch, model, batch):
    from advertorch.attacks import GradientSignAttack
    x, y = batch
    ours = fgsm(model, x, y, eps=EPS)
    theirs = GradientSignAttack(model, eps=EPS).perturb(x, y)
    assert torch.equal(ours, theirs)
    assert (ours != x).float().mean() > 0.5  # it moved most pixels: the comparison is not vacuous


def _linf_pgd_from(advertorch, monkeypatch, start):
    """advertorch's LinfPGDAttack with its random start replaced by `start` (x + delta0)."""
    import advertorch.attacks.iterative_projected_gradient as module

    def same_start(delta, x, *args):
        delta.data = start - x
        return delta.data
    monkeypatch.setattr(module, "rand_init_delta", same_start)
    return module


@pytest.mark.parametrize("steps", [10, 20])
def test_pgd_equals_LinfPGDAttack_from_the_same_start_in_float64(advertorch, monkeypatch, model, batch, steps):
    # In float64 the two agree exactly, step for step; in float32 (next test) they differ by rounding.
    from advertorch.attacks import LinfPGDAttack
    model64 = Counted(copy.deepcopy(model).double())
    x, y = batch[0][:24].double(), batch[1][:24]
    start = init_delta(x, EPS, "uniform", torch.Generator().manual_seed(5))
    _linf_pgd_from(advertorch, monkeypatch, start)
    ours = pgd(model64, x, y, eps=EPS, step_size=2 / 255, steps=steps, loss_fn=ce_sum, init="uniform",
               generator=torch.Generator().manual_seed(5))
    theirs = LinfPGDAttack(model64, eps=EPS, nb_iter=steps, eps_iter=2 / 255, rand_init=True).perturb(x, y)
    assert torch.equal(ours, theirs)
    assert model64.calls == 2 * steps


def test_pgd_agrees_with_LinfPGDAttack_in_float32_up_to_rounding(advertorch, monkeypatch, model, batch):
    # advertorch steps delta = x' - x and we step x' itself: the same arithmetic up to one ulp, which
    # can flip the sign of a near-zero gradient on a few pixels after several steps.
    from advertorch.attacks import LinfPGDAttack
    x, y = batch
    start = init_delta(x, EPS, "uniform", torch.Generator().manual_seed(5))
    _linf_pgd_from(advertorch, monkeypatch, start)
    ours = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=10, loss_fn=ce_sum, init="uniform",
               generator=torch.Generator().manual_seed(5))
    theirs = LinfPGDAttack(model, eps=EPS, nb_iter=10, eps_iter=2 / 255, rand_init=True).perturb(x, y)
    close = (ours - theirs).abs() <= 1e-6
    assert close.float().mean() > 0.99
    with torch.no_grad():
        ours_correct = (model(ours).argmax(1) == y).sum().item()
        theirs_correct = (model(theirs).argmax(1) == y).sum().item()
        clean_correct = (model(x).argmax(1) == y).sum().item()
    assert abs(ours_correct - theirs_correct) <= 1
    assert ours_correct < clean_correct


@pytest.mark.parametrize("settings, images, aborts", [
    (PAPER_CW_L2, 16, None),  # the paper's: c 0.1, confidence 0.01, lr 0.01, 1000 iterations, 1 search step
    (dict(PAPER_CW_L2, max_iterations=200), 16, True),  # the objective rises by the 2nd check: early abort
    (dict(PAPER_CW_L2, binary_search_steps=3, max_iterations=40, c=1.0), 16, None),  # search on c
    (dict(PAPER_CW_L2, binary_search_steps=10, max_iterations=4), 8, None),  # last step restarts from the bounds
    (dict(PAPER_CW_L2, abort_early=False, max_iterations=30, confidence=0.0, lr=0.1), 16, False),
], ids=["paper", "abort", "search3", "search10", "no-abort"])
def test_cw_l2_is_bit_identical_to_CarliniWagnerL2Attack(advertorch, model, batch, settings, images, aborts):
    from advertorch.attacks import CarliniWagnerL2Attack
    x, y = batch[0][:images], batch[1][:images]
    ours_model, theirs_model = Counted(model), Counted(model)
    ours = cw_l2(ours_model, x, y, **settings)
    theirs = CarliniWagnerL2Attack(
        theirs_model, 10, confidence=settings["confidence"], learning_rate=settings["lr"],
        binary_search_steps=settings["binary_search_steps"], max_iterations=settings["max_iterations"],
        abort_early=settings["abort_early"], initial_const=settings["c"]).perturb(x, y)
    assert torch.equal(ours, theirs)
    assert ours_model.calls == theirs_model.calls
    if aborts is not None:
        full = settings["max_iterations"] * settings["binary_search_steps"]
        assert (ours_model.calls < full) == aborts
    with torch.no_grad():
        fooled = model(ours).argmax(1) != y
    assert fooled.any()
    assert (ours[~fooled] == x[~fooled]).all()  # an example never misclassified comes back unchanged
    assert ours.min() >= 0 and ours.max() <= 1
