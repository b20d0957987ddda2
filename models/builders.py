"""The builders of the built-in variants from their configurations (:mod:`pbridge.config`), and
the registry of the image variants: the one place that maps ``ImageConfig.variant`` to how the
variant is built and trained (:data:`IMAGE_VARIANTS`; the command line's ``--variant`` choices
and :func:`~pbridge.inference.images.run_images` read it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from pbridge.codebook import Codebook, EMACodebook
from pbridge.config import ImageConfig, ToyConfig
from pbridge.data import data_set
from pbridge.image_networks import ResNetDecoder, ResNetEncoder, UNetDenoiser
from pbridge.likelihoods import DiscretizedLogisticDecoder
from pbridge.networks import (
    NormalDecoder,
    PointwiseMLP,
    ResidualMLPDenoiser,
    ResidualPointwiseMLP,
)
from pbridge.ou_bridge import image_schedule, toy_schedule
from pbridge.pixelcnn import GatedPixelCNN

from .bridge_vqvae import DiffusionBridgeVQVAE
from .formulations import bridge_class
from .pixelcnn_prior import pixelcnn_on_frozen_vqvae
from .two_stage import bridge_on_frozen_vqvae
from .vqvae import VQVAE

__all__ = [
    "ImageVariant",
    "IMAGE_VARIANTS",
    "image_variant",
    "build_toy_model",
    "build_image_model",
    "build_image_bridge",
    "build_image_vqvae",
    "build_image_denoiser",
    "build_chain_network",
    "build_image_pixelcnn",
]


def build_chain_network(
    latent_dim: int,
    num_codes: int,
    cells: tuple[int, ...],
    self_condition: bool = True,
    width: int = 128,
    blocks: int = 2,
) -> nn.Module:
    """A network that keeps the :class:`~pbridge.code_head.ChainNetwork` contract: h_theta for
    codes of dimension ``latent_dim`` on ``cells``, K = ``num_codes`` outputs per cell, its
    output layer at zero. A grid of two dimensions gets the U-Net of the image variants
    (``width`` channels, ``blocks`` residual blocks per level, two levels); any other shape the
    residual MLP on the flattened grid (``width`` units, ``blocks`` blocks)."""
    channels = 2 * latent_dim if self_condition else latent_dim
    if len(cells) == 2:
        return UNetDenoiser(channels, width, (1, 2), blocks, out_channels=num_codes)
    return ResidualMLPDenoiser((channels, *cells), width, blocks, out_shape=(num_codes, *cells))


def build_toy_model(config: ToyConfig) -> DiffusionBridgeVQVAE:
    """The end-to-end bridge VQ-VAE for the toy, with latents ``(d, length)``."""
    d, length = config.latent_dim, config.length
    kind = bridge_class(config.bridge)
    chain_in, chain_out = kind.chain_channels(config.bridge, d, config.num_codes)
    return kind(
        encoder=ResidualPointwiseMLP(2, config.hidden)
        if d == 2
        else PointwiseMLP(2, d, config.hidden),
        decoder=NormalDecoder(PointwiseMLP(d, 2, config.hidden), config.noise, event_dims=2),
        denoiser=ResidualMLPDenoiser(
            (chain_in, length),
            config.denoiser_width,
            config.denoiser_blocks,
            out_shape=(chain_out, length),
        ),
        codebook=Codebook(config.num_codes, d, radius=config.bridge.spherical_radius),
        schedule=toy_schedule(config.num_steps, config.delta),
        data_shape=(2, length),
        latent_shape=(d, length),
        settings=config.bridge,
    )


def build_image_vqvae(config: ImageConfig) -> VQVAE:
    """The VQ-VAE (uniform prior) with the image networks of ``config`` (stage one)."""
    channels, height, width = data_set(config.dataset).shape
    k, d = config.downsamples, config.latent_dim
    kind = EMACodebook if config.vqvae_codebook == "ema" else Codebook
    codebook = kind(
        config.num_codes,
        d,
        radius=config.bridge.spherical_radius,
        restart_below=config.restart_dead_codes,
    )
    return VQVAE(
        encoder=ResNetEncoder(channels, d, k),
        decoder=DiscretizedLogisticDecoder(ResNetDecoder(d, 2 * channels, k)),
        codebook=codebook,
        data_shape=(channels, height, width),
        latent_shape=(d, height // 2**k, width // 2**k),
        spherical_radius=config.bridge.spherical_radius,
        commitment=config.bridge.commitment,
    )


def build_image_pixelcnn(config: ImageConfig) -> GatedPixelCNN:
    return GatedPixelCNN(config.num_codes, config.pixelcnn_channels, config.pixelcnn_layers)


def build_image_denoiser(config: ImageConfig) -> UNetDenoiser:
    """The chain's U-Net: h_theta with K outputs (tight) or eps_theta (paper)."""
    chain_in, chain_out = bridge_class(config.bridge).chain_channels(
        config.bridge, config.latent_dim, config.num_codes
    )
    return UNetDenoiser(
        chain_in, config.unet_width, config.unet_mults, config.unet_blocks, out_channels=chain_out
    )


