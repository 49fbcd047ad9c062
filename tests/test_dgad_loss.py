"""DGAD loss against values computed by hand (pure-Python math, no torch in the reference)."""
import math

import pytest
import torch

from helpers import kl, softmax
from losses.dgad import (dgad_loss, dgad_terms, misclassified_by_teacher, predictive_consistency,
                         swap_adversarial_teacher, swap_clean_teacher)


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# N = 3 samples, C = 3 classes.
Y = torch.tensor([0, 1, 2])
T_CLEAN = [[2.0, 1.0, 0.0],   # right
           [3.0, 1.0, 0.0],   # wrong (predicts 0): the only ST sample
           [0.0, 1.0, 2.0]]   # right
T_ADV = [[0.0, 2.0, 1.0],     # best wrong class 1 beats the true 0: swap -> [2, 0, 1]
         [1.0, 2.0, 0.0],     # true class 1 already on top: unchanged
         [2.0, 2.0, 1.0]]     # classes 0 and 1 tie as best wrong; argmax takes 0: swap -> [1, 2, 2]
S_CLEAN = [[0.5, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.2]]
S_ADV = [[0.0, 0.0, 1.0], [0.3, 0.0, 0.0], [0.0, 2.0, 0.0]]
T_CLEAN_SWAPPED = [[2.0, 1.0, 0.0], [1.0, 3.0, 0.0], [0.0, 1.0, 2.0]]
T_ADV_SWAPPED = [[2.0, 0.0, 1.0], [1.0, 2.0, 0.0], [1.0, 2.0, 2.0]]


def reference(beta, B, use_map=True, use_els=True, use_pcr=True, formula="fixed"):
    st = [1] if use_map else []
    at = [i for i in range(3) if i not in st]
    tc = T_CLEAN_SWAPPED if use_els else T_CLEAN
    ta = T_ADV_SWAPPED if use_els else T_ADV
    l_st = (1 / (len(st) + 1e-10)) * sum(kl(tc[i], S_CLEAN[i]) for i in st)  # the released 1 / (n_ST + 1e-10)
    l_at = sum(kl(ta[i], S_ADV[i]) for i in at) / len(at)
    n_st = len(st)
    if formula == "authors":
        loss = 0.5 * ((n_st / B) * l_st + (B - n_st) / B) * l_at
    else:
        loss = (n_st / B) * l_st + ((B - n_st) / B) * l_at
    if use_pcr:
        sq = [(a - c) ** 2 for i in range(3) for a, c in zip(softmax(S_ADV[i]), softmax(S_CLEAN[i]))]
        loss += beta * sum(sq) / len(sq)
    return loss


def loss(**kw):
    kw.setdefault("beta", 5.0)
    kw.setdefault("batch_size", 3)
    return dgad_loss(t(S_CLEAN), t(S_ADV), t(T_CLEAN), t(T_ADV), Y, **kw).item()


def test_map_selects_teacher_mistakes_on_clean_inputs():
    assert misclassified_by_teacher(t(T_CLEAN), Y).tolist() == [False, True, False]


def test_els_clean_swaps_true_and_top_logit_in_selected_rows_only():
    rows = torch.tensor([False, True, False])
    assert swap_clean_teacher(t(T_CLEAN), Y, rows).tolist() == T_CLEAN_SWAPPED
    # Selecting a row the teacher gets right swaps the true class with itself: unchanged.
    assert swap_clean_teacher(t(T_CLEAN), Y, torch.ones(3, dtype=torch.bool)).tolist() == T_CLEAN_SWAPPED


def test_els_adversarial_swaps_only_when_strictly_worse():
    assert swap_adversarial_teacher(t(T_ADV), Y).tolist() == T_ADV_SWAPPED
    tie = t([[1.0, 1.0, 0.0]])  # true class ties the best wrong one: no swap
    assert swap_adversarial_teacher(tie, torch.tensor([0])).tolist() == [[1.0, 1.0, 0.0]]


def test_pcr_is_mean_squared_probability_gap():
    # softmax([0, 0]) = [.5, .5]; softmax([ln 3, 0]) = [.75, .25]: squared gaps .0625 twice -> mean .0625
    value = predictive_consistency(t([[0.0, 0.0]]), t([[math.log(3.0), 0.0]])).item()
    assert value == pytest.approx(0.0625, abs=1e-12)


