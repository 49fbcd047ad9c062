"""FeatureMoments: tr Cov over many batches, pinned by hand."""
import math

import torch

from evaluation.accuracy import FeatureMoments


def test_trace_cov_by_hand_across_batches():
    # dim 0: 1, 3, 5 (mean 3, deviations -2, 0, 2 -> 8 / (3-1) = 4)
    # dim 1: 2, 6, 4 (mean 4, deviations -2, 2, 0 -> 8 / 2 = 4); trace = 8
    moments = FeatureMoments()
    moments.update(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
    moments.update(torch.tensor([[5.0, 4.0]]))
    assert moments.count == 3
    assert moments.trace_cov() == 8.0


def test_split_into_batches_matches_one_pass_and_keeps_precision():
    # A large common offset: the naive E[x^2] - E[x]^2 in float32 would lose every digit here.
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(1000, 5, generator=generator) * 0.01 + 1000.0
    moments = FeatureMoments()
    for chunk in rows.split(97):
        moments.update(chunk)
    expected = rows.double().var(0, unbiased=True).sum().item()
    assert math.isclose(moments.trace_cov(), expected, rel_tol=1e-6)


def test_fewer_than_two_rows_is_nan_and_empty_batches_are_ignored():
    moments = FeatureMoments()
    assert math.isnan(moments.trace_cov())
    moments.update(torch.zeros(0, 3))
    moments.update(torch.ones(1, 3))
    assert math.isnan(moments.trace_cov())
    moments.update(torch.tensor([[1.0, 1.0, 3.0]]))  # only dim 2 varies: (1, 3) -> var 2
    assert moments.trace_cov() == 2.0
