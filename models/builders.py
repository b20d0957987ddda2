"""The builders of the presets' variants, from their configurations (:mod:`pbridge.config`)."""

from __future__ import annotations

from pbridge.codebook import Codebook, EMACodebook
from pbridge.config import BridgeSettings, ImageConfig, ToyConfig
from pbridge.data import DATASETS
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
from .pixelcnn_prior import pixelcnn_on_frozen_vqvae
from .two_stage import bridge_on_frozen_vqvae
from .vqvae import VQVAE

__all__ = [
    "build_toy_model",
    "build_image_model",
    "build_image_vqvae",
    "build_image_denoiser",
    "build_image_pixelcnn",
]


def chain_input_channels(bridge: BridgeSettings, latent_dim: int) -> int:
    """Channels the chain's network reads: z^t, and z0_hat with self-conditioning."""
    return 2 * latent_dim if bridge.tight and bridge.self_condition else latent_dim


def chain_output_channels(bridge: BridgeSettings, latent_dim: int, num_codes: int) -> int:
    """Channels the chain's network writes: K logit corrections (tight) or eps (paper)."""
    return num_codes if bridge.tight else latent_dim


def build_toy_model(config: ToyConfig) -> DiffusionBridgeVQVAE:
    """The end-to-end bridge VQ-VAE for the toy, with latents ``(d, length)``."""
    d, length = config.latent_dim, config.length
    return DiffusionBridgeVQVAE(
        encoder=ResidualPointwiseMLP(2, config.hidden)
        if d == 2
        else PointwiseMLP(2, d, config.hidden),
        decoder=NormalDecoder(PointwiseMLP(d, 2, config.hidden), config.noise, event_dims=2),
        denoiser=ResidualMLPDenoiser(
            (chain_input_channels(config.bridge, d), length),
            config.denoiser_width,
            config.denoiser_blocks,
            out_shape=(chain_output_channels(config.bridge, d, config.num_codes), length),
        ),
        codebook=Codebook(config.num_codes, d, radius=config.bridge.spherical_radius),
        schedule=toy_schedule(config.num_steps, config.delta),
        data_shape=(2, length),
        latent_shape=(d, length),
        settings=config.bridge,
    )


def build_image_vqvae(config: ImageConfig) -> VQVAE:
    """The VQ-VAE (uniform prior) with the image networks of ``config`` (stage one)."""
    channels, height, width = DATASETS[config.dataset]
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
    d = config.latent_dim
    return UNetDenoiser(
        chain_input_channels(config.bridge, d),
        config.unet_width,
        config.unet_mults,
        config.unet_blocks,
        out_channels=chain_output_channels(config.bridge, d, config.num_codes),
    )


def build_image_model(config: ImageConfig) -> VQVAE | DiffusionBridgeVQVAE:
    """The bridge VQ-VAE for images: ResNet encoder/decoder, discretised-logistic likelihood,
    U-Net denoiser, DDPM-equivalent OU schedule. End to end, or (``variant="two-stage"``) the
    bridge on a frozen VQ-VAE, or (``"pixelcnn"``) a PixelCNN prior on a frozen VQ-VAE (the
    VQ-VAE untrained here: stage one is run by the training code), or (``"vqvae"``) the
    VQ-VAE alone."""
    schedule = image_schedule(config.num_steps)
    if config.variant == "vqvae":
        return build_image_vqvae(config)
    if config.variant == "pixelcnn":
        return pixelcnn_on_frozen_vqvae(build_image_vqvae(config), build_image_pixelcnn(config))
    if config.variant == "two-stage":
        return bridge_on_frozen_vqvae(
            build_image_vqvae(config), build_image_denoiser(config), schedule, config.bridge
        )
    vq = build_image_vqvae(config)
    return DiffusionBridgeVQVAE(
        encoder=vq.encoder,
        decoder=vq.decoder,
        denoiser=build_image_denoiser(config),
        codebook=vq.codebook,
        schedule=schedule,
        data_shape=vq.data_shape,
        latent_shape=vq.latent_shape,
        settings=config.bridge,
    )
