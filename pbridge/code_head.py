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

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from .codebook import Codebook
from .ou_bridge import OUSchedule

__all__ = ["CodeHead", "ChainNetwork", "check_chain_network", "local_log_likelihood", "mean_code"]


@runtime_checkable
class ChainNetwork(Protocol):
    """The contract of h_theta, the network of the tight bridge's chain (checked by
    :func:`check_chain_network`; :func:`pbridge.models.builders.build_chain_network` builds
    one):

    - input ``z_in: (B, c, *cells)`` with ``c = d``, or ``2 d`` with self-conditioning (z^t
      and the first pass's z0_hat stacked on channels), and ``t: (B,)``, integer-valued or
      fractional times in (0, T] (the continuous samplers ask between steps);
    - output ``(B, K, *cells)``: a correction to the logits of every cell's code;
    - the output layer zero-initialised, so that training starts from the exact posterior of
      the codes under the forward process and a uniform prior (:class:`CodeHead`).
    """

    def __call__(self, z_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def check_chain_network(
    network: nn.Module,
    latent_dim: int,
    num_codes: int,
    cells: tuple[int, ...],
    self_condition: bool,
    fresh: bool = True,
) -> None:
    """``ValueError`` saying which part of the :class:`ChainNetwork` contract ``network``
    breaks, from one call on two items at fractional times (its random state and buffers left
    as they were): the input channels it takes, the shape it returns, finite values, and, when
    ``fresh`` (an untrained network), an output of zero."""
    channels = 2 * latent_dim if self_condition else latent_dim
    z_in = torch.zeros(2, channels, *cells)
    param = next(network.parameters(), None)
    if param is not None:
        z_in = z_in.to(param)
    t = torch.tensor([0.5, 1.5], dtype=z_in.dtype, device=z_in.device)
    buffers = [(b, b.clone()) for b in network.buffers()]
    with torch.random.fork_rng(devices=[]):
        try:
            out = network(z_in, t)
        except (RuntimeError, ValueError) as err:
            which = "2 d with self-conditioning" if self_condition else "d"
            raise ValueError(
                f"the chain's network must take z_in of shape (B, {channels}, "
                f"{', '.join(map(str, cells))}) ({which}, d = {latent_dim}) and t of shape (B,); "
                f"it raised: {err}"
            ) from err
        finally:
            for buffer, saved in buffers:
                buffer.copy_(saved)
    want = (2, num_codes, *cells)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"the chain's network must return (B, K, *cells) = (B, {', '.join(map(str, want[1:]))})"
            f" (one logit correction per code and cell), got {got} for B = 2"
        )
    if not torch.isfinite(out).all():
        raise ValueError("the chain's network returned NaN or inf values")
    if fresh and out.abs().max() > 0:
        raise ValueError(
            "the chain's network must start at zero (its output layer zero-initialised, "
            "e.g. nn.init.zeros_ on its last weight and bias), so that the head starts at the "
            "exact posterior of the codes; pass fresh=False for a trained network"
        )


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
