"""The masked-patch protocol: the patch, the Monte Carlo estimate, the uniform prior's value."""

import math

import pytest
import torch

from pbridge.masked_patch import central_patch, patch_bits_monte_carlo
from pbridge.presets import build_image_vqvae, image_preset


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


def test_bad_probability_shapes_are_reported():
    with pytest.raises(ValueError, match=r"\(N, B, H, W, K\)"):
        patch_bits_monte_carlo(torch.zeros(2, 3, 3, dtype=torch.long), torch.ones(2, 3, 3, 4), None)
