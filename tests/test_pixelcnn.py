"""The gated PixelCNN baseline prior: causality by autograd, the one-pass likelihood against the
one-cell-at-a-time one (and so the exact masked-patch NLL), inpainting, and the variant's
bound."""

import itertools
import math

import pyro
import pytest
import torch
from pyro import poutine

from pbridge.config import image_preset
from pbridge.data import load_images
from pbridge.inference.images import test_bits_per_dim as bits_per_dim_of
from pbridge.masked_patch import central_patch, patch_bits
from pbridge.models.builders import build_image_model
from pbridge.pixelcnn import GatedPixelCNN


@pytest.mark.parametrize("grid", [(5, 7), (4, 4)], ids=["5x7", "4x4"])
def test_a_cells_logits_depend_on_exactly_the_earlier_cells(grid):
    """d logits(c) / d input(c') is zero for every c' at or after c in raster order, and nonzero
    for the cells just before c (left neighbour, the cell above): causal, without a blind spot
    next to the cell."""
    torch.manual_seed(0)
    net = GatedPixelCNN(num_codes=6, channels=32, layers=4)
    height, width = grid
    embedded = torch.randn(1, 32, height, width, requires_grad=True)
    logits = net.logits_from_embedding(embedded)
    for i in range(height):
        for j in range(width):
            cell = logits[0, :, i, j].square().sum()
            (grad,) = torch.autograd.grad(cell, embedded, retain_graph=True)
            reach = grad[0].abs().sum(0)  # (H, W)
            order = torch.arange(height * width).view(height, width)
            assert reach[order >= i * width + j].abs().max() == 0, (i, j)
            if j > 0:
                assert reach[i, j - 1] > 0
            if i > 0:
                assert reach[i - 1, j] > 0 and reach[i - 1, min(j + 1, width - 1)] > 0


def test_one_pass_likelihood_equals_the_cell_by_cell_conditionals(float64):
    """log p(k_c | k_<c) from one pass equals the same conditional computed from a grid in which
    every cell from c on is replaced by other codes: the patch NLL is the sum of conditionals."""
    torch.manual_seed(1)
    net = GatedPixelCNN(num_codes=5, channels=8, layers=3).double()
    indices = torch.randint(0, 5, (3, 4, 5))
    one_pass = net.log_prob_per_cell(indices)
    cells = torch.empty(3, 4, 5)
    for i in range(4):
        for j in range(5):
            scrambled = indices.clone().view(3, -1)
            scrambled[:, i * 5 + j :] = torch.randint(0, 5, scrambled[:, i * 5 + j :].shape)
            log_p = net(scrambled.view(3, 4, 5)).log_softmax(1)[:, :, i, j]
            cells[:, i, j] = log_p.gather(1, indices[:, i, j, None]).squeeze(1)
    torch.testing.assert_close(one_pass, cells)
    patch = torch.zeros(4, 5, dtype=torch.bool)
    patch[1:3, 1:4] = True
    by_cell = -cells[:, patch].sum(-1) / (6 * math.log(2))
    torch.testing.assert_close(patch_bits(one_pass, patch), by_cell.double())


def test_inpainting_keeps_known_cells_and_reports_the_conditionals(float64):
    """Known cells keep their codes; each hidden cell's reported probabilities are the
    conditional given the completed grid before it (recomputed in one pass afterwards)."""
    torch.manual_seed(2)
    net = GatedPixelCNN(num_codes=6, channels=8, layers=3).double()
    indices = torch.randint(0, 6, (4, 5, 5))
    known = ~central_patch((5, 5), 9 / 25).expand(4, 5, 5)
    completed, probs = net.sample(4, (5, 5), (indices, known))
    assert torch.equal(completed[known], indices[known])
    conditionals = net(completed).softmax(1).permute(0, 2, 3, 1)
    torch.testing.assert_close(probs[~known], conditionals[~known])
    assert torch.equal(probs[known].argmax(-1), indices[known])