def build_image_bridge(config: ImageConfig, vqvae: VQVAE | None = None) -> DiffusionBridgeVQVAE:
    """The end-to-end bridge VQ-VAE for images: the encoder, decoder and codebook of ``vqvae``
    (default: a new :func:`build_image_vqvae`), trained with them, the U-Net denoiser and the
    DDPM-equivalent OU schedule."""
    vq = build_image_vqvae(config) if vqvae is None else vqvae
    return bridge_class(config.bridge)(
        encoder=vq.encoder,
        decoder=vq.decoder,
        denoiser=build_image_denoiser(config),
        codebook=vq.codebook,
        schedule=image_schedule(config.num_steps),
        data_shape=vq.data_shape,
        latent_shape=vq.latent_shape,
        settings=config.bridge,
    )


def _bridge_on_vqvae(config: ImageConfig, vqvae: VQVAE) -> DiffusionBridgeVQVAE:
    return bridge_on_frozen_vqvae(
        vqvae, build_image_denoiser(config), image_schedule(config.num_steps), config.bridge
    )


def _pixelcnn_on_vqvae(config: ImageConfig, vqvae: VQVAE) -> nn.Module:
    return pixelcnn_on_frozen_vqvae(vqvae, build_image_pixelcnn(config))


def _vqvae_alone(config: ImageConfig, vqvae: VQVAE) -> VQVAE:
    return vqvae


@dataclass(frozen=True)
class ImageVariant:
    """An entry of :data:`IMAGE_VARIANTS`. Every image variant is built on the image VQ-VAE of
    its config (:func:`build_image_vqvae`: encoder, decoder, codebook).

    Attributes:
        summary: what it is, one line (the command line's help).
        on_vqvae: ``(config, vqvae) -> variant``: the variant on that VQ-VAE.
        pretrains_vqvae: trained in two stages when ``config.vqvae_steps > 0``: the VQ-VAE alone
            for ``config.vqvae_steps`` steps (checkpoint ``vqvae.pt``), then ``on_vqvae`` of it
            for ``config.train.steps`` steps (two-stage and pixelcnn freeze it; end-to-end
            trains it on with the prior, on the joint ELBO: the warm start, docs/training.md).
            Otherwise one stage of ``config.train.steps``.
    """

    summary: str
    on_vqvae: Callable[[ImageConfig, VQVAE], nn.Module]
    pretrains_vqvae: bool = False

    def build(self, config: ImageConfig) -> nn.Module:
        """The variant of ``config``, untrained (to train it in one stage, or to load a run)."""
        return self.on_vqvae(config, build_image_vqvae(config))


IMAGE_VARIANTS: dict[str, ImageVariant] = {
    "end-to-end": ImageVariant(
        "the joint model: encoder, decoder, codebook and bridge prior on one ELBO, after a "
        "VQ-VAE warm start",
        build_image_bridge,
        True,
    ),
    "two-stage": ImageVariant(
        "a VQ-VAE, then the bridge on its frozen encodings", _bridge_on_vqvae, True
    ),
    "pixelcnn": ImageVariant(
        "a VQ-VAE, then a PixelCNN prior on its frozen codes (the baseline)",
        _pixelcnn_on_vqvae,
        True,
    ),
    "vqvae": ImageVariant("the VQ-VAE alone (uniform prior)", _vqvae_alone),
}
"""The image variants by the name ``ImageConfig.variant`` gives them."""


def image_variant(name: str) -> ImageVariant:
    """The registry's entry ``name``; an unknown name is a ``ValueError`` naming the choices."""
    if name not in IMAGE_VARIANTS:
        raise ValueError(f"unknown variant {name!r}; expected one of {', '.join(IMAGE_VARIANTS)}")
    return IMAGE_VARIANTS[name]


def build_image_model(config: ImageConfig) -> nn.Module:
    """The image variant ``config.variant`` of the registry, untrained (for a variant trained in
    two stages, on an untrained VQ-VAE: stage one is run by the training code)."""
    return image_variant(config.variant).build(config)
