"""What every codebook autoencoder variant shares: encoder, decoder, codebook and shapes, and the
guide's nearest-code sites (VQ-VAE style)."""

from __future__ import annotations

import pyro
import torch
from torch import nn

from .code_distribution import CodeVector
from .codebook import Codebook, code_logits, spherical

__all__ = ["CodebookAutoencoder", "nearest_code_sites"]


def nearest_code_sites(f: torch.Tensor, codes: torch.Tensor, commitment: float) -> torch.Tensor:
    """Guide sites of vector quantisation, inside the data plate.

    ``"z_q_0"``: the nearest code e_k to ``f: (B, d, *cells)`` (a point mass), straight-through
    to ``f``; ``"commitment"``: the VQ-VAE surrogate ``commitment ||f - sg(e_k)||^2 +
    ||sg(f) - e_k||^2`` as a ``pyro.factor`` (not a term of the bound). Returns e_k with a
    gradient to the codebook only.
    """
    z_q0 = pyro.sample("z_q_0", CodeVector(code_logits(f, codes, 0.0), codes, straight_through=f))
    e_k = z_q0 - (f - f.detach())
    penalty = commitment * (f - e_k.detach()).pow(2) + (f.detach() - e_k).pow(2)
    pyro.factor("commitment", penalty.flatten(1).sum(-1), has_rsample=True)
    return e_k


class CodebookAutoencoder(nn.Module):
    """Encoder ``x -> (B, d, *cells)``, decoder ``z_q -> distribution over x`` and a codebook.

    Args:
        data_shape: one item x without the batch dimension.  latent_shape: ``(d, *cells)``.
        spherical_radius: encodings are projected on this sphere (``None``: left free).
    """

    surrogate_sites = ("commitment",)

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        codebook: Codebook,
        data_shape: tuple[int, ...],
        latent_shape: tuple[int, ...],
        spherical_radius: float | None,
    ) -> None:
        super().__init__()
        if latent_shape[0] != codebook.weight.shape[1]:
            raise ValueError(
                f"latent dim d = {latent_shape[0]} does not match the codebook's "
                f"{codebook.weight.shape[1]}"
            )
        self.encoder, self.decoder, self.codebook = encoder, decoder, codebook
        self.data_shape, self.latent_shape = tuple(data_shape), tuple(latent_shape)
        self.spherical_radius = spherical_radius

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """f_phi(x), on the sphere when configured: ``(B, d, *cells)``."""
        f = self.encoder(x)
        if f.shape[1:] != self.latent_shape:
            raise ValueError(
                f"the encoder returned shape {tuple(f.shape)}, expected (B, {self.latent_shape})"
            )
        r = self.spherical_radius
        return f if r is None else spherical(f, r)

    def check_data(self, x: torch.Tensor) -> None:
        """Raise an error naming the problem when ``x`` is not a batch of items."""
        if not torch.is_floating_point(x):
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(
                f"x must have shape (B, {', '.join(map(str, self.data_shape))}), "
                f"got {tuple(x.shape)}"
            )

    @torch.no_grad()
    def initialise_codebook(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> None:
        """k-means initialisation of the codebook on the encodings f_phi(x) of a data batch."""
        self.codebook.initialise(self.encode(x), generator)
