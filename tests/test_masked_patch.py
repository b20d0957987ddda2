"""The masked-patch protocol: the patch, the Monte Carlo estimate, the uniform prior's value."""

import itertools
import math

import pytest
import torch

from pbridge.config import image_preset
from pbridge.masked_patch import central_patch, patch_bits_monte_carlo
from pbridge.models.builders import build_image_vqvae
from pbridge.pixelcnn import GatedPixelCNN


@pytest.mark.parametrize(
    "grid, side, corner",
    [((16, 16), 6, (5, 5)), ((14, 14), 5, (4, 4)), ((4, 4), 2, (1, 1)), ((21, 21), 8, (6, 6))],
    ids=["cifar", "fmnist", "digits", "miniimagenet"],
)
def test_central_patch_has_the_papers_fraction(grid, side, corner):
    mask = central_patch(grid)
    assert int(mask.sum()) == side * side
    top, left = corner
    assert bool(mask[top : top + side, left : left + side].all())


def test_monte_carlo_bits_match_a_hand_computation(float64):
    """Two draws, two items, a 2-cell patch: -mean_i log2(mean_n p_i^(n)) by hand."""
    true = torch.tensor([[[0, 1], [2, 0]], [[1, 1], [0, 2]]])  # (2, 2, 2), K = 3
    patch = torch.tensor([[True, False], [False, True]])
    probs = torch.full((2, 2, 2, 2, 3), 1 / 3)
    probs[0, 0, 0, 0] = torch.tensor([0.5, 0.25, 0.25])
    probs[1, 0, 0, 0] = torch.tensor([0.1, 0.8, 0.1])
    probs[0, 1, 1, 1] = torch.tensor([0.2, 0.2, 0.6])
    bits = patch_bits_monte_carlo(true, probs, patch)
    item0 = -(math.log2((0.5 + 0.1) / 2) + math.log2(1 / 3)) / 2
    item1 = -(math.log2(1 / 3) + math.log2((0.6 + 1 / 3) / 2)) / 2
    torch.testing.assert_close(bits, torch.tensor([item0, item1]))


def test_uniform_prior_scores_log2_k_bits_per_cell():
    vqvae = build_image_vqvae(image_preset("digits", "small"))
    codes = torch.randint(0, 32, (3, 4, 4))
    known = ~central_patch((4, 4)).expand(3, 4, 4)
    completed, probs = vqvae.inpaint(codes, known)
    assert torch.equal(completed[known], codes[known])
    bits = patch_bits_monte_carlo(codes, probs[None], central_patch((4, 4)))
    torch.testing.assert_close(bits, torch.full((3,), 5.0, dtype=torch.float64))


def test_uniform_prior_draws_every_code_equally_often():
    """The uniform prior's completions: 16,000 hidden cells, each code's frequency within 5
    binomial s.e. of 1 / K (K = 32); the known cells are kept."""
    vqvae = build_image_vqvae(image_preset("digits", "small"))
    codes = torch.randint(0, 32, (4000, 4, 4))
    known = ~central_patch((4, 4)).expand(4000, 4, 4)
    completed, _ = vqvae.inpaint(codes, known)
    assert torch.equal(completed[known], codes[known])
    freq = torch.bincount(completed[~known], minlength=32) / 16_000
    assert torch.all((freq - 1 / 32).abs() < 5 * math.sqrt(1 / 32 * 31 / 32 / 16_000)), freq


def test_monte_carlo_bits_converge_to_the_patch_marginals(float64):
    """PixelCNN, 4 x 4 grid, K = 3, the central 2 x 2 patch hidden: the mean over draws of the
    reported probability of a hidden cell's true code estimates its marginal probability given
    the visible codes (exact: a sum over the 81 completions of the patch), each within 5 s.e.
    of the mean over 4,000 draws (+1e-12: the first hidden cell's is the same every draw);
    the bits per cell within 5 (delta-method) s.e. of -mean_i log2 P_i."""
    torch.manual_seed(0)
    net = GatedPixelCNN(num_codes=3, channels=8, layers=2).double()
    with torch.no_grad():
        net.head[-1].weight.mul_(20)  # a far from uniform law
    true = torch.randint(0, 3, (4, 4))
    patch = central_patch((4, 4))
    grids = true.repeat(81, 1, 1)
    grids[:, patch] = torch.tensor(list(itertools.product(range(3), repeat=4)))
    with torch.no_grad():
        weight = net.log_prob_per_cell(grids)[:, patch].sum(-1).exp()  # law of the completions
    assert float(weight.sum()) == pytest.approx(1.0, abs=1e-12)
    marginal = ((grids[:, patch] == true[patch]) * weight[:, None]).sum(0)  # P_i, (4,)
    draws = 4000
    _, probs = net.sample(draws, (4, 4), (true.expand(draws, 4, 4), ~patch.expand(draws, 4, 4)))
    p_true = probs[:, patch].gather(-1, true[patch].expand(draws, 4)[..., None]).squeeze(-1)
    mean, se = p_true.mean(0), p_true.std(0) / math.sqrt(draws)
    assert torch.all((mean - marginal).abs() <= 5 * se + 1e-12), (mean, marginal)
    bits = patch_bits_monte_carlo(true[None], probs[:, None], patch)
    exact = -marginal.log2().mean()
    bits_se = (se / (marginal * math.log(2))).sum() / 4  # correlated cells: the sum bounds it
    assert abs(float(bits) - float(exact)) < 5 * float(bits_se)


def test_bad_probability_shapes_are_reported():
    with pytest.raises(ValueError, match=r"\(N, B, H, W, K\)"):
        patch_bits_monte_carlo(torch.zeros(2, 3, 3, dtype=torch.long), torch.ones(2, 3, 3, 4), None)


def test_the_floor_mixes_in_the_uniform_and_bounds_a_miss(float64):
    """floor f: -log2((1 - f) p + f / K) per hidden cell, by hand; a code no draw predicts
    costs exactly log2(K / f) bits, not infinity."""
    true = torch.zeros(1, 3, 3, dtype=torch.long)
    patch = torch.zeros(3, 3, dtype=torch.bool)
    patch[1, 1] = True
    probs = torch.zeros(2, 1, 3, 3, 4)
    probs[..., 1] = 1.0  # every draw predicts code 1; the true code is 0
    bits = patch_bits_monte_carlo(true, probs, patch, floor=0.01)
    assert float(bits) == pytest.approx(math.log2(4 / 0.01))
    probs[0, ..., 0], probs[0, ..., 1] = 0.5, 0.5
    bits = patch_bits_monte_carlo(true, probs, patch, floor=0.01)
    assert float(bits) == pytest.approx(-math.log2(0.99 * 0.25 + 0.01 / 4))
