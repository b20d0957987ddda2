"""Gated PixelCNN over a grid of code indices (van den Oord et al. 2016, "Conditional Image
Generation with PixelCNN Decoders"), the autoregressive baseline prior of the VQ-VAE.

The cells of an ``(H, W)`` grid are ordered in raster order; the network gives, in one pass, the
logits of p(k_c | k_<c) for every cell c. Two stacks keep it causal without a blind spot:

- the vertical stack sees the rows above and the current row (a ``(k//2 + 1) x k`` kernel,
  padded on top only); it is shifted down one row before it feeds the horizontal stack, so the
  horizontal stack only ever receives rows strictly above;
- the horizontal stack sees the current row to the left: ``1 x (k//2)`` strictly left of the
  cell in the first layer (mask A), ``1 x (k//2 + 1)`` up to and including it afterwards
  (mask B, the cell's own features already exclude its own code).

Each layer is gated, ``tanh(a) * sigmoid(b)``, with a residual connection on the horizontal
stack after the first layer. :class:`PixelCNNPrior` makes the network a Pyro distribution over
code vectors (the values of the ``z_q_0`` site): log_prob is the exact autoregressive
log-likelihood, sample is ancestral in raster order (H W network passes, batched over items).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution
from torch import nn
from torch.distributions import constraints

from .codebook import code_indices, gather_codes
from .samplers import ANCESTRAL, OnStep, SamplerSettings

__all__ = ["GatedPixelCNN", "PixelCNNPrior"]

_NO_SHAPE = torch.Size()


class _GatedLayer(nn.Module):
    """One gated layer of both stacks; ``first`` uses mask A and no horizontal residual."""

    def __init__(self, channels: int, kernel: int, first: bool) -> None:
        super().__init__()
        half = kernel // 2
        self.first, self.half = first, half
        self.vertical = nn.Conv2d(channels, 2 * channels, (half + 1, kernel))
        self.horizontal = nn.Conv2d(channels, 2 * channels, (1, half if first else half + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal_out = nn.Conv2d(channels, channels, 1)

    @staticmethod
    def _gate(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)

    def forward(self, v: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.half
        v_pre = self.vertical(F.pad(v, (half, half, half, 0)))  # rows <= i
        below = F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]  # shifted down: rows < i
        if self.first:
            h_in = F.pad(h, (half, 0))[:, :, :, :-1]  # columns < j
        else:
            h_in = F.pad(h, (half, 0))  # columns <= j
        h_pre = self.horizontal(h_in) + self.vertical_to_horizontal(below)
        h_out = self.horizontal_out(self._gate(h_pre))
        return self._gate(v_pre), h_out if self.first else h + h_out


class GatedPixelCNN(nn.Module):
    """Logits of p(k_c | k_<c) over K codes for every cell of a grid.

    Args:
        num_codes: K.  channels: width of both stacks.  layers: gated layers (the first uses
        mask A).  kernel: odd kernel size of the stacks.
    Shapes: ``forward(indices: (B, H, W) int64) -> (B, K, H, W)``.
    """

    def __init__(self, num_codes: int, channels: int = 64, layers: int = 15, kernel: int = 3):
        super().__init__()
        if kernel % 2 == 0 or kernel < 3:
            raise ValueError(f"kernel must be odd and >= 3, got {kernel}")
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.num_codes = num_codes
        self.embed = nn.Embedding(num_codes, channels)
        self.layers = nn.ModuleList(
            _GatedLayer(channels, kernel, first=i == 0) for i in range(layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
            nn.ReLU(),
            nn.Conv2d(channels, num_codes, 1),
        )

    def logits_from_embedding(self, embedded: torch.Tensor) -> torch.Tensor:
        """The logits for an embedded grid ``(B, C, H, W)`` (for causality checks)."""
        v = h = embedded
        for layer in self.layers:
            v, h = layer(v, h)
        return self.head(h)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        if indices.dim() != 3 or indices.dtype != torch.long:
            raise ValueError(
                f"indices must be an int64 tensor of shape (B, H, W), got {tuple(indices.shape)} "
                f"of dtype {indices.dtype}"
            )
        return self.logits_from_embedding(self.embed(indices).permute(0, 3, 1, 2))

    def log_prob_per_cell(self, indices: torch.Tensor) -> torch.Tensor:
        """log p(k_c | k_<c) for every cell, ``(B, H, W)``, in one pass."""
        log_p = self(indices).log_softmax(dim=1)
        return log_p.gather(1, indices[:, None]).squeeze(1)

    @torch.no_grad()
    def sample(
        self,
        batch_size: int,
        grid: tuple[int, int],
        known: tuple[torch.Tensor, torch.Tensor] | None = None,
        on_step: OnStep | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Code indices ``(B, H, W)`` drawn in raster order, one pass per drawn cell, and the
        conditional p(k_c | k_<c) each cell was drawn from, ``(B, H, W, K)``.

        ``known = (indices, mask)``, both ``(B, H, W)`` (mask bool, True = known): those cells
        keep their indices (probabilities one-hot) and only the others are drawn, in raster
        order, each given the known and already drawn cells before it (inpainting).
        ``on_step(done, total)`` is told the progress after every drawn cell (``total``: the
        cells drawn, those unknown in some item), as the samplers tell a chain's steps
        (:func:`pbridge.samplers.reverse_sample`).
        """
        device = self.embed.weight.device
        indices = torch.zeros(batch_size, *grid, dtype=torch.long, device=device)
        mask = torch.zeros(batch_size, *grid, dtype=torch.bool, device=device)
        if known is not None:
            indices, mask = known[0].clone(), known[1]
            if indices.shape != (batch_size, *grid) or mask.shape != indices.shape:
                raise ValueError(
                    f"known indices and mask must have shape {(batch_size, *grid)}, got "
                    f"{tuple(indices.shape)} and {tuple(mask.shape)}"
                )
        probs = torch.nn.functional.one_hot(indices, self.num_codes).to(self.embed.weight.dtype)
        cells = (~mask).any(0).nonzero().tolist()
        for done, (i, j) in enumerate(cells, 1):
            conditional = self(indices)[:, :, i, j].softmax(-1)
            drawn = torch.multinomial(conditional, 1).squeeze(-1)
            free = ~mask[:, i, j]
            indices[:, i, j] = torch.where(free, drawn, indices[:, i, j])
            probs[:, i, j] = torch.where(free[:, None], conditional, probs[:, i, j])
            if on_step is not None:
                on_step(done, len(cells))
        return indices, probs