@pytest.mark.parametrize(
    "known",
    [None, torch.tensor([[False, True], [True, False]])],
    ids=["prior", "inpainting"],
)
def test_drawn_grids_follow_the_product_of_conditionals(known, float64):
    """A 2 x 2 grid, K = 3: the law of the drawn codes of the free cells is the product of
    p(k_c | k_<c) over those cells (the whole joint when none is known; given codes 2 and 0 at
    the known anti-diagonal otherwise). Frequencies of all 81 grids over 10,000 draws within 5
    binomial s.e."""
    torch.manual_seed(3)
    net = GatedPixelCNN(num_codes=3, channels=8, layers=2).double()
    with torch.no_grad():
        net.head[-1].weight.mul_(20)  # a far from uniform law
    grids = torch.tensor(list(itertools.product(range(3), repeat=4))).view(81, 2, 2)
    free = torch.ones(2, 2, dtype=torch.bool) if known is None else ~known
    log_p = net.log_prob_per_cell(grids)[:, free].sum(-1).detach()
    given = torch.tensor([[0, 2], [0, 0]])
    possible = (grids == given)[:, ~free].all(-1)
    exact = torch.where(possible, log_p.exp(), 0.0)
    assert float(exact.sum()) == pytest.approx(1.0, abs=1e-12)
    draws = 10_000
    condition = None if known is None else (given.expand(draws, 2, 2), known.expand(draws, 2, 2))
    drawn, _ = net.sample(draws, (2, 2), condition)
    freq = torch.bincount((drawn.flatten(1) * torch.tensor([27, 9, 3, 1])).sum(-1), minlength=81)
    freq, se = freq / draws, (exact * (1 - exact) / draws).sqrt()
    excess = ((freq - exact).abs() - 5 * se).max()
    assert excess <= 0, f"a grid's frequency is {float(excess):.4f} beyond 5 s.e."


def test_pixelcnn_variant_bound_is_decoder_plus_prior_likelihood():
    """The variant's bits/dim = -(log p(x | z_q) + sum_c log p(k_c | k_<c)) / (D log 2) with the
    guide's nearest codes; training moves only the PixelCNN."""
    pyro.enable_validation(False)
    torch.manual_seed(0)
    config = image_preset("digits", "small")
    variant = build_image_model(
        image_preset("digits", "small").__class__(**{**config.__dict__, "variant": "pixelcnn"})
    )
    x = load_images("digits", "test").as_float()[:40]
    variant.initialise_codebook(x)
    guide = poutine.trace(variant.guide).get_trace(x)
    z_q = guide.nodes["z_q_0"]["value"]
    k = variant.prior(40).indices(z_q)
    by_hand = variant.decoder(z_q).log_prob(x) + variant.prior_net.log_prob_per_cell(k).sum((1, 2))
    expected = -float(by_hand.mean().detach()) / (64 * math.log(2))
    reported, _ = bits_per_dim_of(variant, x, batch_size=40)
    assert reported == pytest.approx(expected, rel=1e-5)
    trainable = {n.split(".")[0] for n, p in variant.named_parameters() if p.requires_grad}
    assert trainable == {"prior_net"}


@pytest.mark.parametrize("known", [False, True], ids=["prior", "inpainting"])
def test_on_step_counts_the_drawn_cells_and_changes_no_draw(known):
    """``on_step(done, total)`` is told every drawn cell, ``total`` the cells drawn (the whole
    4 x 4 grid, or the 4 cells of the central patch when inpainting); the draws are the same
    bits with and without it."""
    torch.manual_seed(4)
    net = GatedPixelCNN(num_codes=6, channels=8, layers=2)
    indices = torch.randint(0, 6, (3, 4, 4))
    condition = (indices, ~central_patch((4, 4)).expand(3, 4, 4)) if known else None
    total = 4 if known else 16
    calls = []
    torch.manual_seed(5)
    shown = net.sample(3, (4, 4), condition, on_step=lambda done, of: calls.append((done, of)))
    torch.manual_seed(5)
    quiet = net.sample(3, (4, 4), condition)
    assert calls == [(done, total) for done in range(1, total + 1)]
    assert all(torch.equal(a, b) for a, b in zip(shown, quiet, strict=True))
