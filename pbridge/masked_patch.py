"""Masked-patch NLL: how well a prior predicts the true codes of a hidden central patch of the
latent grid from the visible codes (docs/evaluation.md).

- Monte Carlo, for every prior that can inpaint: draw N completions of the patch given the
  visible codes; each draw gives, per hidden cell i, the prior's probability ``p_i^(n)`` of
  the true code (the discrete kernel at the completed z_e^0 for the bridge, the conditional a
  cell was drawn from for the PixelCNN: Rao-Blackwellised). Per item::

      bits/cell = -(1 / |P|) sum_{i in P} log2( (1 - f) (1 / N) sum_n p_i^(n) + f / K )

  with a floor f (pbridge evaluate: f = 0.01, for every prior) so that a missed code costs at
  most log2(K / f) bits.

- Exact, for the PixelCNN: ``-(1 / |P|) sum_{i in P} log2 p(k_i | k_<i)`` with the true codes
  everywhere (teacher forcing in raster order): it conditions on the cells before each patch
  cell in raster order only.

- Conditional bound, for the tight bridge: ``-(1 / |P|) sum_{i in P} b_i / log 2`` with b_i the
  cell's share of the bound on log p(k) (``code_bound_per_cell``): a lower bound on log p(k_P |
  k_O) of the model the inpainting sampler draws from, which conditions on every visible cell
  (docs/maths.md s. 7).
"""

from __future__ import annotations

import math

import torch

__all__ = ["central_patch", "patch_bits_monte_carlo", "patch_bits"]

PAPER_FRACTION = 36 / 256  # a 6 x 6 patch of the 16 x 16 CIFAR-10 grid


def central_patch(grid: tuple[int, int], fraction: float = PAPER_FRACTION) -> torch.Tensor:
    """Bool mask ``(H, W)``, True on the central square patch of side ``round(sqrt(fraction H
    W))`` (6 of 16, 5 of 14, 2 of 4); the hidden cells."""
    height, width = grid
    side = max(1, round(math.sqrt(fraction * height * width)))
    if side >= min(height, width):
        raise ValueError(f"a patch of side {side} leaves no visible cell on a {grid} grid")
    top, left = (height - side) // 2, (width - side) // 2
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[top : top + side, left : left + side] = True
    return mask


def patch_bits_monte_carlo(
    true_indices: torch.Tensor, probs: torch.Tensor, patch: torch.Tensor, floor: float = 0.0
) -> torch.Tensor:
    """Per-item bits per hidden cell from N inpainting draws.

    Args:
        true_indices: ``(B, H, W)`` codes of the data.  probs: ``(N, B, H, W, K)`` per draw, the
            prior's probabilities of every code at every cell.  patch: ``(H, W)`` bool, hidden.
        floor: the predictive distribution of a cell is ``(1 - floor) mean_n p^(n) + floor / K``
            (a mixture with the uniform), so that a code no draw predicts costs at most
            ``log2(K / floor)`` bits instead of infinitely many (a prior whose read-out is
            sharp, such as the tight bridge's at z^1, puts ~0 on a code its draws missed).
    Returns:
        ``(B,)``.
    """
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"floor must lie in [0, 1), got {floor}")
    if probs.dim() != 5 or probs.shape[1:4] != true_indices.shape:
        raise ValueError(
            f"probs must be (N, B, H, W, K) with (B, H, W) = {tuple(true_indices.shape)}, "
            f"got {tuple(probs.shape)}"
        )
    index = true_indices[None, ..., None].expand(probs.shape[0], -1, -1, -1, 1)
    p_true = probs.gather(-1, index).squeeze(-1).mean(0)  # (B, H, W)
    p_true = (1.0 - floor) * p_true + floor / probs.shape[-1]
    return -p_true[:, patch].double().log2().mean(-1)


def patch_bits(log_prob_per_cell: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """Per-item bits per hidden cell from per-cell log-probabilities ``(B, H, W)`` in nats (the
    exact conditionals ``log p(k_c | k_<c)`` of an autoregressive prior, or the per-cell shares
    of a bound) -> ``(B,)``."""
    return -log_prob_per_cell[:, patch].double().mean(-1) / math.log(2)
