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
from pbridge.samplers import ANCESTRAL, OnStep, SamplerSettings, reverse_sample

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

    # ------------------------------------------------------------------ building blocks
    def encoder_scale(self) -> float:
        """s of the paper formulation's q(z_e^0 | x)."""
        return self.settings.encoder_scale

    def chain_network(self) -> nn.Module:
        """The chain's network (a labelled variant's takes the labels it is bound to)."""
        return self.denoiser

    def chain_denoiser(self, network: nn.Module | None = None) -> nn.Module:
        """eps_theta as the backward chain uses it: tight, the :class:`CodeHead` on the
        network; paper, the network itself. ``network``: the chain's network (default
        :meth:`chain_network`; a labelled variant passes the one bound to its labels)."""
        network = self.chain_network() if network is None else network
        if not self.settings.tight:
            return network
        return CodeHead(self.schedule, network, self.codebook, self.settings.self_condition)

    def draw_chain(
        self,
        z_T: torch.Tensor,
        sampler: SamplerSettings = ANCESTRAL,
        network: nn.Module | None = None,
        **extra,
    ) -> torch.Tensor:
        """The backward chain from ``z_T: (B, d, *cells)`` by ``sampler``, to z^1 (tight) or
        z^0 (paper); ``network`` as in :meth:`chain_denoiser`; ``extra``: more keywords of
        :func:`~pbridge.samplers.reverse_sample`, e.g. ``known``, ``record`` or ``on_step``."""
        return reverse_sample(
            self.schedule,
            self.chain_denoiser(network),
            z_T,
            sampler,
            model_variance=self.settings.model_variance,
            to_time=1 if self.settings.tight else 0,
            **extra,
        )

    def prior(
        self, batch_size: int, network: nn.Module | None = None
    ) -> BridgeCodePrior | DiffusionPrior:
        """The random-step prior site, over codes (tight) or over z_e^0 (paper), in its
        training form: it draws by the ancestral chain and scores one step per item; an
        evaluation or a batch of draws sets its sampler and strata with
        :func:`~pbridge.bridge_prior.prior_options`. ``network`` as in :meth:`chain_denoiser`."""
        settings, denoiser = self.settings, self.chain_denoiser(network)

        def draw(
            z_T: torch.Tensor, sampler: SamplerSettings, on_step: OnStep | None = None
        ) -> torch.Tensor:
            return self.draw_chain(z_T, sampler, network, on_step=on_step)

        if settings.tight:
            tracker = self.step_costs
            return BridgeCodePrior(
                denoiser,
                batch_size,
                self.latent_shape,
                draw=draw,
                proposal=None if tracker is None else tracker.proposal(),
                tracker=tracker,
                aux_weight=settings.readout_aux,
            )
        return DiffusionPrior(
            self.schedule,
            denoiser,
            self.latent_shape,
            batch_size,
            draw=draw,
            model_variance=settings.model_variance,
            proposal=self.t_proposal,
            denoiser_loss=settings.denoiser_loss,
        )

    def state_logits(
        self, z: torch.Tensor, t: int, network: nn.Module | None = None
    ) -> torch.Tensor:
        """Logits ``(B, *cells, K)`` of the discrete state z_q^t attached to ``z = z^t``:
        tight, the head's p_theta(z_q^t | z^t) (t >= 1); paper, the kernel
        -||z^t - e_k||^2 / tau_p. ``network`` as in :meth:`chain_denoiser`."""
        if self.settings.tight:
            steps = torch.full((z.shape[0],), max(t, 1), dtype=torch.long, device=z.device)
            return self.chain_denoiser(network).logits(z, steps)
        return code_logits(z, self.codebook(), self.settings.tau_p)

    def readout_logits(self, z: torch.Tensor, network: nn.Module | None = None) -> torch.Tensor:
        """Logits of z_q^0 given the chain's end ``z``: z^1 (tight) or z_e^0 (paper)."""
        return self.state_logits(z, 1 if self.settings.tight else 0, network)

    @torch.no_grad()
    def chain_states(
        self,
        z_T: torch.Tensor,
        times: tuple[int, ...],
        network: nn.Module | None = None,
        on_step: OnStep | None = None,
    ) -> dict[int, torch.Tensor]:
        """``{t: z^t}`` of one T-step ancestral backward chain from ``z_T`` at ``times`` (for
        plots). Tight: the chain ends at z^1 and time 0 holds the code vectors of the
        read-out's most probable codes. ``network`` as in :meth:`chain_denoiser`;
        ``on_step(done, total)`` is told the chain's progress."""
        kept = {self.schedule.num_steps: z_T} if self.schedule.num_steps in times else {}

        def record(t: int, z: torch.Tensor) -> None:
            if t in times:
                kept[t] = z

        end = self.draw_chain(z_T, ANCESTRAL, network, record=record, on_step=on_step)
        if self.settings.tight and 0 in times:
            kept[0] = gather_codes(self.readout_logits(end, network).argmax(-1), self.codebook())
        return kept

    @torch.no_grad()
    def inpaint(
        self,
        indices: torch.Tensor,
        known: torch.Tensor,
        sampler: SamplerSettings = ANCESTRAL,
        network: nn.Module | None = None,
        on_step: OnStep | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Complete the codes ``indices: (B, *cells)`` where ``known`` (bool, same shape) is
        False: the known cells' z^0 (tight: e_k; paper: e_k + s eps, s the encoder scale) are
        held by replacement along the backward chain drawn by ``sampler`` (:meth:`draw_chain`),
        the hidden cells' codes drawn from the read-out (:meth:`readout_logits`). Returns the
        completed indices and the read-out probabilities at every cell, ``(B, *cells, K)``
        (one-hot at known cells). ``network`` as in :meth:`chain_denoiser`;
        ``on_step(done, total)`` is told the chain's progress."""
        codes = self.codebook()
        z0_known = gather_codes(indices, codes)
        if not self.settings.tight:
            z0_known = z0_known + self.encoder_scale() * torch.randn_like(z0_known)
        z_T = self.schedule.stationary_draw(z0_known)
        held = (z0_known, known.unsqueeze(1))
        z = self.draw_chain(z_T, sampler, network, known=held, on_step=on_step)
        probs = self.readout_logits(z, network).softmax(-1)
        drawn = torch.distributions.Categorical(probs=probs).sample()
        one_hot = F.one_hot(indices, codes.shape[0]).to(probs)
        return (
            torch.where(known, indices, drawn),
            torch.where(known[..., None], one_hot, probs),
        )

    @torch.no_grad()
    def code_bound_per_cell(
        self, indices: torch.Tensor, strata: int = 100, network: nn.Module | None = None
    ) -> torch.Tensor:
        """Every cell's share of the tight bound (13) on log p(k) of the codes ``indices: (B,
        *cells)``, ``(B, *cells)`` nats, one draw with the read-out and ``strata`` stratified
        steps per item; the shares add up to the bound. Summed over hidden cells M, a lower
        bound on log p(k_M | k_O) of the model that :meth:`inpaint` samples with the ancestral
        chain (docs/maths.md s. 7). Tight formulation only. ``network`` as in
        :meth:`chain_denoiser`."""
        if not self.settings.tight:
            raise ValueError("per-cell bounds are those of the tight formulation")
        prior = self.prior(indices.shape[0], network).with_options(strata=strata)
        return prior.cell_log_prob(gather_codes(indices, self.codebook()))

    # ------------------------------------------------------------------ Pyro programs
    def _chain_end_sites(
        self, batch_size: int, like: torch.Tensor, network: nn.Module
    ) -> torch.Tensor:
        """Full chain: sites z_e_T .. z_e_1 (tight) or .. z_e_0 (paper); returns the end."""
        return chain_model_sites(
            self.schedule,
            self.chain_denoiser(network),
            torch.Size(self.latent_shape),
            batch_size,
            self.settings.model_variance,
            like=like,
            last=1 if self.settings.tight else 0,
        )

    def model(self, x: torch.Tensor) -> None:
        self.model_sites(x, self.chain_network())

    def model_sites(self, x: torch.Tensor, network: nn.Module) -> None:
        """The model's sites for data ``x`` with the chain's network ``network`` (a labelled
        variant's model draws its labels, then calls this with the network bound to them)."""
        pyro.module("bridge_vqvae", self)
        settings, codes = self.settings, self.codebook()
        with pyro.plate("data", x.shape[0]):
            if settings.estimator == "full_chain":
                z_end = self._chain_end_sites(x.shape[0], codes, network)
                readout = self.readout_logits(z_end, network)
                z_q0 = pyro.sample("z_q_0", CodeVector(readout, codes, conditional=True))
            elif settings.tight:
                z_q0 = pyro.sample("z_q_0", self.prior(x.shape[0], network))
            else:
                z_e0 = pyro.sample("z_e_0", self.prior(x.shape[0], network))
                logits = self.readout_logits(z_e0, network)
                z_q0 = pyro.sample("z_q_0", CodeVector(logits, codes, conditional=True))
            pyro.sample("x", self.decoder(z_q0), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        self.check_data(x)
        pyro.module("bridge_vqvae", self)
        settings, codes = self.settings, self.codebook()
        f = self.encode(x)
        n = len(self.latent_shape)
        with pyro.plate("data", x.shape[0]):
            if settings.tight:
                z_0 = nearest_code_sites(f, codes, settings.commitment)
            else:
                z_0 = pyro.sample("z_e_0", dist.Normal(f, self.encoder_scale()).to_event(n))
                pyro.sample(
                    "z_q_0",
                    CodeVector(
                        code_logits(z_0, codes, settings.tau_q),
                        codes,
                        straight_through=z_0,
                        gradient=settings.gradient,
                        temperature=settings.gumbel_temperature,
                        conditional=True,
                    ),
                )
            if settings.estimator == "full_chain":
                chain_guide_sites(self.schedule, z_0)
