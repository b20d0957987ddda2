"""The codebook and the discrete kernel P(z_q = k | z_e) (docs/maths.md, section 2).

Per latent cell i, independently::

    P(z_q,i = k | z_e,i) = softmax_k(-||z_e,i - e_k||^2 / tau).

Shapes: latents are channel-first, ``z_e: (B, d, *cells)``; the codebook is ``(K, d)``; logits
and probabilities are ``(B, *cells, K)``; code indices are ``(B, *cells)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Codebook",
    "CodeUsage",
    "code_logits",
    "categorical_kl",
    "code_usage",
    "gather_codes",
    "spherical",
    "kmeans",
]


def spherical(z: torch.Tensor, radius: float = 1.0, dim: int = 1) -> torch.Tensor:
    """Project every latent vector (along ``dim``) onto the sphere of the given radius."""
    return radius * F.normalize(z, dim=dim)


def code_logits(z_e: torch.Tensor, codes: torch.Tensor, tau: float) -> torch.Tensor:
    """Logits -||z_e,i - e_k||^2 / tau of the discrete kernel.

    Args:
        z_e: ``(B, d, *cells)``.  codes: ``(K, d)``.  tau: temperature; ``tau = 0`` gives the
            nearest-code point mass (log-probabilities 0 at the argmin, -inf elsewhere).
    Returns:
        ``(B, *cells, K)``.
    """
    if z_e.dim() < 2 or z_e.shape[1] != codes.shape[1]:
        raise ValueError(
            f"z_e must have shape (B, d, *cells) with d = {codes.shape[1]}, got {tuple(z_e.shape)}"
        )
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    z = z_e.movedim(1, -1)
    sq_dist = (z.pow(2).sum(-1, keepdim=True) - 2.0 * z @ codes.T + codes.pow(2).sum(-1)).clamp_min(
        0.0
    )
    if tau == 0:
        nearest = sq_dist.argmin(-1, keepdim=True)
        return torch.full_like(sq_dist, -torch.inf).scatter(-1, nearest, 0.0)
    return -sq_dist / tau


def categorical_kl(logits_q: torch.Tensor, logits_p: torch.Tensor) -> torch.Tensor:
    """KL(Cat(softmax(logits_q)) || Cat(softmax(logits_p))), the exact sum over the last axis.

    Codes with q = 0 contribute 0 (so a point-mass q, ``tau = 0``, is allowed).
    """
    log_q = logits_q.log_softmax(-1)
    log_p = logits_p.log_softmax(-1)
    q = log_q.exp()
    return torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q)).sum(-1)


def gather_codes(indices: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Code vectors e_k for indices ``(B, *cells)``; returns channel-first ``(B, d, *cells)``."""
    # one-hot @ codes rather than codes[indices]: the backward of indexing accumulates into the
    # codebook in a thread-dependent order on CPU; a matrix product is deterministic.
    one_hot = torch.nn.functional.one_hot(indices, codes.shape[0]).to(codes.dtype)
    return (one_hot @ codes).movedim(-1, 1)


@dataclass(frozen=True)
class CodeUsage:
    """Codebook usage over a set of cells: how many codes appear and how evenly.

    ``perplexity = exp(H(average assignment distribution))`` lies in [1, K]; ``codes_used`` counts
    codes chosen at least once; ``counts`` is ``(K,)``.
    """

    counts: torch.Tensor
    perplexity: float
    codes_used: int


def code_usage(indices: torch.Tensor, num_codes: int) -> CodeUsage:
    """Usage statistics of code indices of any shape."""
    counts = torch.bincount(indices.reshape(-1), minlength=num_codes)
    freq = counts.double() / counts.sum().clamp_min(1)
    entropy = -torch.where(freq > 0, freq * freq.log(), torch.zeros_like(freq)).sum()
    return CodeUsage(
        counts=counts, perplexity=float(entropy.exp()), codes_used=int((counts > 0).sum())
    )


def kmeans(
    points: torch.Tensor,
    num_clusters: int,
    iters: int = 20,
    radius: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding: ``points (N, d) -> centres (K, d)``.

    With ``radius`` the centres are projected onto that sphere after every update (spherical
    k-means). Needs N >= K.
    """
    if points.dim() != 2 or points.shape[0] < num_clusters:
        raise ValueError(
            f"need points of shape (N, d) with N >= K = {num_clusters}, got {tuple(points.shape)}"
        )
    first = torch.randint(points.shape[0], (1,), generator=generator, device=points.device)
    centres = points[first]
    for _ in range(num_clusters - 1):
        sq = torch.cdist(points, centres).pow(2).min(-1).values
        pick = torch.multinomial(sq + 1e-12, 1, generator=generator)
        centres = torch.cat([centres, points[pick]])
    for _ in range(iters):
        assign = torch.cdist(points, centres).argmin(-1)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=num_clusters).unsqueeze(-1)
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
        if radius is not None:
            centres = spherical(centres, radius, dim=-1)
    return centres


class Codebook(nn.Module):
    """K learned code vectors in R^d, optionally on the sphere of radius ``radius``.

    ``forward()`` returns the codebook ``(K, d)`` as used by the model (projected when spherical).
    """

    def __init__(self, num_codes: int, dim: int, radius: float | None = 1.0) -> None:
        super().__init__()
        if num_codes < 1 or dim < 1:
            raise ValueError(f"num_codes and dim must be >= 1, got K={num_codes}, d={dim}")
        self.radius = radius
        self.weight = nn.Parameter(torch.randn(num_codes, dim))

    @property
    def num_codes(self) -> int:
        return self.weight.shape[0]

    @torch.no_grad()
    def initialise(self, encodings: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Data-dependent initialisation: k-means centres of ``encodings: (B, d, *cells)``."""
        points = encodings.movedim(1, -1).reshape(-1, self.weight.shape[1])
        self.weight.copy_(kmeans(points, self.num_codes, radius=self.radius, generator=generator))

    def forward(self) -> torch.Tensor:
        if self.radius is None:
            return self.weight
        return spherical(self.weight, self.radius, dim=-1)
