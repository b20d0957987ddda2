"""The standard VQ-VAE (van den Oord et al. 2017) as a Pyro model/guide pair: the tau -> 0,
uniform-prior limit of the bridge VQ-VAE, and stage one of the two-stage variant.

Model: z_q^0 ~ Uniform over the K codes per cell, x | z_q^0 ~ decoder(z_q^0).
Guide: z_q^0 = the nearest code to f_phi(x), straight-through, with the commitment surrogate.
In training, the guide also calls ``codebook.restart_dead`` before it quantises (dead-code restart)
and ``codebook.update`` after (EMA codes): options of :class:`~pbridge.codebook.Codebook` /
:class:`~pbridge.codebook.EMACodebook`.
"""

from __future__ import annotations

import pyro
import torch
from torch import nn

from pbridge.autoencoder import CodebookAutoencoder, nearest_code_sites
from pbridge.code_distribution import CodeVector
from pbridge.codebook import Codebook
from pbridge.samplers import OnStep

__all__ = ["VQVAE"]


class VQVAE(CodebookAutoencoder):
    """Encoder, decoder and codebook with a uniform prior over codes.

    Args: as :class:`~pbridge.autoencoder.CodebookAutoencoder`, plus ``commitment`` (beta).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        codebook: Codebook,
        data_shape: tuple[int, ...],
        latent_shape: tuple[int, ...],
        spherical_radius: float | None = None,
        commitment: float = 0.25,
    ) -> None:
        super().__init__(encoder, decoder, codebook, data_shape, latent_shape, spherical_radius)
        self.commitment = commitment

    def model(self, x: torch.Tensor) -> None:
        pyro.module("vqvae", self)
        codes = self.codebook()
        uniform = codes.new_zeros(x.shape[0], *self.latent_shape[1:], codes.shape[0])
        with pyro.plate("data", x.shape[0]):
            z_q0 = pyro.sample("z_q_0", CodeVector(uniform, codes))
            pyro.sample("x", self.decoder(z_q0), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        self.check_data(x)
        pyro.module("vqvae", self)
        f = self.encode(x)
        training = self.training and torch.is_grad_enabled()
        if training:  # before the codes enter this step's graph: it moves them in place
            self.codebook.restart_dead(f.detach())
        with pyro.plate("data", x.shape[0]):
            nearest_code_sites(f, self.codebook(), self.commitment)
        if training:
            self.codebook.update(f.detach())

    @torch.no_grad()
    def inpaint(
        self, indices: torch.Tensor, known: torch.Tensor, on_step: OnStep | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Complete the codes ``indices: (B, *cells)`` where ``known`` (bool, same shape) is
        False, by the prior; returns the completed indices and the prior's probabilities of
        every code at every cell given the known ones, ``(B, *cells, K)`` (uniform here).
        ``on_step`` is not called: the uniform draw is one step, with nothing to show."""
        num_codes = self.codebook.num_codes
        one_hot = torch.nn.functional.one_hot(indices, num_codes).float()
        probs = torch.where(known[..., None], one_hot, torch.full_like(one_hot, 1 / num_codes))
        drawn = torch.randint_like(indices, num_codes)
        return torch.where(known, indices, drawn), probs
