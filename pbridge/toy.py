"""The paper's toy problem: random walks on the 8 centroids of the unit circle.

A sequence of L points visits centroids c_j = (cos 2 pi j / 8, sin 2 pi j / 8); each step moves
+-1 mod 8 with equal probability; every point is observed with isotropic Gaussian noise.
Sequences are channel-first tensors ``(N, 2, L)``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["centroids", "sample_walks", "nearest_centroid", "transition_accuracy"]

NUM_CENTROIDS = 8


def centroids(num: int = NUM_CENTROIDS) -> torch.Tensor:
    """``(num, 2)`` points evenly spaced on the unit circle."""
    angles = 2 * math.pi * torch.arange(num) / num
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


def sample_walks(
    num: int,
    length: int = 5,
    noise: float = 0.05,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` noisy walks: points ``(num, 2, length)``, centroid states ``(num, length)``."""
    if num < 1 or length < 2:
        raise ValueError(f"need num >= 1 and length >= 2, got num={num}, length={length}")
    start = torch.randint(NUM_CENTROIDS, (num, 1), generator=generator)
    moves = 2 * torch.randint(2, (num, length - 1), generator=generator) - 1
    states = torch.cat([start, start + moves.cumsum(-1)], dim=-1) % NUM_CENTROIDS
    points = centroids()[states].movedim(-1, 1)
    return points + noise * torch.randn(points.shape, generator=generator), states


def nearest_centroid(points: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid of every point: ``(N, 2, L) -> (N, L)``."""
    d = (points.movedim(1, -1).unsqueeze(-2) - centroids().to(points)).pow(2).sum(-1)
    return d.argmin(-1)


def transition_accuracy(states: torch.Tensor) -> float:
    """Fraction of consecutive transitions in ``states: (N, L)`` that move +-1 mod 8."""
    step = (states[:, 1:] - states[:, :-1]) % NUM_CENTROIDS
    return float(((step == 1) | (step == NUM_CENTROIDS - 1)).double().mean())
