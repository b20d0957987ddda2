"""The categorical head of the tight bridge: p_theta(z_q^t = k | z^t) (docs/maths.md, s. 6).

Per latent cell i and code k, with the forward process started at the code,
q(z^t | k) = N(z* + sqrt(abar_t)(e_k - z*), sigma2 (1 - abar_t) I)::

    l_ik(z^t, t) = log N(z^t_i; z* + sqrt(abar_t)(e_k - z*), sigma2 (1 - abar_t) I)
                   + h_theta(z^t, t)_ik
    p_theta(z_q^t = k | z^t) = softmax_k(l_ik)
    z0_hat_i = sum_k softmax_k(l_ik) e_k

h_theta is a network with K output channels whose last layer starts at zero: at h = 0 the head
is the exact posterior over codes under the forward process and a uniform prior on codes. The
local log-likelihood is computed without the terms constant in k,
(sqrt(abar) <z - z*, e_k - z*> - abar ||e_k - z*||^2 / 2) / (sigma2 (1 - abar)), so nothing
cancels in float32. With self-conditioning the network also sees z0_hat of a first pass made
with a zero conditioning and no gradient; the two-pass map is still a function of (z^t, t).

As a module the head is the chain's denoiser ``eps_theta(z^t, t)``: it returns the eps implied
by z0_hat (:meth:`OUSchedule.eps_from_z0`), so every sampler of :mod:`pbridge.samplers` runs on
it unchanged. ``t`` may be fractional (the continuous samplers).
"""

from __future__ import annotations

import torch
from torch import nn

from .codebook import Codebook
from .ou_bridge import OUSchedule

__all__ = ["CodeHead", "local_log_likelihood"]


def local_log_likelihood(
    schedule: OUSchedule, z_t: torch.Tensor, t: torch.Tensor, codes: torch.Tensor
) -> torch.Tensor:
    """log q(z^t_i | k) up to a constant in k, ``(B, *cells, K)``.

    Args:
        z_t: ``(B, d, *cells)``.  t: ``(B,)`` integer or fractional times in (0, T].
        codes: ``(K, d)``.
    """
    abar = schedule.abar_at(t, z_t).flatten(1)  # (B, 1)
    abar = abar.reshape(abar.shape[0], *([1] * (z_t.dim() - 1)))  # (B, 1, ..., 1) over cells, K
    centred = codes - schedule.z_star
    inner = (z_t - schedule.z_star).movedim(1, -1) @ centred.T  # (B, *cells, K)
    var = schedule.sigma2 * (1.0 - abar)
    return (abar.sqrt() * inner - 0.5 * abar * centred.pow(2).sum(-1)) / var


class CodeHead(nn.Module):
    """The logits l(z^t, t) of p_theta(z_q^t | z^t), the prediction z0_hat, and eps_theta.

    Args:
        schedule: the OU bridge.
        network: h_theta, ``(z_in: (B, c, *cells), t: (B,)) -> (B, K, *cells)`` with
            ``c = d`` (``2 d`` with self-conditioning: z^t and z0_hat stacked on channels);
            its output layer zero-initialised.
        codebook: the K codes.
        self_condition: run the two-pass map described in the module docstring.
    """

    def __init__(
        self,
        schedule: OUSchedule,
        network: nn.Module,
        codebook: Codebook,
        self_condition: bool = True,
    ) -> None:
        super().__init__()
        self.schedule, self.network, self.self_condition = schedule, network, self_condition
        # Not a submodule: the codebook belongs to the variant (its parameters counted once).
        self._codebook = (codebook,)

    @property
    def codebook(self) -> Codebook:
        return self._codebook[0]

    def _logits(
        self, z_t: torch.Tensor, t: torch.Tensor, codes: torch.Tensor, z0_cond: torch.Tensor | None
    ) -> torch.Tensor:
        z_in = z_t if z0_cond is None else torch.cat([z_t, z0_cond], dim=1)
        correction = self.network(z_in, t).movedim(1, -1)
        return local_log_likelihood(self.schedule, z_t, t, codes) + correction

    def logits(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """l(z^t, t), ``(B, *cells, K)``, for ``z_t: (B, d, *cells)`` and ``t: (B,)``."""
        codes = self.codebook()
        if not self.self_condition:
            return self._logits(z_t, t, codes, None)
        with torch.no_grad():
            first = self._logits(z_t, t, codes, torch.zeros_like(z_t))
            z0_first = mean_code(first, codes)
        return self._logits(z_t, t, codes, z0_first)

    def z0_hat(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """sum_k softmax_k(l) e_k, ``(B, d, *cells)``."""
        return mean_code(self.logits(z_t, t), self.codebook())

    def forward(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps_theta(z^t, t): the noise implied by z0_hat, ``(B, d, *cells)``."""
        return self.schedule.eps_from_z0(z_t, self.z0_hat(z_t, t), t)


def mean_code(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """sum_k softmax_k(logits) e_k for ``logits: (B, *cells, K)``; returns ``(B, d, *cells)``."""
    return (logits.softmax(-1) @ codes).movedim(-1, 1)
