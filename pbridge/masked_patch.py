"""Masked-patch NLL: how well a prior predicts the true codes of a hidden central patch of the
latent grid from the visible codes (docs/evaluation.md).

- Monte Carlo, for every prior that can inpaint: draw N completions of the patch given the
  visible codes; each draw gives, per hidden cell i, the prior's probability ``p_i^(n)`` of
  the true code (the discrete kernel at the completed z_e^0 for the bridge, the conditional a
  cell was drawn from for the PixelCNN: Rao-Blackwellised). Per item::

      bits/cell = -(1 / |P|) sum_{i in P} log2( (1 / N) sum_n p_i^(n) )

- Exact, for the PixelCNN: ``-(1 / |P|) sum_{i in P} log2 p(k_i | k_<i)`` with the true codes
  everywhere (teacher forcing in raster order).
"""

from __future__ import annotations

import math

import torch

__all__ = ["central_patch", "patch_bits_monte_carlo", "patch_bits_autoregressive"]

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
    true_indices: torch.Tensor, probs: torch.Tensor, patch: torch.Tensor
) -> torch.Tensor:
    """Per-item bits per hidden cell from N inpainting draws.

    Args:
        true_indices: ``(B, H, W)`` codes of the data.  probs: ``(N, B, H, W, K)`` per draw, the
            prior's probabilities of every code at every cell.  patch: ``(H, W)`` bool, hidden.
    Returns:
        ``(B,)``.
    """
    if probs.dim() != 5 or probs.shape[1:4] != true_indices.shape:
        raise ValueError(
            f"probs must be (N, B, H, W, K) with (B, H, W) = {tuple(true_indices.shape)}, "
            f"got {tuple(probs.shape)}"
        )
    index = true_indices[None, ..., None].expand(probs.shape[0], -1, -1, -1, 1)
    p_true = probs.gather(-1, index).squeeze(-1).mean(0)  # (B, H, W)
    return -p_true[:, patch].double().log2().mean(-1)


def patch_bits_autoregressive(log_prob_per_cell: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """Per-item bits per hidden cell from the exact conditionals ``log p(k_c | k_<c)`` of an
    autoregressive prior, ``(B, H, W)`` in nats -> ``(B,)``."""
    return -log_prob_per_cell[:, patch].double().mean(-1) / math.log(2)
