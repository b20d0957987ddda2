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
    "EMACodebook",
    "FixedCodebook",
    "CodeUsage",
    "code_logits",
    "categorical_kl",
    "code_usage",
    "gather_codes",
    "code_indices",
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


def code_indices(value: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The index ``(B, *cells)`` of the code nearest to each cell of ``value: (B, d, *cells)``:
    the inverse of :func:`gather_codes`.

    The two nearest codes by the matrix-product form of the distance (:func:`code_logits`) are
    compared by the exact ``||z - e_k||^2``. Training can bring two codes closer together than
    that form's rounding (about 1e-7 ||z||^2 in float32); without the exact comparison a value
    drawn as one of them can read back as its twin, and a point-mass guide then scores -inf.
    """
    k = min(2, codes.shape[0])
    candidates = code_logits(value, codes, 1.0).topk(k, dim=-1).indices  # (B, *cells, k)
    z = value.movedim(1, -1).unsqueeze(-2)  # (B, *cells, 1, d)
    exact = (z - codes.detach()[candidates]).pow(2).sum(-1)  # (B, *cells, k)
    return candidates.gather(-1, exact.argmin(-1, keepdim=True)).squeeze(-1)


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

    With ``restart_below`` set, :meth:`restart_dead` (called by the VQ-VAE guide in training,
    before the codes enter the step's graph) keeps an exponential moving average
    ``u_k <- decay u_k + (1 - decay) n_k`` of the number of cells assigned to each code per
    batch and moves every code with ``u_k < restart_below`` onto a random encoding of the batch
    (dead-code restart); its ``u_k`` is reset to the uniform share.
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        radius: float | None = 1.0,
        restart_below: float | None = None,
        decay: float = 0.99,
    ) -> None:
        super().__init__()
        if num_codes < 1 or dim < 1:
            raise ValueError(f"num_codes and dim must be >= 1, got K={num_codes}, d={dim}")
        if restart_below is not None and restart_below <= 0:
            raise ValueError(f"restart_below must be > 0 or None, got {restart_below}")
        if not 0 <= decay < 1:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        self.radius, self.restart_below, self.decay = radius, restart_below, decay
        self.weight = nn.Parameter(torch.randn(num_codes, dim))
        if restart_below is not None:  # u_k; negative until the first update sets it
            self.register_buffer("usage", torch.full((num_codes,), -1.0))

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

    @torch.no_grad()
    def restart_dead(self, encodings: torch.Tensor) -> None:
        """Dead-code restart (a no-op without ``restart_below``) on a training step's
        ``encodings: (B, d, *cells)``. It moves codes in place, so it must run before the
        codebook enters the step's autograd graph (after it, the backward pass would fail on a
        parameter changed in place)."""
        if self.restart_below is not None:
            self._restart_dead(*self._assign(encodings))

    def update(self, encodings: torch.Tensor) -> None:
        """Bookkeeping after a training step's assignment of ``encodings: (B, d, *cells)`` to
        their nearest codes: none here (the codes learn by gradient); :class:`EMACodebook`
        moves its codes."""

    def _assign(self, encodings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encodings as points ``(N, d)`` and the one-hot assignment to nearest codes ``(N, K)``."""
        points = encodings.movedim(1, -1).reshape(-1, self.weight.shape[1])
        nearest = torch.cdist(points, self()).argmin(-1)
        return points, F.one_hot(nearest, self.num_codes).to(points.dtype)

    def _restart_dead(self, points: torch.Tensor, one_hot: torch.Tensor) -> None:
        counts = one_hot.sum(0).to(self.usage)
        uniform = points.shape[0] / self.num_codes
        if bool((self.usage < 0).all()):
            self.usage.fill_(uniform)
        self.usage.mul_(self.decay).add_((1 - self.decay) * counts)
        dead = (self.usage < self.restart_below).nonzero().squeeze(-1)
        if len(dead):
            # each onto another encoding: two codes on one point (a cell picked twice, or equal
            # cells such as a blank background) would be twins, their read-back ambiguous
            candidates = torch.unique(points, dim=0)
            pick = torch.randperm(len(candidates), device=points.device)[: len(dead)]
            dead = dead[: len(pick)]
            self._set_codes(dead, candidates[pick])
            self.usage[dead] = uniform

    def _set_codes(self, which: torch.Tensor, vectors: torch.Tensor) -> None:
        self.weight[which] = vectors.to(self.weight)


class FixedCodebook(nn.Module):
    """K given code vectors ``(K, d)`` that never train: a buffer (saved with the model, never
    a parameter, so ``pyro.module`` and the optimiser do not see it). ``forward()`` returns
    them, as :class:`Codebook`'s does; for codes that come from elsewhere (a tokenizer's
    embedding, another model's codebook)."""

    def __init__(self, codes: torch.Tensor) -> None:
        super().__init__()
        if codes.dim() != 2 or not torch.is_floating_point(codes):
            raise ValueError(
                f"codes must be a floating-point (K, d) tensor, got {codes.dtype} of shape "
                f"{tuple(codes.shape)}"
            )
        if not torch.isfinite(codes).all():
            raise ValueError("codes contain NaN or inf values")
        self.register_buffer("weight", codes.detach().clone())

    @property
    def num_codes(self) -> int:
        return self.weight.shape[0]

    def forward(self) -> torch.Tensor:
        return self.weight


class EMACodebook(Codebook):
    """Codes as exponential moving averages of the encodings assigned to them (van den Oord et
    al. 2017, app. A.1), instead of gradient steps on the codebook loss::

        N_k <- decay N_k + (1 - decay) n_k,      m_k <- decay m_k + (1 - decay) sum_{i -> k} f_i,
        e_k = m_k / N~_k,   N~_k = (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j   (Laplace)

    ``weight`` is then a buffer (no gradient; the guide's codebook term has no effect) and
    :meth:`update` must be called once per training step (the VQ-VAE guide does). Projected on
    the sphere by ``forward()`` when ``radius`` is set. Under data-parallel training the
    statistics of process 0 are broadcast (DDP's buffer broadcast), not averaged.
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        radius: float | None = 1.0,
        restart_below: float | None = None,
        decay: float = 0.99,
        eps: float = 1e-5,
    ) -> None:
        super().__init__(num_codes, dim, radius, restart_below, decay)
        weight = self.weight.detach()
        del self.weight
        self.register_buffer("weight", weight)
        self.register_buffer("cluster_size", torch.ones(num_codes))
        self.register_buffer("code_sum", weight.clone())
        self.eps = eps

    @torch.no_grad()
    def initialise(self, encodings: torch.Tensor, generator: torch.Generator | None = None) -> None:
        super().initialise(encodings, generator)
        self.code_sum.copy_(self.weight)
        self.cluster_size.fill_(1.0)

    @torch.no_grad()
    def update(self, encodings: torch.Tensor) -> None:
        points, one_hot = self._assign(encodings)
        self.cluster_size.mul_(self.decay).add_((1 - self.decay) * one_hot.sum(0))
        self.code_sum.mul_(self.decay).add_((1 - self.decay) * (one_hot.T @ points))
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.num_codes * self.eps) * total
        self.weight.copy_(self.code_sum / smoothed[:, None])

    def _set_codes(self, which: torch.Tensor, vectors: torch.Tensor) -> None:
        super()._set_codes(which, vectors)
        self.code_sum[which] = vectors.to(self.code_sum)
        self.cluster_size[which] = 1.0
