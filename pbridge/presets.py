"""Configurations as data: the toy preset and the builder of its variant."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pbridge.inference.svi import TrainSettings
from pbridge.models.bridge_vqvae import BridgeSettings, DiffusionBridgeVQVAE

from .codebook import Codebook
from .networks import NormalDecoder, PointwiseMLP, ResidualMLPDenoiser, ResidualPointwiseMLP
from .ou_bridge import toy_schedule

__all__ = ["ToyConfig", "build_toy_model"]


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
    bridge: BridgeSettings = field(
        default_factory=lambda: BridgeSettings(chain_on="code", commitment=1.0)
    )
    train: TrainSettings = field(default_factory=lambda: TrainSettings(steps=2000))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ToyConfig:
        data = dict(data)
        bridge = BridgeSettings(**data.pop("bridge", {}))
        train = TrainSettings(**data.pop("train", {}))
        return cls(**data, bridge=bridge, train=train)


def build_toy_model(config: ToyConfig) -> DiffusionBridgeVQVAE:
    """The end-to-end bridge VQ-VAE for the toy, with latents ``(d, length)``."""
    d, length = config.latent_dim, config.length
    return DiffusionBridgeVQVAE(
        encoder=ResidualPointwiseMLP(2, config.hidden)
        if d == 2
        else PointwiseMLP(2, d, config.hidden),
        decoder=NormalDecoder(PointwiseMLP(d, 2, config.hidden), config.noise, event_dims=2),
        denoiser=ResidualMLPDenoiser((d, length), config.denoiser_width, config.denoiser_blocks),
        codebook=Codebook(config.num_codes, d, radius=config.bridge.spherical_radius),
        schedule=toy_schedule(config.num_steps, config.delta),
        data_shape=(2, length),
        latent_shape=(d, length),
        settings=config.bridge,
    )
