"""Configurations as data: the toy and image presets and the builders of their variants."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pbridge.inference.svi import TrainSettings
from pbridge.models.bridge_vqvae import BridgeSettings, DiffusionBridgeVQVAE
from pbridge.models.pixelcnn_prior import pixelcnn_on_frozen_vqvae
from pbridge.models.two_stage import bridge_on_frozen_vqvae
from pbridge.models.vqvae import VQVAE

from .codebook import Codebook, EMACodebook
from .data import DATASETS
from .image_networks import ResNetDecoder, ResNetEncoder, UNetDenoiser
from .likelihoods import DiscretizedLogisticDecoder
from .networks import NormalDecoder, PointwiseMLP, ResidualMLPDenoiser, ResidualPointwiseMLP
from .ou_bridge import image_schedule, toy_schedule
from .pixelcnn import GatedPixelCNN

__all__ = [
    "ToyConfig",
    "build_toy_model",
    "ImageConfig",
    "image_preset",
    "build_image_model",
    "build_image_vqvae",
    "build_image_denoiser",
    "build_image_pixelcnn",
    "VARIANTS",
    "CODEBOOKS",
]


@dataclass(frozen=True)
class ToyConfig:
    """The paper's toy problem: walks of 5 points on 8 circle centroids, T = 100, theta = 2.

    Attributes:
        num_train: training walks drawn once.  length: points per walk.  noise: observation noise.
        num_codes: K.  latent_dim: d.  hidden: width of the per-cell encoder/decoder.
        denoiser_width / denoiser_blocks: the residual-MLP denoiser.
        num_steps / delta: the OU schedule (theta = 2, eta^2 = 0.01, z* = 0 fixed by the paper).
        num_samples: prior samples drawn to score the run.
    """

    num_train: int = 20000
    length: int = 5
    noise: float = 0.05
    num_codes: int = 8
    latent_dim: int = 2
    hidden: int = 64
    denoiser_width: int = 256
    denoiser_blocks: int = 3
    num_steps: int = 100
    delta: float = 0.015
    num_samples: int = 2000
    bridge: BridgeSettings = field(default_factory=lambda: BridgeSettings(commitment=1.0))
    train: TrainSettings = field(default_factory=lambda: TrainSettings(steps=1600))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ToyConfig:
        data = dict(data)
        bridge = BridgeSettings(**data.pop("bridge", {}))
        train = TrainSettings(**data.pop("train", {}))
        return cls(**data, bridge=bridge, train=train)


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


VARIANTS = ("end-to-end", "two-stage", "pixelcnn", "vqvae")
CODEBOOKS = ("gradient", "ema")


@dataclass(frozen=True)
class ImageConfig:
    """An image run: data set, sizes of the networks, bridge settings and optimisation.

    Attributes:
        dataset: a name of ``pbridge.data.DATASETS``.  preset: the name it was built from.
        variant: ``"end-to-end"`` (the paper's claim), ``"two-stage"`` (a VQ-VAE with a
            uniform prior for ``vqvae_steps`` steps, then the bridge on its frozen encodings
            for ``train.steps`` steps) or ``"pixelcnn"`` (the same VQ-VAE stage, then a gated
            PixelCNN prior on its frozen codes for ``train.steps`` steps) or ``"vqvae"`` (the
            VQ-VAE alone, uniform prior, ``train.steps`` steps).
        vqvae_codebook: the VQ-VAE's codebook, ``"gradient"`` (codebook loss) or ``"ema"``
            (moving averages, :class:`~pbridge.codebook.EMACodebook`).
        restart_dead_codes: ``None``, or restart VQ-VAE codes whose average number of cells per
            batch falls below this value (:class:`~pbridge.codebook.Codebook`).
        num_codes / latent_dim: K and d.  downsamples: stride-2 stages of the encoder.
        unet_width / unet_mults / unet_blocks: the U-Net denoiser.
        num_steps: T of the image OU schedule (DDPM betas 1e-4 -> 0.02).
        pixelcnn_channels / pixelcnn_layers: the PixelCNN baseline prior.
        max_train: use the first ``max_train`` training images (``None``: all).
        eval_items: test images scored at the end (``None``: the whole test split).
    """

    dataset: str = "fashion-mnist"
    preset: str = "small"
    variant: str = "end-to-end"
    vqvae_steps: int = 1000
    vqvae_codebook: str = "gradient"
    restart_dead_codes: float | None = None
    num_codes: int = 128
    latent_dim: int = 16
    downsamples: int = 1
    unet_width: int = 32
    unet_mults: tuple[int, ...] = (1, 2, 2)
    unet_blocks: int = 1
    num_steps: int = 1000
    pixelcnn_channels: int = 64
    pixelcnn_layers: int = 8
    max_train: int | None = None
    eval_items: int | None = 2000
    bridge: BridgeSettings = field(
        default_factory=lambda: BridgeSettings(commitment=0.25, spherical_radius=2.0)
    )
    train: TrainSettings = field(
        default_factory=lambda: TrainSettings(steps=3000, batch_size=64, lr=1e-3)
    )

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(
                f"unknown variant {self.variant!r}; expected one of {', '.join(VARIANTS)}"
            )
        if self.vqvae_codebook not in CODEBOOKS:
            raise ValueError(
                f"unknown codebook {self.vqvae_codebook!r}; expected one of {', '.join(CODEBOOKS)}"
            )
        if self.dataset not in DATASETS:
            raise ValueError(
                f"unknown data set {self.dataset!r}; expected one of {', '.join(DATASETS)}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ImageConfig:
        data = dict(data)
        bridge = BridgeSettings(**data.pop("bridge", {}))
        train = TrainSettings(**data.pop("train", {}))
        data["unet_mults"] = tuple(data["unet_mults"])
        return cls(**data, bridge=bridge, train=train)


def image_preset(dataset: str, preset: str) -> ImageConfig:
    """``"small"`` (trains on a laptop CPU) or ``"paper"`` (K = 64, d = 32, T = 1000, a U-Net of
    width 128, for GPUs) for a data set; mini-ImageNet gets two downsampling stages (84 -> 21)."""
    downsamples = 2 if dataset == "miniimagenet" else 1
    if preset == "small":
        small_grid = dataset == "digits"
        return ImageConfig(
            dataset=dataset,
            preset=preset,
            downsamples=downsamples,
            num_codes=32 if small_grid else 128,
            unet_mults=(1, 2) if small_grid else (1, 2, 2),
        )
    if preset == "paper":
        return ImageConfig(
            dataset=dataset,
            preset=preset,
            num_codes=64,
            latent_dim=32,
            downsamples=downsamples,
            unet_width=128,
            unet_mults=(1, 2, 2, 2),
            unet_blocks=2,
            pixelcnn_channels=128,
            pixelcnn_layers=15,
            eval_items=None,
            train=TrainSettings(steps=200_000, batch_size=128, lr=2e-4),
        )
    raise ValueError(f"unknown preset {preset!r}; expected 'small' or 'paper'")


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