class PixelCNNPrior(TorchDistribution):
    """p(z_q^0) with the codes of z_q^0 autoregressive under a :class:`GatedPixelCNN`.

    Values are code vectors ``(B, d, H, W)`` like those of :class:`~pbridge.CodeVector`; their
    indices are read back exactly (a value is a code, so its nearest code is itself).

    Args:
        net: the PixelCNN.  codes: ``(K, d)``.  batch_size: B.  grid: ``(H, W)``.
        on_step: ``on_step(done, total)``, told the progress of ``sample`` cell by cell
            (:meth:`GatedPixelCNN.sample`); set by :meth:`with_options`.
    """

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = False

    def __init__(
        self,
        net: GatedPixelCNN,
        codes: torch.Tensor,
        batch_size: int,
        grid: tuple[int, int],
        on_step: OnStep | None = None,
        validate_args: bool | None = None,
    ) -> None:
        self.net, self.codes, self.grid, self.on_step = net, codes, tuple(grid), on_step
        event = torch.Size((codes.shape[1], *self.grid))
        super().__init__(torch.Size([batch_size]), event, validate_args)

    def with_options(
        self,
        sampler: SamplerSettings | None = None,
        strata: int | None = None,
        on_step: OnStep | None = None,
    ) -> PixelCNNPrior:
        """This prior telling ``on_step(done, total)`` the progress of its draw, cell by cell
        (:func:`~pbridge.bridge_prior.prior_options`, as a bridge prior's
        ``with_options``). It draws one way (ancestral, in raster order) and scores exactly:
        ``strata`` does not apply, and a ``sampler`` other than the default is refused."""
        if sampler is not None and sampler != ANCESTRAL:
            raise ValueError(
                f"a PixelCNN prior draws cell by cell: the sampler {sampler.name!r} does not apply"
            )
        return PixelCNNPrior(
            self.net,
            self.codes,
            self.batch_shape[0],
            self.grid,
            on_step=self.on_step if on_step is None else on_step,
            validate_args=self._validate_args,
        )

    @property
    def conditional_logits(self) -> None:
        """``None``: the codes of a cell are drawn given the cells drawn before it, not given an
        earlier site of the program (:class:`~pbridge.variant.CodeDistribution`)."""
        return None

    def expand(self, batch_shape, _instance=None):
        if tuple(batch_shape) != tuple(self.batch_shape):
            raise NotImplementedError("PixelCNNPrior cannot be expanded to a new batch shape")
        return self

    def indices(self, value: torch.Tensor) -> torch.Tensor:
        """The code index of every cell of ``value: (B, d, H, W)``, ``(B, H, W)``."""
        return code_indices(value, self.codes)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return self.net.log_prob_per_cell(self.indices(value)).flatten(1).sum(-1)

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        if sample_shape != _NO_SHAPE:
            raise NotImplementedError("PixelCNNPrior draws one batch per call")
        indices, _ = self.net.sample(self.batch_shape[0], self.grid, on_step=self.on_step)
        return gather_codes(indices, self.codes.detach())
