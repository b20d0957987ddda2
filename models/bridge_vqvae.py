"""The Diffusion-bridge VQ-VAE, end to end, as a Pyro model/guide pair: the tight formulation
(docs/maths.md s. 6). The paper's formulation as written is its own class,
:class:`~pbridge.models.paper_bridge.PaperBridgeVQVAE`.

Model::

    z_q^0 ~ p_theta(z_q^0)    the bridge over code grids: z^T ~ N(z*, sigma2 I), the backward
                              chain to z^1, the codes read out by the categorical head at t = 1
                              (random step: one site, :class:`BridgeCodePrior`; full chain:
                              sites z_e_T .. z_e_1 and z_q_0 | z_e_1)
    x | z_q^0 ~ decoder(z_q^0)

Guide: z_q^0 = e_k with k the nearest code to f_phi(x) (a point mass, straight-through to the
decoder, the VQ commitment/codebook surrogate), then (full chain) the forward kernels from e_k.
"""

from __future__ import annotations

import pyro
import torch
import torch.nn.functional as F
from torch import nn

from pbridge.autoencoder import CodebookAutoencoder, nearest_code_sites
from pbridge.bridge_prior import (
    BridgeCodePrior,
    StepCostTracker,
    chain_guide_sites,
    chain_model_sites,
)
from pbridge.code_distribution import CodeVector
from pbridge.code_head import CodeHead
from pbridge.codebook import Codebook, gather_codes
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
        denoiser: the chain's network h_theta, a :class:`~pbridge.code_head.ChainNetwork`:
            ``((B, 2d or d, *cells), (B,)) -> (B, K, *cells)`` (2d with self-conditioning).
        codebook: the K codes.
        schedule: the OU bridge.
        data_shape: the shape of one item x (without the batch dimension).
        latent_shape: ``(d, *cells)``.
        settings: :class:`BridgeSettings` with ``formulation = "tight"``.
    """

    formulation = "tight"
    chain_end = 1
    """The time the backward chain stops at: z^1, where the head reads the codes out."""
    splits_bound_over_cells = True
    """Whether the prior's bound is a sum of per-cell shares (:meth:`code_bound_per_cell`)."""
    model_variance = "beta_tilde"
    """The reverse kernel's variance sigma2 beta~_t (the tight bound is written for it)."""

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
        if settings.formulation != self.formulation:
            raise ValueError(
                f"{type(self).__name__} is the {self.formulation} formulation, got settings with "
                f"formulation={settings.formulation!r} (pbridge.models.formulations.bridge_class "
                "picks the class of a formulation)"
            )
        super().__init__(
            encoder, decoder, codebook, data_shape, latent_shape, settings.spherical_radius
        )
        self.denoiser = denoiser
        self.schedule, self.settings = schedule, settings
        importance = settings.t_sampling == "importance"
        self.step_costs = StepCostTracker(schedule.num_steps) if importance else None

    @staticmethod
    def chain_channels(
        settings: BridgeSettings, latent_dim: int, num_codes: int
    ) -> tuple[int, int]:
        """Channels the chain's network reads (z^t, and z0_hat with self-conditioning) and
        writes (K logit corrections)."""
        return (2 if settings.self_condition else 1) * latent_dim, num_codes

    def parameter_groups(self) -> list[dict]:
        """Adam's groups (:class:`~pbridge.variant.SplitsLearningRate`): the encoder and the
        codebook, which make the codes, at ``settings.codes_lr_scale`` times the learning rate
        of the rest (the decoder and the chain's network); one group when the scale is 1."""
        scale = self.settings.codes_lr_scale
        if scale == 1:
            return [{"params": list(self.parameters())}]
        codes = [*self.encoder.parameters(), *self.codebook.parameters()]
        ids = {id(p) for p in codes}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": rest}, {"params": codes, "lr_scale": scale}]

    # ------------------------------------------------------------------ building blocks
    def chain_network(self) -> nn.Module:
        """The chain's network (a labelled variant's takes the labels it is bound to)."""
        return self.denoiser

    def chain_denoiser(self, network: nn.Module | None = None) -> nn.Module:
        """eps_theta as the backward chain uses it: the :class:`CodeHead` on the network.
        ``network``: the chain's network (default :meth:`chain_network`; a labelled variant
        passes the one bound to its labels)."""
        network = self.chain_network() if network is None else network
        return CodeHead(self.schedule, network, self.codebook, self.settings.self_condition)

    def draw_chain(
        self,
        z_T: torch.Tensor,
        sampler: SamplerSettings = ANCESTRAL,
        network: nn.Module | None = None,
        **extra,
    ) -> torch.Tensor:
        """The backward chain from ``z_T: (B, d, *cells)`` by ``sampler``, to
        z^:attr:`chain_end`; ``network`` as in :meth:`chain_denoiser`; ``extra``: more keywords
        of :func:`~pbridge.samplers.reverse_sample`, e.g. ``known``, ``record`` or
        ``on_step``."""
        return reverse_sample(
            self.schedule,
            self.chain_denoiser(network),
            z_T,
            sampler,
            model_variance=self.model_variance,
            to_time=self.chain_end,
            **extra,
        )

    def prior(self, batch_size: int, network: nn.Module | None = None) -> BridgeCodePrior:
        """The random-step prior site over codes, in its training form: it draws by the
        ancestral chain and scores one step per item from the tracked proposal; an evaluation
        or a batch of draws sets its sampler and strata with
        :func:`~pbridge.bridge_prior.prior_options`. ``network`` as in :meth:`chain_denoiser`."""
        tracker = self.step_costs
        return BridgeCodePrior(
            self.chain_denoiser(network),
            batch_size,
            self.latent_shape,
            proposal=None if tracker is None else tracker.proposal(),
            tracker=tracker,
            aux_weight=self.settings.readout_aux,
        )

    def state_logits(
        self, z: torch.Tensor, t: int, network: nn.Module | None = None
    ) -> torch.Tensor:
        """Logits ``(B, *cells, K)`` of the discrete state z_q^t attached to ``z = z^t``: the
        head's p_theta(z_q^t | z^t) (t >= 1). ``network`` as in :meth:`chain_denoiser`."""
        steps = torch.full((z.shape[0],), max(t, 1), dtype=torch.long, device=z.device)
        return self.chain_denoiser(network).logits(z, steps)

    def readout_logits(self, z: torch.Tensor, network: nn.Module | None = None) -> torch.Tensor:
        """Logits of z_q^0 given the chain's end ``z`` (z^:attr:`chain_end`)."""
        return self.state_logits(z, self.chain_end, network)

    @torch.no_grad()
    def chain_states(
        self,
        z_T: torch.Tensor,
        times: tuple[int, ...],
        network: nn.Module | None = None,
        on_step: OnStep | None = None,
    ) -> dict[int, torch.Tensor]:
        """``{t: z^t}`` of one T-step ancestral backward chain from ``z_T`` at ``times`` (for
        plots). A chain that ends at z^1 holds at time 0 the code vectors of the read-out's
        most probable codes. ``network`` as in :meth:`chain_denoiser`; ``on_step(done,
        total)`` is told the chain's progress."""
        kept = {self.schedule.num_steps: z_T} if self.schedule.num_steps in times else {}

        def record(t: int, z: torch.Tensor) -> None:
            if t in times:
                kept[t] = z

        end = self.draw_chain(z_T, ANCESTRAL, network, record=record, on_step=on_step)
        if self.chain_end == 1 and 0 in times:
            kept[0] = gather_codes(self.readout_logits(end, network).argmax(-1), self.codebook())
        return kept

    def known_start(self, indices: torch.Tensor) -> torch.Tensor:
        """The z^0 of known codes ``indices: (B, *cells)`` that inpainting holds: e_k."""
        return gather_codes(indices, self.codebook())

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
        False: the known cells' z^0 (:meth:`known_start`) are held by replacement along the
        backward chain drawn by ``sampler`` (:meth:`draw_chain`), the hidden cells' codes drawn
        from the read-out (:meth:`readout_logits`). Returns the completed indices and the
        read-out probabilities at every cell, ``(B, *cells, K)`` (one-hot at known cells).
        ``network`` as in :meth:`chain_denoiser`; ``on_step(done, total)`` is told the
        chain's progress."""
        z0_known = self.known_start(indices)
        z_T = self.schedule.stationary_draw(z0_known)
        held = (z0_known, known.unsqueeze(1))
        z = self.draw_chain(z_T, sampler, network, known=held, on_step=on_step)
        probs = self.readout_logits(z, network).softmax(-1)
        drawn = torch.distributions.Categorical(probs=probs).sample()
        one_hot = F.one_hot(indices, self.codebook.num_codes).to(probs)
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
        chain (docs/maths.md s. 7). ``network`` as in :meth:`chain_denoiser`."""
        prior = self.prior(indices.shape[0], network).with_options(strata=strata)
        return prior.cell_log_prob(gather_codes(indices, self.codebook()))

    # ------------------------------------------------------------------ Pyro programs
    def chain_end_sites(self, batch_size: int, like: torch.Tensor, network: nn.Module):
        """Full chain: sites z_e_T .. z_e_:attr:`chain_end`; returns the end."""
        return chain_model_sites(
            self.schedule,
            self.chain_denoiser(network),
            torch.Size(self.latent_shape),
            batch_size,
            self.model_variance,
            like=like,
            last=self.chain_end,
        )

    def prior_codes(self, batch_size: int, network: nn.Module) -> torch.Tensor:
        """The model's sites of the codes z_q^0 (inside the data plate): one random-step site,
        or the full chain to z^1 and the read-out there. Returns z_q^0."""
        codes = self.codebook()
        if self.settings.estimator == "full_chain":
            z_1 = self.chain_end_sites(batch_size, codes, network)
            readout = self.readout_logits(z_1, network)
            return pyro.sample("z_q_0", CodeVector(readout, codes, conditional=True))
        return pyro.sample("z_q_0", self.prior(batch_size, network))

    def guide_codes(self, f: torch.Tensor) -> torch.Tensor:
        """The guide's sites of the codes given the encodings ``f`` (inside the data plate):
        the nearest code, a point mass. Returns the chain's start z^0 = e_k."""
        return nearest_code_sites(f, self.codebook(), self.settings.commitment)

    def model(self, x: torch.Tensor) -> None:
        self.model_sites(x, self.chain_network())

    def model_sites(self, x: torch.Tensor, network: nn.Module) -> None:
        """The model's sites for data ``x`` with the chain's network ``network`` (a labelled
        variant's model draws its labels, then calls this with the network bound to them)."""
        pyro.module("bridge_vqvae", self)
        with pyro.plate("data", x.shape[0]):
            z_q0 = self.prior_codes(x.shape[0], network)
            pyro.sample("x", self.decoder(z_q0), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        self.check_data(x)
        pyro.module("bridge_vqvae", self)
        f = self.encode(x)
        with pyro.plate("data", x.shape[0]):
            z_0 = self.guide_codes(f)
            if self.settings.estimator == "full_chain":
                chain_guide_sites(self.schedule, z_0)
