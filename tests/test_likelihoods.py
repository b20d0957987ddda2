"""The discretised logistic is a normalised PMF that matches the logistic's CDF over each bin."""

import math

import pytest
import torch

from pbridge.likelihoods import DiscretizedLogistic, bits_per_dim

LEVELS = torch.arange(256, dtype=torch.float64) / 255.0


@pytest.mark.parametrize(
    "loc, log_scale",
    [(0.0, -2.0), (0.9, -4.0), (-1.3, 0.5), (0.2, -7.0)],
    ids=["centre", "sharp-near-edge", "wide-outside", "very-sharp"],
)
def test_pmf_sums_to_one_and_matches_the_cdf(loc, log_scale, float64):
    dist = DiscretizedLogistic(torch.tensor(loc), torch.tensor(log_scale)).expand([256])
    p = dist.log_prob(LEVELS).exp()
    assert math.isclose(float(p.sum()), 1.0, rel_tol=1e-9)
    # independent: logistic CDF F(y) = sigmoid((y - loc) / s) at the bin edges, tails at the ends
    edges = torch.cat(
        [torch.tensor([-math.inf]), (2 * LEVELS[:-1] - 1) + 1 / 255, torch.tensor([math.inf])]
    )
    cdf = torch.sigmoid((edges - loc) / math.exp(log_scale))
    assert torch.allclose(p, cdf[1:] - cdf[:-1], atol=1e-12, rtol=1e-7)


def test_samples_follow_the_pmf(float64):
    torch.manual_seed(0)
    dist = DiscretizedLogistic(torch.tensor(0.1), torch.tensor(-3.0))
    draws = dist.sample((20000,))
    freq = torch.bincount(torch.round(draws * 255).long(), minlength=256).double() / 20000
    p = dist.expand([256]).log_prob(LEVELS).exp()
    assert float((freq - p).abs().sum()) < 0.1  # total variation of an empirical PMF, n = 2e4


def test_bits_per_dim():
    assert math.isclose(bits_per_dim(784 * math.log(2) * 3.5, 784), 3.5)
