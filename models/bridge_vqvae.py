"""The Diffusion-bridge VQ-VAE, end to end, as a Pyro model/guide pair (docs/maths.md, s. 4-5).

Model::

    z_e^0 ~ p_theta(z_e^0)                     (the bridge: full chain or random-step site)
    z_q^0 | z_e^0 ~ Cat(softmax(-||z_e^0 - e_k||^2 / tau_p))   per cell
    x | z_q^0 ~ decoder(z_q^0)

Guide, ``chain_on="encoding"`` (the paper's)::

    z_e^0 | x ~ N(f_phi(x), s^2 I),  z_q^0 | z_e^0 ~ Cat(softmax(-||z_e^0 - e_k||^2 / tau_q))

Guide, ``chain_on="code"`` ("diffuse the code")::

    z_q^0 = e_k with k the nearest code to f_phi(x),  z_e^0 | k ~ N(e_k, s^2 I)

plus, in the full-chain estimator, the forward OU kernels z_e^t | z_e^{t-1} as sites.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pbridge.autoencoder import CodebookAutoencoder, nearest_code_sites
from pbridge.bridge_prior import (
    BallProjectedDenoiser,
    DiffusionPrior,
    chain_guide_sites,
    chain_model_sites,
    importance_proposal,
)
from pbridge.code_distribution import CodeVector
from pbridge.codebook import Codebook, code_logits, gather_codes
from pbridge.ou_bridge import OUSchedule
from pbridge.samplers import reverse_sample

__all__ = ["BridgeSettings", "DiffusionBridgeVQVAE"]


@dataclass(frozen=True)
class BridgeSettings:
    """The choices of the bridge VQ-VAE that are not network sizes.

    Attributes:
        tau_p: model temperature of p(z_q^0 | z_e^0); sqrt(tau_p) ~ the code spacing.
        tau_q: guide temperature of q(z_q^0 | z_e^0); 0 = nearest code (point mass). With
            ``chain_on="code"`` the guide always takes the nearest code.
        encoder_scale: s of q(z_e^0 | x) (its initial value when learned).
        learn_encoder_scale: learn s (one value per latent dimension, bounded below by
            ``encoder_scale_min``) or keep it fixed.
        chain_on: ``"encoding"`` (chain on f_phi(x) + noise) or ``"code"`` (on e_k + noise).
        estimator: ``"random_step"`` (one t per item, O(1) in T) or ``"full_chain"`` (T sites).
        t_sampling: ``"uniform"`` or ``"importance"`` (q(t) = 0.5 w_t / sum w + 0.5 / T).
        denoiser_loss: ``"elbo"`` or ``"simple"`` (see :class:`DiffusionPrior`).
        model_variance: ``"beta_tilde"`` or ``"beta"``.
        gradient: ``"straight_through"`` or ``"gumbel"`` path through z_q^0.
        gumbel_temperature: relaxation temperature of the ``"gumbel"`` path.
        spherical_radius: radius of the sphere holding codes and encodings; ``None`` = free.
        commitment: weight of the VQ commitment + codebook surrogate ||f - e_k||^2 used by
            ``chain_on="code"`` (not part of the bound).
        z0_ball: ``None``, or project the denoiser's z0_hat onto the ball around z* of radius
            ``z0_ball * max_k ||e_k - z*||`` (:class:`BallProjectedDenoiser`), in training and
            sampling alike.
    """

    tau_p: float = 0.4
    tau_q: float = 0.0
    encoder_scale: float = 0.012
    learn_encoder_scale: bool = False
    encoder_scale_min: float = 1e-3
    chain_on: str = "encoding"
    estimator: str = "random_step"
    t_sampling: str = "uniform"
    denoiser_loss: str = "simple"
    model_variance: str = "beta_tilde"
    gradient: str = "straight_through"
    gumbel_temperature: float = 0.5
    spherical_radius: float | None = 1.0
    commitment: float = 0.25
    z0_ball: float | None = None

    def __post_init__(self) -> None:
        choices = {
            "chain_on": ("encoding", "code"),
            "estimator": ("random_step", "full_chain"),
            "t_sampling": ("uniform", "importance"),
            "denoiser_loss": ("elbo", "simple"),
            "model_variance": ("beta_tilde", "beta"),
            "gradient": ("straight_through", "gumbel"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.tau_p <= 0:
            raise ValueError(f"tau_p must be > 0, got {self.tau_p}")
        if self.tau_q < 0:
            raise ValueError(f"tau_q must be >= 0, got {self.tau_q}")
        if self.gradient == "gumbel" and self.tau_q == 0:
            raise ValueError("the gumbel gradient needs tau_q > 0 (a point mass has no relaxation)")
        if self.z0_ball is not None and self.z0_ball <= 0:
            raise ValueError(f"z0_ball must be > 0 or None, got {self.z0_ball}")
        if not 0 < self.encoder_scale_min < self.encoder_scale:
            raise ValueError(
                f"need 0 < encoder_scale_min < encoder_scale, got {self.encoder_scale_min} "
                f"and {self.encoder_scale}"
            )


class DiffusionBridgeVQVAE(CodebookAutoencoder):
    """Encoder, decoder, codebook and bridge prior trained together on one ELBO.

    ``surrogate_sites`` (from :class:`CodebookAutoencoder`) names the guide's ``pyro.factor``
    sites that are training surrogates, not terms of the bound (left out when the ELBO is
    reported).

    Args:
        encoder: ``x -> (B, d, *cells)``.
        decoder: ``z_q: (B, d, *cells) ->`` a distribution over x with batch shape ``(B,)``.
        denoiser: eps_theta ``((B, d, *cells), (B,)) -> (B, d, *cells)``.
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
        s = settings
        # s = s_min + softplus(raw), one value per latent dimension (shared over cells).
        raw = torch.tensor(s.encoder_scale - s.encoder_scale_min).expm1().log()
        raw = raw.expand(latent_shape[0]).clone()
        if s.learn_encoder_scale:
            self.encoder_scale_raw = nn.Parameter(raw)
        else:
            self.register_buffer("encoder_scale_raw", raw)
        proposal = (
            importance_proposal(schedule, s.model_variance)
            if s.t_sampling == "importance"
            else None
        )
        self.register_buffer("t_proposal", proposal, persistent=False)
        self.steps_per_item = 1
        self.sampler_options: dict = {"sampler": "ancestral", "steps": None}

    # ------------------------------------------------------------------ building blocks
    def encoder_scale(self) -> torch.Tensor:
        """s, shaped ``(d, 1, ..., 1)`` to broadcast over cells."""
        s = self.settings.encoder_scale_min + F.softplus(self.encoder_scale_raw)
        return s.view(-1, *([1] * (len(self.latent_shape) - 1)))

    @contextmanager
    def stratified_steps(self, steps_per_item: int) -> Iterator[None]:
        """Within the block, the random-step estimator uses ``steps_per_item`` stratified steps
        per item with the uniform proposal (a lower-variance bound for evaluation)."""
        saved = self.steps_per_item, self.t_proposal
        self.steps_per_item, self.t_proposal = steps_per_item, None
        try:
            yield
        finally:
            self.steps_per_item, self.t_proposal = saved

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

    def _draw(
        self, denoiser: nn.Module | None = None, **extra
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """``z_T -> z^0`` by the current sampler (``extra``: more keywords, e.g. ``known``)."""
        return partial(
            reverse_sample,
            self.schedule,
            self.chain_denoiser() if denoiser is None else denoiser,
            model_variance=self.settings.model_variance,
            **self.sampler_options,
            **extra,
        )

    def chain_denoiser(self) -> nn.Module:
        """eps_theta as the backward chain uses it: the denoiser, ball-projected if
        ``settings.z0_ball`` is set (radius from the current codes, not differentiated)."""
        if self.settings.z0_ball is None:
            return self.denoiser
        spread = (self.codebook().detach() - self.schedule.z_star).norm(dim=1).max()
        return BallProjectedDenoiser(self.schedule, self.denoiser, self.settings.z0_ball * spread)

    def prior(self, batch_size: int) -> DiffusionPrior:
        """p_theta(z_e^0) with the random-step ``log_prob``."""
        s, denoiser = self.settings, self.chain_denoiser()
        return DiffusionPrior(
            self.schedule,
            denoiser,
            self.latent_shape,
            batch_size,
            model_variance=s.model_variance,
            proposal=self.t_proposal,
            denoiser_loss=s.denoiser_loss,
            steps_per_item=self.steps_per_item,
            draw=self._draw(denoiser),
        )

    @torch.no_grad()
    def inpaint(
        self, indices: torch.Tensor, known: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Complete the codes ``indices: (B, *cells)`` where ``known`` (bool, same shape) is
        False: the known cells' z_e^0 = e_k + s eps are held by replacement along the backward
        chain (:func:`~pbridge.samplers.reverse_sample`, with the options of :meth:`sampling`),
        the hidden cells' codes drawn from p(z_q^0 | z_e^0). Returns the completed indices and
        p(z_q^0 = k | z_e^0) at every cell, ``(B, *cells, K)`` (one-hot at known cells)."""
        codes = self.codebook()
        z0_known = gather_codes(indices, codes)
        z0_known = z0_known + self.encoder_scale() * torch.randn_like(z0_known)
        z_T = self.schedule.z_star + math.sqrt(self.schedule.sigma2) * torch.randn_like(z0_known)
        z0 = self._draw(known=(z0_known, known.unsqueeze(1)))(z_T)
        probs = code_logits(z0, codes, self.settings.tau_p).softmax(-1)
        drawn = torch.distributions.Categorical(probs=probs).sample()
        one_hot = F.one_hot(indices, codes.shape[0]).to(probs)
        return (
            torch.where(known, indices, drawn),
            torch.where(known[..., None], one_hot, probs),
        )

    # ------------------------------------------------------------------ Pyro programs
    def model(self, x: torch.Tensor) -> None:
        pyro.module("bridge_vqvae", self)
        s, codes = self.settings, self.codebook()
        with pyro.plate("data", x.shape[0]):
            if s.estimator == "full_chain":
                z_e0 = chain_model_sites(
                    self.schedule,
                    self.chain_denoiser(),
                    torch.Size(self.latent_shape),
                    x.shape[0],
                    s.model_variance,
                    like=codes,
                )
            else:
                z_e0 = pyro.sample("z_e_0", self.prior(x.shape[0]))
            z_q0 = pyro.sample("z_q_0", CodeVector(code_logits(z_e0, codes, s.tau_p), codes))
            pyro.sample("x", self.decoder(z_q0), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        self.check_data(x)
        pyro.module("bridge_vqvae", self)
        s, codes = self.settings, self.codebook()
        f = self.encode(x)
        n = len(self.latent_shape)
        with pyro.plate("data", x.shape[0]):
            if s.chain_on == "encoding":
                z_e0 = pyro.sample("z_e_0", dist.Normal(f, self.encoder_scale()).to_event(n))
                pyro.sample(
                    "z_q_0",
                    CodeVector(
                        code_logits(z_e0, codes, s.tau_q),
                        codes,
                        straight_through=z_e0,
                        gradient=s.gradient,
                        temperature=s.gumbel_temperature,
                    ),
                )
            else:
                e_k = nearest_code_sites(f, codes, s.commitment)
                z_e0 = pyro.sample("z_e_0", dist.Normal(e_k, self.encoder_scale()).to_event(n))
            if s.estimator == "full_chain":
                chain_guide_sites(self.schedule, z_e0)
