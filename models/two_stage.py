"""The two-stage variant (all the authors' public code runs): a VQ-VAE with a uniform prior is
trained first; then the bridge prior is fitted on its frozen encodings.

Stage two is the same Pyro model/guide pair as the end-to-end variant, built on the VQ-VAE's
encoder, decoder and codebook with their parameters frozen and the modules in eval mode, so SVI
on the same ELBO moves only the denoiser.
"""

from __future__ import annotations

from torch import nn

from pbridge.config import BridgeSettings
from pbridge.ou_bridge import OUSchedule

from .bridge_vqvae import DiffusionBridgeVQVAE
from .formulations import bridge_class
from .vqvae import VQVAE

__all__ = ["bridge_on_frozen_vqvae"]


def bridge_on_frozen_vqvae(
    vqvae: VQVAE, denoiser: nn.Module, schedule: OUSchedule, settings: BridgeSettings
) -> DiffusionBridgeVQVAE:
    """Stage two: freeze ``vqvae`` (no gradients, eval mode) and put a bridge prior on it."""
    if settings.spherical_radius != vqvae.spherical_radius:
        raise ValueError(
            f"the bridge's spherical_radius {settings.spherical_radius} differs from the "
            f"VQ-VAE's {vqvae.spherical_radius}"
        )
    vqvae.requires_grad_(False)
    stage_two = bridge_class(settings)(
        vqvae.encoder,
        vqvae.decoder,
        denoiser,
        vqvae.codebook,
        schedule,
        vqvae.data_shape,
        vqvae.latent_shape,
        settings,
    )
    # Eval mode everywhere but the denoiser: the frozen batch-norm statistics stay fixed, and
    # pyro.module reads the variant's eval mode as "frozen parameters are meant to be".
    stage_two.train(False)
    stage_two.denoiser.train(True)
    return stage_two