def test_full_loss_matches_hand_computation():
    assert loss() == pytest.approx(reference(5.0, 3), rel=1e-12)
    # A literal pin of the same number, so that a change of the reference is noticed too.
    assert loss() == pytest.approx(0.80739045195095, abs=1e-12)


@pytest.mark.parametrize("switch", [dict(use_map=False), dict(use_els=False), dict(use_pcr=False)])
def test_each_ablation_switch(switch):
    assert loss(**switch) == pytest.approx(reference(5.0, 3, **switch), rel=1e-12)
    assert loss(**switch) != pytest.approx(loss(), rel=1e-6)


def test_all_switches_off_is_adaad_with_alpha_one():
    value = loss(use_map=False, use_els=False, use_pcr=False)
    adaad = sum(kl(T_ADV[i], S_ADV[i]) for i in range(3)) / 3
    assert value == pytest.approx(adaad, rel=1e-12)


def test_weight_by_configured_batch_size_on_a_short_batch():
    # The last batch holds N = 3 samples but --bs is 4: the authors divide by 4.
    assert loss(batch_size=4) == pytest.approx(reference(5.0, 4), rel=1e-12)
    assert loss(batch_size=4) != pytest.approx(loss(batch_size=3), rel=1e-6)


def test_mobilenet_authors_expression():
    assert loss(formula="authors") == pytest.approx(reference(5.0, 3, formula="authors"), rel=1e-12)


def test_no_teacher_mistakes_gives_zero_st_term():
    right = t([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    value = dgad_loss(t(S_CLEAN), t(S_ADV), right, right, Y, beta=0.0, batch_size=3).item()
    assert value == pytest.approx(sum(kl(right[i].tolist(), S_ADV[i]) for i in range(3)) / 3, rel=1e-12)


def test_gradient_reaches_both_student_branches_and_not_the_teacher():
    s_clean, s_adv = t(S_CLEAN).requires_grad_(), t(S_ADV).requires_grad_()
    t_clean, t_adv = t(T_CLEAN).requires_grad_(), t(T_ADV).requires_grad_()
    dgad_loss(s_clean, s_adv, t_clean, t_adv, Y, beta=5.0, batch_size=3).backward()
    assert s_clean.grad.abs().sum() > 0 and s_adv.grad.abs().sum() > 0
    assert t_clean.grad is None and t_adv.grad is None


def test_named_parts_by_hand():
    """The parts results.csv logs: the unweighted terms, and the fraction of the batch MAP puts in ST."""
    terms = dgad_terms(t(S_CLEAN), t(S_ADV), t(T_CLEAN), t(T_ADV), Y, beta=5.0, batch_size=3)
    pcr = sum((a - c) ** 2 for i in range(3) for a, c in zip(softmax(S_ADV[i]), softmax(S_CLEAN[i]))) / 9
    assert terms["L_ST"].item() == pytest.approx(kl(T_CLEAN_SWAPPED[1], S_CLEAN[1]) / (1 + 1e-10), rel=1e-15)
    assert terms["L_AT"].item() == pytest.approx((kl(T_ADV_SWAPPED[0], S_ADV[0]) + kl(T_ADV_SWAPPED[2], S_ADV[2])) / 2,
                                                 rel=1e-12)
    assert terms["L_PCR"].item() == pytest.approx(pcr, rel=1e-12)
    assert terms["st_fraction"].item() == pytest.approx(1 / 3, rel=1e-12)
    assert terms["loss"].item() == pytest.approx(
        (1 / 3) * terms["L_ST"].item() + (2 / 3) * terms["L_AT"].item() + 5.0 * pcr, rel=1e-12)
    off = dgad_terms(t(S_CLEAN), t(S_ADV), t(T_CLEAN), t(T_ADV), Y, beta=5.0, batch_size=3, use_pcr=False,
                     use_map=False)
    assert off["L_PCR"].item() == 0.0 and off["st_fraction"].item() == 0.0 and off["L_ST"].item() == 0.0
