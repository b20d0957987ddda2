"""Small networks for the toy problem: per-cell encoder/decoder and a residual-MLP denoiser.

Latents are channel-first, ``(B, d, L)`` for a sequence of L cells.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn

__all__ = [
    "SinusoidalTimeEmbedding",
    "PointwiseMLP",
    "ResidualPointwiseMLP",
    "ResidualMLPDenoiser",
    "NormalDecoder",
]


class SinusoidalTimeEmbedding(nn.Module):
    """t ``(B,)`` -> ``(B, dim)``: [sin(t w_j), cos(t w_j)] with w_j = 10000^(-j / (dim/2))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even, got {dim}")
        freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2) / (dim // 2))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.to(self.freqs.dtype)[:, None] * self.freqs
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class PointwiseMLP(nn.Module):
    """The same MLP applied to every cell: ``(B, c_in, L) -> (B, c_out, L)``."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(in_channels, hidden, 1),
            nn.SiLU(),
            nn.Conv1d(hidden, hidden, 1),
            nn.SiLU(),
            nn.Conv1d(hidden, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResidualPointwiseMLP(nn.Module):
    """x + MLP(x) on every cell, the MLP's last layer zero-initialised (identity at the start).

    ``(B, c, L) -> (B, c, L)``: for data that already live in the latent space's dimension.
    """

    def __init__(self, channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.mlp = PointwiseMLP(channels, channels, hidden)
        nn.init.zeros_(self.mlp.net[-1].weight)
        nn.init.zeros_(self.mlp.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


class _TimeResidualBlock(nn.Module):
    def __init__(self, width: int, time_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.time = nn.Linear(time_dim, width)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.mlp(self.norm(h) + self.time(emb))


class ResidualMLPDenoiser(nn.Module):
    """A time-conditioned network on the flattened latent: ``(B, *in_shape), (B,) ->
    (B, *out_shape)`` (``out_shape`` defaults to ``in_shape``: eps_theta; ``(K, L)``: the
    correction h_theta of the tight bridge's categorical head).

    A residual MLP with the time embedding injected in every block and a zero-initialised output
    layer (so training starts from an output of 0).
    """

    def __init__(
        self,
        in_shape: tuple[int, ...],
        width: int = 256,
        blocks: int = 3,
        out_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.out_shape = self.in_shape if out_shape is None else tuple(out_shape)
        time_dim = width
        self.embed_time = nn.Sequential(
            SinusoidalTimeEmbedding(time_dim), nn.Linear(time_dim, time_dim), nn.SiLU()
        )
        self.inp = nn.Linear(math.prod(self.in_shape), width)
        self.blocks = nn.ModuleList(_TimeResidualBlock(width, time_dim) for _ in range(blocks))
        self.out = nn.Sequential(
            nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, math.prod(self.out_shape))
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if tuple(z_t.shape[1:]) != self.in_shape:
            raise ValueError(
                f"z_t must have shape (B, {', '.join(map(str, self.in_shape))}), "
                f"got {tuple(z_t.shape)}"
            )
        emb = self.embed_time(t)
        h = self.inp(z_t.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h).view(z_t.shape[0], *self.out_shape)


class NormalDecoder(nn.Module):
    """Decoder likelihood p(x | z_q) = N(net(z_q), scale^2 I), an event over all of x.

    ``forward(z_q: (B, d, *cells))`` returns a Pyro distribution with batch shape ``(B,)``.
    """

    def __init__(self, net: nn.Module, scale: float, event_dims: int) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"decoder scale must be > 0, got {scale}")
        self.net, self.scale, self.event_dims = net, scale, event_dims

    def forward(self, z_q: torch.Tensor) -> dist.Distribution:
        return dist.Normal(self.net(z_q), self.scale).to_event(self.event_dims)
