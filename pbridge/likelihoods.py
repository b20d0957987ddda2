"""Decoder likelihoods for 8-bit images.

``DiscretizedLogistic`` puts a logistic(loc, scale) density on [-1, 1] and integrates it over the
256 bins of width 2/255 around the levels x_k = 2 k / 255 - 1, the two edge bins taking the
tails (PixelCNN++, without the mixture). It is a probability mass function over the 256 levels,
so -log p(x) of data read as ``uint8 / 255`` is a code length in nats with no dequantisation:
bits/dim = -ELBO / (D log 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution
from torch import nn
from torch.distributions import constraints

__all__ = ["DiscretizedLogistic", "DiscretizedLogisticDecoder", "bits_per_dim"]

_HALF_BIN = 1.0 / 255.0
_NO_SHAPE = torch.Size()


class DiscretizedLogistic(TorchDistribution):
    """Independent 256-level discretised logistics, one per pixel; values in [0, 1].

    Args:
        loc: centre on the [-1, 1] scale, any shape.  log_scale: same shape.
    """

    arg_constraints = {"loc": constraints.real, "log_scale": constraints.real}
    support = constraints.unit_interval

    def __init__(
        self, loc: torch.Tensor, log_scale: torch.Tensor, validate_args: bool | None = None
    ) -> None:
        self.loc, self.log_scale = torch.broadcast_tensors(loc, log_scale)
        super().__init__(self.loc.shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape)
        return DiscretizedLogistic(self.loc.expand(shape), self.log_scale.expand(shape))

    @property
    def mean(self) -> torch.Tensor:
        """The mean level, approximated by the logistic's centre mapped to [0, 1] and clipped."""
        return ((self.loc + 1.0) / 2.0).clamp(0.0, 1.0)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        x = 2.0 * value - 1.0
        inv_s = torch.exp(-self.log_scale)
        upper = (x - self.loc + _HALF_BIN) * inv_s
        lower = (x - self.loc - _HALF_BIN) * inv_s
        # log(sigmoid(u) - sigmoid(l)) = logsigmoid(u) + logsigmoid(-l) + log(1 - exp(l - u))
        width = upper - lower
        mid = F.logsigmoid(upper) + F.logsigmoid(-lower) + torch.log(-torch.expm1(-width))
        low_edge = value <= 0.5 / 255.0
        high_edge = value >= 254.5 / 255.0
        return torch.where(
            low_edge, F.logsigmoid(upper), torch.where(high_edge, F.logsigmoid(-lower), mid)
        )

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp(
                1e-6, 1 - 1e-6
            )
            x = self.loc + torch.exp(self.log_scale) * (torch.log(u) - torch.log1p(-u))
            return torch.round((x.clamp(-1.0, 1.0) + 1.0) * 127.5) / 255.0


class DiscretizedLogisticDecoder(nn.Module):
    """Decoder likelihood: a network with ``2 C`` output channels -> (loc, log_scale) per pixel.

    ``forward(z_q: (B, d, h, w))`` returns ``DiscretizedLogistic(...).to_event(3)`` over
    ``(B, C, H, W)``; log_scale is bounded below by ``min_log_scale``.
    """

    def __init__(self, net: nn.Module, min_log_scale: float = -7.0) -> None:
        super().__init__()
        self.net, self.min_log_scale = net, min_log_scale

    def forward(self, z_q: torch.Tensor):
        loc, log_scale = self.net(z_q).chunk(2, dim=1)
        return DiscretizedLogistic(loc, log_scale.clamp_min(self.min_log_scale)).to_event(3)


def bits_per_dim(nats_per_item: float, dims: int) -> float:
    """Convert a code length in nats per item to bits per data dimension."""
    return nats_per_item / (dims * math.log(2.0))
