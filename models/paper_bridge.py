"""The Diffusion-bridge VQ-VAE as the paper writes it (Cohen et al. 2022, s. 3-5; docs/maths.md
s. 3-5), kept beside the tight formulation so that the comparison can be rerun
(``--set bridge.formulation=paper``; docs/results.md).

Model::

    z_e^0 ~ p_theta(z_e^0)                     (the bridge: full chain or random-step site,
                                                :class:`DiffusionPrior`, an eps head)
    z_q^0 | z_e^0 ~ Cat(softmax(-||z_e^0 - e_k||^2 / tau_p))   per cell
    x | z_q^0 ~ decoder(z_q^0)

Guide: z_e^0 | x ~ N(f_phi(x), s^2 I),  z_q^0 | z_e^0 ~ Cat(softmax(-||z_e^0 - e_k||^2 / tau_q)),
then (full chain) the forward kernels from z_e^0.

The chain runs to z^0 on the encodings, not to z^1 on the codes; the prior's step t is drawn
from a fixed proposal (:func:`~pbridge.bridge_prior.importance_proposal`), not a tracked one.
Everything else (the decoder's site, inpainting, the chain's states) is the tight class's.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pbridge.bridge_prior import DiffusionPrior, importance_proposal
from pbridge.code_distribution import CodeVector
from pbridge.codebook import code_logits
from pbridge.config import BridgeSettings, PaperSettings

from .bridge_vqvae import DiffusionBridgeVQVAE

__all__ = ["PaperBridgeVQVAE"]


class PaperBridgeVQVAE(DiffusionBridgeVQVAE):
    """The paper's formulation (settings with ``formulation = "paper"``); arguments as
    :class:`~pbridge.models.bridge_vqvae.DiffusionBridgeVQVAE`, but the chain's network is
    eps_theta, ``((B, d, *cells), (B,)) -> (B, d, *cells)``."""

    formulation = "paper"
    chain_end = 0
    splits_bound_over_cells = False
    former_names = ("DiffusionBridgeVQVAE",)
    """The class name in the checkpoints of paper runs trained before this class existed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.step_costs = None  # q(t) is fixed, not tracked
        proposal = importance_proposal(self.schedule, self.model_variance)
        importance = self.settings.t_sampling == "importance"
        self.register_buffer("t_proposal", proposal if importance else None, persistent=False)

    @staticmethod
    def chain_channels(
        settings: BridgeSettings, latent_dim: int, num_codes: int
    ) -> tuple[int, int]:
        """eps_theta reads z^t and writes eps: d channels each."""
        return latent_dim, latent_dim

    @property
    def paper(self) -> PaperSettings:
        """This formulation's own settings, ``settings.paper``."""
        return self.settings.paper

    @property
    def model_variance(self) -> str:
        """The reverse kernel's variance (``paper.model_variance``: beta~ or beta)."""
        return self.paper.model_variance

    def encoder_scale(self) -> float:
        """s of q(z_e^0 | x)."""
        return self.paper.encoder_scale

    def chain_denoiser(self, network: nn.Module | None = None) -> nn.Module:
        """eps_theta: the chain's network itself."""
        return self.chain_network() if network is None else network

    def prior(self, batch_size: int, network: nn.Module | None = None) -> DiffusionPrior:
        """The random-step prior site over z_e^0 (its training form; see the tight class)."""
        return DiffusionPrior(
            self.schedule,
            self.chain_denoiser(network),
            self.latent_shape,
            batch_size,
            model_variance=self.model_variance,
            proposal=self.t_proposal,
            denoiser_loss=self.paper.denoiser_loss,
        )

    def state_logits(
        self, z: torch.Tensor, t: int, network: nn.Module | None = None
    ) -> torch.Tensor:
        """The kernel -||z^t - e_k||^2 / tau_p, ``(B, *cells, K)``, at every t."""
        return code_logits(z, self.codebook(), self.paper.tau_p)

    def known_start(self, indices: torch.Tensor) -> torch.Tensor:
        """e_k + s eps: a draw of the encoding of the known codes."""
        z0 = super().known_start(indices)
        return z0 + self.encoder_scale() * torch.randn_like(z0)

    def code_bound_per_cell(self, indices, strata=100, network=None) -> torch.Tensor:
        raise ValueError("per-cell bounds are those of the tight formulation")

    def prior_codes(self, batch_size: int, network: nn.Module) -> torch.Tensor:
        """z_e^0 (a random-step site or the end of the full chain), then z_q^0 | z_e^0."""
        if self.settings.estimator == "full_chain":
            z_e0 = self.chain_end_sites(batch_size, self.codebook(), network)
        else:
            z_e0 = pyro.sample("z_e_0", self.prior(batch_size, network))
        logits = self.readout_logits(z_e0, network)
        return pyro.sample("z_q_0", CodeVector(logits, self.codebook(), conditional=True))

    def guide_codes(self, f: torch.Tensor) -> torch.Tensor:
        """z_e^0 ~ N(f, s^2 I), then z_q^0 | z_e^0 by the kernel at tau_q (its gradient by
        straight-through or Gumbel); returns z_e^0, the chain's start."""
        paper, codes = self.paper, self.codebook()
        scale = self.encoder_scale()
        z_e0 = pyro.sample("z_e_0", dist.Normal(f, scale).to_event(len(self.latent_shape)))
        pyro.sample(
            "z_q_0",
            CodeVector(
                code_logits(z_e0, codes, paper.tau_q),
                codes,
                straight_through=z_e0,
                gradient=paper.gradient,
                temperature=paper.gumbel_temperature,
                conditional=True,
            ),
        )
        return z_e0
