"""Networks for images: the ResNet encoder/decoder of the paper and a time-conditioned U-Net.

Shapes (channel-first): the encoder maps ``(B, C, H, W)`` to latents ``(B, d, H / 2^k, W / 2^k)``
with ``k`` stride-2 stages (CIFAR-10: 32 -> 16, k = 1; Fashion-MNIST: 28 -> 14, k = 1;
mini-ImageNet: 84 -> 21, k = 2); the decoder inverts the shape. The U-Net denoiser maps
``(B, d, h, w), (B,) -> (B, d, h, w)`` for any grid, odd sizes included (21 x 21, 7 x 7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .networks import SinusoidalTimeEmbedding

__all__ = ["ResNetBlock", "ResNetEncoder", "ResNetDecoder", "UNetDenoiser"]


class ResNetBlock(nn.Module):
    """conv1x1 -> BN -> ReLU -> conv3x3(stride) -> BN, plus a 1x1 projection shortcut; ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """``(B, C, H, W) -> (B, d, H / 2^k, W / 2^k)``: block(C -> w0, stride 2), k - 1 more
    stride-2 blocks at width w0, then block(w0 -> w1) and block(w1 -> d)."""

    def __init__(
        self,
        in_channels: int,
        latent_dim: int,
        downsamples: int = 1,
        widths: tuple[int, int] = (16, 32),
    ) -> None:
        super().__init__()
        if downsamples < 1:
            raise ValueError(f"downsamples must be >= 1, got {downsamples}")
        w0, w1 = widths
        blocks = [ResNetBlock(in_channels, w0, stride=2)]
        blocks += [ResNetBlock(w0, w0, stride=2) for _ in range(downsamples - 1)]
        blocks += [ResNetBlock(w0, w1), ResNetBlock(w1, latent_dim)]
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResNetDecoder(nn.Module):
    """``(B, d, h, w) -> (B, out_channels, h 2^k, w 2^k)``: transposed convs d -> w1 -> w0
    (same size), k - 1 doubling ones at width w0, and a last doubling one to ``out_channels``."""

    def __init__(
        self,
        latent_dim: int,
        out_channels: int,
        upsamples: int = 1,
        widths: tuple[int, int] = (16, 32),
    ) -> None:
        super().__init__()
        if upsamples < 1:
            raise ValueError(f"upsamples must be >= 1, got {upsamples}")
        w0, w1 = widths
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, w1, 3, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(w1, w0, 3, padding=1),
            nn.ReLU(),
        ]
        for _ in range(upsamples - 1):
            layers += [nn.ConvTranspose2d(w0, w0, 4, stride=2, padding=1), nn.ReLU()]
        layers.append(nn.ConvTranspose2d(w0, out_channels, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def _norm(channels: int) -> nn.GroupNorm:
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class _TimeResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, time_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            _norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.time = nn.Linear(time_dim, out_channels)
        self.conv2 = nn.Sequential(
            _norm(out_channels), nn.SiLU(), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x) + self.time(emb)[:, :, None, None]
        return self.skip(x) + self.conv2(h)


class _Attention(nn.Module):
    """Self-attention over the cells of a grid, residual."""

    def __init__(self, channels: int, heads: int = 4) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        out, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class UNetDenoiser(nn.Module):
    """A time-conditioned U-Net for latent grids of any size: ``(B, channels, h, w), (B,) ->
    (B, out_channels, h, w)`` (eps_theta, or the K logit corrections h_theta of the tight
    bridge's categorical head).

    Levels of widths ``width * m`` for ``m`` in ``channel_mults``; ``blocks`` residual blocks per
    level (the time embedding added in each); stride-2 convolutions down (``ceil(n / 2)``, so
    odd sizes are fine) and nearest-neighbour resizing back to each skip's exact size;
    self-attention at the lowest resolution; a zero-initialised output convolution.
    """

    def __init__(
        self,
        channels: int,
        width: int = 64,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        blocks: int = 1,
        heads: int = 4,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        time_dim = 4 * width
        self.embed_time = nn.Sequential(
            SinusoidalTimeEmbedding(width),
            nn.Linear(width, time_dim),
            nn.SiLU(),
            nn.Linear(time_dim, time_dim),
        )
        widths = [width * m for m in channel_mults]
        self.inp = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips, current = [], widths[0]
        for level, w in enumerate(widths):
            for _ in range(blocks):
                self.down.append(_TimeResBlock(current, w, time_dim))
                current = w
                skips.append(w)
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
        self.mid1 = _TimeResBlock(current, current, time_dim)
        self.mid_attn = _Attention(current, heads)
        self.mid2 = _TimeResBlock(current, current, time_dim)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, w in reversed(list(enumerate(widths))):
            for _ in range(blocks):
                self.up.append(_TimeResBlock(current + skips.pop(), w, time_dim))
                current = w
            if level > 0:
                self.upsample.append(nn.Conv2d(w, w, 3, padding=1))
        self.out = nn.Sequential(
            _norm(current), nn.SiLU(), nn.Conv2d(current, out_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.channels, self.blocks, self.levels = channels, blocks, len(widths)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if z_t.dim() != 4 or z_t.shape[1] != self.channels:
            raise ValueError(
                f"z_t must have shape (B, {self.channels}, h, w), got {tuple(z_t.shape)}"
            )
        emb = self.embed_time(t)
        h = self.inp(z_t)
        skips, down = [], iter(self.down)
        for level in range(self.levels):
            for _ in range(self.blocks):
                h = next(down)(h, emb)
                skips.append(h)
            if level < self.levels - 1:
                h = self.downsample[level](h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        up, upsample = iter(self.up), iter(self.upsample)
        for level in reversed(range(self.levels)):
            for _ in range(self.blocks):
                h = next(up)(torch.cat([h, skips.pop()], dim=1), emb)
            if level > 0:
                h = F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest")
                h = next(upsample)(h)
        return self.out(h)
