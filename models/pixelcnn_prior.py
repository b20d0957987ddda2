"""The autoregressive baseline: a VQ-VAE whose prior over codes is a gated PixelCNN, fitted on
the frozen VQ-VAE (van den Oord et al. 2017, the paper's comparison).

Model: z_q^0 ~ PixelCNNPrior (codes autoregressive in raster order), x | z_q^0 ~ decoder(z_q^0).
Guide: z_q^0 = the nearest code to f_phi(x) (a point mass): the VQ-VAE's own guide. The ELBO is then
``log p(x | z_q^0) + log p(z_q^0)``: the PixelCNN's exact likelihood of the codes plus the
decoder's, in the same bits/dim as the bridge variants.
"""

from __future__ import annotations

import pyro
import torch
from torch import nn

from pbridge.pixelcnn import GatedPixelCNN, PixelCNNPrior
from pbridge.samplers import OnStep

from .vqvae import VQVAE

__all__ = ["PixelCNNVQVAE", "pixelcnn_on_frozen_vqvae"]


class PixelCNNVQVAE(VQVAE):
    """The VQ-VAE (same encoder, decoder, codebook and guide) with a PixelCNN prior over codes.

    Args: as :class:`~pbridge.models.vqvae.VQVAE`, plus ``prior_net`` (the
    :class:`~pbridge.pixelcnn.GatedPixelCNN`).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        codebook: nn.Module,
        prior_net: GatedPixelCNN,
        data_shape: tuple[int, ...],
        latent_shape: tuple[int, ...],
        spherical_radius: float | None = None,
        commitment: float = 0.25,
    ) -> None:
        super().__init__(
            encoder, decoder, codebook, data_shape, latent_shape, spherical_radius, commitment
        )
        if prior_net.num_codes != codebook.num_codes:
            raise ValueError(
                f"the PixelCNN has {prior_net.num_codes} codes, the codebook {codebook.num_codes}"
            )
        self.prior_net = prior_net

    def prior(self, batch_size: int) -> PixelCNNPrior:
        return PixelCNNPrior(self.prior_net, self.codebook(), batch_size, self.latent_shape[1:])

    def code_log_prob_per_cell(self, indices: torch.Tensor) -> torch.Tensor:
        """``log p(k_c | k_<c)`` of every cell of ``indices: (B, *cells)`` under the PixelCNN,
        ``(B, *cells)`` (:class:`~pbridge.variant.AutoregressivePrior`)."""
        return self.prior_net.log_prob_per_cell(indices)

    @torch.no_grad()
    def inpaint(
        self, indices: torch.Tensor, known: torch.Tensor, on_step: OnStep | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`VQVAE.inpaint`: hidden cells drawn in raster order given the known cells
        before them; the probabilities are the conditionals they were drawn from.
        ``on_step(done, total)`` is told the progress cell by cell."""
        grid = self.latent_shape[1:]
        return self.prior_net.sample(indices.shape[0], grid, (indices, known), on_step)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("vqvae", self)
        with pyro.plate("data", x.shape[0]):
            z_q0 = pyro.sample("z_q_0", self.prior(x.shape[0]))
            pyro.sample("x", self.decoder(z_q0), obs=x)


def pixelcnn_on_frozen_vqvae(vqvae: VQVAE, prior_net: GatedPixelCNN) -> PixelCNNVQVAE:
    """Stage two of the baseline: freeze ``vqvae`` (no gradients, eval mode) and put a PixelCNN
    prior on its codes; SVI then moves only the PixelCNN."""
    vqvae.requires_grad_(False)
    variant = PixelCNNVQVAE(
        vqvae.encoder,
        vqvae.decoder,
        vqvae.codebook,
        prior_net,
        vqvae.data_shape,
        vqvae.latent_shape,
        vqvae.spherical_radius,
        vqvae.commitment,
    )
    variant.train(False)
    variant.prior_net.train(True)
    return variant
