"""The Diffusion-bridge VQ-VAE, end to end, as a Pyro model/guide pair (docs/maths.md).

``formulation="tight"`` (the default, docs/maths.md s. 6). Model::

    z_q^0 ~ p_theta(z_q^0)    the bridge over code grids: z^T ~ N(z*, sigma2 I), the backward
                              chain to z^1, the codes read out by the categorical head at t = 1
                              (random step: one site, :class:`BridgeCodePrior`; full chain:
                              sites z_e_T .. z_e_1 and z_q_0 | z_e_1)
    x | z_q^0 ~ decoder(z_q^0)

Guide: z_q^0 = e_k with k the nearest code to f_phi(x) (a point mass, straight-through to the
decoder, the VQ commitment/codebook surrogate), then (full chain) the forward kernels from e_k.

``formulation="paper"`` (s. 3-5, the paper as written; kept for comparison). Model::

    z_e^0 ~ p_theta(z_e^0)                     (the bridge: full chain or random-step site)
    z_q^0 | z_e^0 ~ Cat(softmax(-||z_e^0 - e_k||^2 / tau_p))   per cell
    x | z_q^0 ~ decoder(z_q^0)

Guide: z_e^0 | x ~ N(f_phi(x), s^2 I),  z_q^0 | z_e^0 ~ Cat(softmax(-||z_e^0 - e_k||^2 / tau_q)),
then (full chain) the forward kernels from z_e^0.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pbridge.autoencoder import CodebookAutoencoder, nearest_code_sites
from pbridge.bridge_prior import (
    BridgeCodePrior,
    DiffusionPrior,
    StepCostTracker,
    chain_guide_sites,
    chain_model_sites,
    importance_proposal,
)
from pbridge.code_distribution import CodeVector
from pbridge.code_head import CodeHead
from pbridge.codebook import Codebook, code_logits, gather_codes
from pbridge.config import BridgeSettings
from pbridge.ou_bridge import OUSchedule
from pbridge.samplers import reverse_sample

__all__ = ["DiffusionBridgeVQVAE"]


class DiffusionBridgeVQVAE(CodebookAutoencoder):
    """Encoder, decoder, codebook and bridge prior trained together on one ELBO.

    ``surrogate_sites`` (from :class:`CodebookAutoencoder`) names the guide's ``pyro.factor``
    sites that are training surrogates, not terms of the bound (left out when the ELBO is
    reported).

    Args:
        encoder: ``x -> (B, d, *cells)``.
        decoder: ``z_q: (B, d, *cells) ->`` a distribution over x with batch shape ``(B,)``.
        denoiser: the chain's network: tight, h_theta ``((B, 2d or d, *cells), (B,)) ->
            (B, K, *cells)`` (2d with self-conditioning); paper, eps_theta
            ``((B, d, *cells), (B,)) -> (B, d, *cells)``.
        codebook: the K codes.
        schedule: the OU bridge.
        data_shape: the shape of one item x (without the batch dimension).
        latent_shape: ``(d, *cells)``.
        settings: :class:`BridgeSettings`.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        denoiser: nn.Module,
        codebook: Codebook,
        schedule: OUSchedule,
        data_shape: tuple[int, ...],
        latent_shape: tuple[int, ...],
        settings: BridgeSettings,
    ) -> None:
        super().__init__(
            encoder, decoder, codebook, data_shape, latent_shape, settings.spherical_radius
        )
        self.denoiser = denoiser
        self.schedule, self.settings = schedule, settings
        importance = settings.t_sampling == "importance"
        self.step_costs = (
            StepCostTracker(schedule.num_steps) if settings.tight and importance else None
        )
        proposal = importance_proposal(schedule, settings.model_variance) if importance else None
        self.register_buffer("t_proposal", None if settings.tight else proposal, persistent=False)
        self.steps_per_item = 1
        self.sampler_options: dict = {"sampler": "ancestral", "steps": None}

    # ------------------------------------------------------------------ building blocks
    def encoder_scale(self) -> float:
        """s of the paper formulation's q(z_e^0 | x)."""
        return self.settings.encoder_scale

    @contextmanager
    def stratified_steps(self, steps_per_item: int) -> Iterator[None]:
        """Within the block, the bound is estimated with ``steps_per_item`` stratified steps per
        item (tight: plus the read-out term at t = 1) and no importance sampling: a
        lower-variance bound for evaluation."""
        saved = self.steps_per_item
        self.steps_per_item = steps_per_item
        try:
            yield
        finally:
            self.steps_per_item = saved

    @contextmanager
    def sampling(
        self, sampler: str = "ancestral", steps: int | None = None, **options
    ) -> Iterator[None]:
        """Within the block, prior draws and :meth:`inpaint` run the backward chain with
        :func:`~pbridge.samplers.reverse_sample` (``sampler``, ``steps`` and its keyword
        ``options``: ``eta``, ``method``) instead of the T-step ancestral chain."""
        saved = self.sampler_options
        self.sampler_options = {"sampler": sampler, "steps": steps, **options}
        try:
            yield
        finally:
            self.sampler_options = saved

    def chain_network(self) -> nn.Module:
        """The chain's network as the chain calls it (a labelled variant binds its labels)."""
        return self.denoiser

    def chain_denoiser(self) -> nn.Module:
        """eps_theta as the backward chain uses it: tight, the :class:`CodeHead` on the
        network; paper, the network itself."""
        network = self.chain_network()
        if not self.settings.tight:
            return network
        return CodeHead(self.schedule, network, self.codebook, self.settings.self_condition)

    def draw_chain(self, z_T: torch.Tensor, **extra) -> torch.Tensor:
        """The backward chain from ``z_T`` by the current sampler (:meth:`sampling`), to z^1
        (tight) or z^0 (paper); ``extra``: more keywords, e.g. ``known`` or ``record``."""
        return reverse_sample(
            self.schedule,
            self.chain_denoiser(),
            z_T,
            model_variance=self.settings.model_variance,
            to_time=1 if self.settings.tight else 0,
            **self.sampler_options,
            **extra,
        )

    def prior(self, batch_size: int) -> BridgeCodePrior | DiffusionPrior:
        """The random-step prior site: over codes (tight) or over z_e^0 (paper)."""
        s = self.settings
        stratified = self.steps_per_item > 1
        if s.tight:
            tracker = self.step_costs
            return BridgeCodePrior(
                self.chain_denoiser(),
                batch_size,
                self.latent_shape,
                draw=self.draw_chain,
                proposal=None if stratified or tracker is None else tracker.proposal(),
                tracker=None if stratified else tracker,
                strata=self.steps_per_item if stratified else None,
                aux_weight=s.readout_aux,
            )
        return DiffusionPrior(
            self.schedule,
            self.chain_network(),
            self.latent_shape,
            batch_size,
            draw=self.draw_chain,
            model_variance=s.model_variance,
            proposal=None if stratified else self.t_proposal,
            denoiser_loss=s.denoiser_loss,
            steps_per_item=self.steps_per_item,
        )

    def state_logits(self, z: torch.Tensor, t: int) -> torch.Tensor:
        """Logits ``(B, *cells, K)`` of the discrete state z_q^t attached to ``z = z^t``:
        tight, the head's p_theta(z_q^t | z^t) (t >= 1); paper, the kernel
        -||z^t - e_k||^2 / tau_p."""
        if self.settings.tight:
            steps = torch.full((z.shape[0],), max(t, 1), dtype=torch.long, device=z.device)
            return self.chain_denoiser().logits(z, steps)
        return code_logits(z, self.codebook(), self.settings.tau_p)

    def readout_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of z_q^0 given the chain's end ``z``: z^1 (tight) or z_e^0 (paper)."""
        return self.state_logits(z, 1 if self.settings.tight else 0)

    @torch.no_grad()
    def chain_states(self, z_T: torch.Tensor, times: tuple[int, ...]) -> dict[int, torch.Tensor]:
        """``{t: z^t}`` of one T-step ancestral backward chain from ``z_T`` at ``times`` (for
        plots). Tight: the chain ends at z^1 and time 0 holds the code vectors of the
        read-out's most probable codes."""
        kept = {self.schedule.num_steps: z_T} if self.schedule.num_steps in times else {}

        def record(t: int, z: torch.Tensor) -> None:
            if t in times:
                kept[t] = z

        with self.sampling("ancestral"):
            end = self.draw_chain(z_T, record=record)
        if self.settings.tight and 0 in times:
            kept[0] = gather_codes(self.readout_logits(end).argmax(-1), self.codebook())
        return kept

    @torch.no_grad()
    def inpaint(
        self, indices: torch.Tensor, known: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Complete the codes ``indices: (B, *cells)`` where ``known`` (bool, same shape) is
        False: the known cells' z^0 (tight: e_k; paper: e_k + s eps) are held by replacement
        along the backward chain (:meth:`draw_chain`), the hidden cells' codes drawn from the
        read-out (:meth:`readout_logits`). Returns the completed indices and the read-out
        probabilities at every cell, ``(B, *cells, K)`` (one-hot at known cells)."""
        codes = self.codebook()
        z0_known = gather_codes(indices, codes)
        if not self.settings.tight:
            z0_known = z0_known + self.encoder_scale() * torch.randn_like(z0_known)
        z_T = self.schedule.stationary_draw(z0_known)
        z = self.draw_chain(z_T, known=(z0_known, known.unsqueeze(1)))
        probs = self.readout_logits(z).softmax(-1)
        drawn = torch.distributions.Categorical(probs=probs).sample()
        one_hot = F.one_hot(indices, codes.shape[0]).to(probs)
        return (
            torch.where(known, indices, drawn),
            torch.where(known[..., None], one_hot, probs),
        )

    # ------------------------------------------------------------------ Pyro programs
    def _chain_end_sites(self, batch_size: int, like: torch.Tensor) -> torch.Tensor:
        """Full chain: sites z_e_T .. z_e_1 (tight) or .. z_e_0 (paper); returns the end."""
        return chain_model_sites(
            self.schedule,
            self.chain_denoiser(),
            torch.Size(self.latent_shape),
            batch_size,
            self.settings.model_variance,
            like=like,
            last=1 if self.settings.tight else 0,
        )

    def model(self, x: torch.Tensor) -> None:
        pyro.module("bridge_vqvae", self)
        s, codes = self.settings, self.codebook()
        with pyro.plate("data", x.shape[0]):
            if s.estimator == "full_chain":
                z_end = self._chain_end_sites(x.shape[0], codes)
                z_q0 = pyro.sample("z_q_0", CodeVector(self.readout_logits(z_end), codes))
            elif s.tight:
                z_q0 = pyro.sample("z_q_0", self.prior(x.shape[0]))
            else:
                z_e0 = pyro.sample("z_e_0", self.prior(x.shape[0]))
                z_q0 = pyro.sample("z_q_0", CodeVector(self.readout_logits(z_e0), codes))
            pyro.sample("x", self.decoder(z_q0), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        self.check_data(x)
        pyro.module("bridge_vqvae", self)
        s, codes = self.settings, self.codebook()
        f = self.encode(x)
        n = len(self.latent_shape)
        with pyro.plate("data", x.shape[0]):
            if s.tight:
                z_0 = nearest_code_sites(f, codes, s.commitment)
            else:
                z_0 = pyro.sample("z_e_0", dist.Normal(f, self.encoder_scale()).to_event(n))
                pyro.sample(
                    "z_q_0",
                    CodeVector(
                        code_logits(z_0, codes, s.tau_q),
                        codes,
                        straight_through=z_0,
                        gradient=s.gradient,
                        temperature=s.gumbel_temperature,
                    ),
                )
            if s.estimator == "full_chain":
                chain_guide_sites(self.schedule, z_0)
