"""The bridge prior alone, fitted to codes you bring (a tokenizer's, another VQ-VAE's), as a
Pyro model/guide pair (docs/codes.md).

Model, for code indices ``k: (B, *cells)`` int64 and a fixed codebook ``e: (K, d)``::

    z_q^0 ~ p_theta(z_q^0)    the tight bridge over code grids (:class:`BridgeCodePrior`):
                              z^T ~ N(z*, sigma2 I), the backward chain to z^1, the codes
                              read out by the categorical head at t = 1
    observed: z_q^0 = e_k

The chain's z^t are integrated inside the prior's bound (its ``log_prob``, docs/maths.md
s. 6), so the model has no latent site and the guide is empty: Pyro's ``Trace_ELBO`` of the
pair is minus a one-draw estimate of that bound on log p(k), and SVI fits the chain's network
h_theta alone. The codebook is a buffer (:class:`~pbridge.codebook.FixedCodebook`): it never
trains, and ``pyro.module`` sees only the network.
"""

from __future__ import annotations

import math

import pyro
import torch
from torch import nn

from pbridge.bridge_prior import BridgeCodePrior, StepCostTracker
from pbridge.code_head import CodeHead, check_chain_network
from pbridge.codebook import FixedCodebook, gather_codes
from pbridge.ou_bridge import OUSchedule
from pbridge.samplers import ANCESTRAL, OnStep, SamplerSettings

__all__ = ["BridgeCodeModel"]


class BridgeCodeModel(nn.Module):
    """The tight bridge prior over given codes, trained by SVI on its bound.

    Args:
        codebook: the codes ``(K, d)`` (kept fixed).
        network: h_theta, a :class:`~pbridge.code_head.ChainNetwork` for ``d`` channels (``2 d``
            with ``self_condition``) and K outputs on ``cells``, its output layer at zero
            (:func:`~pbridge.models.builders.build_chain_network` builds one).
        schedule: the OU bridge (e.g. :func:`~pbridge.ou_bridge.image_schedule`).
        cells: the shape of one item's grid of codes, e.g. ``(L,)`` for sequences.
        self_condition: the head sees its own first-pass z0_hat (:class:`CodeHead`).
        importance: propose the step t from q(t) ~ sqrt(E[L_t^2]) tracked in training
            (:class:`StepCostTracker`); ``False``: uniform.
        readout_aux: weight of the head's cross-entropy on the true code, in the gradient
            only (the bound is unchanged).
    """

    def __init__(
        self,
        codebook: torch.Tensor,
        network: nn.Module,
        schedule: OUSchedule,
        cells: tuple[int, ...],
        self_condition: bool = True,
        importance: bool = True,
        readout_aux: float = 0.1,
    ) -> None:
        super().__init__()
        self.codebook = FixedCodebook(codebook)
        num_codes, dim = self.codebook.weight.shape
        check_chain_network(network, dim, num_codes, tuple(cells), self_condition)
        if readout_aux < 0 or not math.isfinite(readout_aux):
            raise ValueError(f"readout_aux must be a finite number >= 0, got {readout_aux}")
        self.network, self.schedule = network, schedule
        self.self_condition, self.readout_aux = self_condition, readout_aux
        self.data_shape = tuple(cells)
        self.latent_shape = (dim, *cells)
        self.step_costs = StepCostTracker(schedule.num_steps) if importance else None

    def head(self) -> CodeHead:
        """The categorical head p_theta(z_q^t | z^t) on this model's network and codes."""
        return CodeHead(self.schedule, self.network, self.codebook, self.self_condition)

    def prior(self, batch_size: int) -> BridgeCodePrior:
        """The prior site in its training form: one step per item from the tracked proposal."""
        tracker = self.step_costs
        return BridgeCodePrior(
            self.head(),
            batch_size,
            self.latent_shape,
            proposal=None if tracker is None else tracker.proposal(),
            tracker=tracker,
            aux_weight=self.readout_aux,
        )

    def model(self, k: torch.Tensor) -> None:
        pyro.module("bridge_code_model", self)
        with pyro.plate("data", k.shape[0]):
            pyro.sample("z_q_0", self.prior(k.shape[0]), obs=gather_codes(k, self.codebook()))

    def guide(self, k: torch.Tensor) -> None:
        """Empty: the model has no latent site (the chain is integrated inside its bound)."""

    @torch.no_grad()
    def sample_codes(
        self, num: int, sampler: SamplerSettings = ANCESTRAL, on_step: OnStep | None = None
    ) -> torch.Tensor:
        """``num`` draws of the prior by ``sampler`` (z^T, the backward chain to z^1, the
        read-out's codes), indices ``(num, *cells)`` int64."""
        prior = self.prior(num).with_options(sampler=sampler, on_step=on_step)
        return prior.indices(prior.sample())

    @torch.no_grad()
    def bound_bits_per_cell(self, k: torch.Tensor, strata: int = 100) -> torch.Tensor:
        """One draw of the bound on -log2 p(k) per cell of every item of ``k: (B, *cells)``,
        ``(B,)`` bits: the read-out and ``strata`` stratified steps per item (its evaluation
        form; docs/maths.md s. 6)."""
        prior = self.prior(k.shape[0]).with_options(strata=strata)
        nats = prior.log_prob(gather_codes(k, self.codebook()))
        return -nats / (math.log(2) * math.prod(self.data_shape))
