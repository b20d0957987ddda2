"""A class-conditional bridge prior: the bridge VQ-VAE with a label y in the prior (beyond the
paper; the worked example of docs/tutorial-variant.md).

Model::

    y ~ Uniform{0, ..., C - 1}                       (observed in training)
    z_q^0 | y ~ p_theta(z_q^0 | y)                   (the bridge, its head h_theta(z^t, t, y))
    x | z_q^0                                        as in DiffusionBridgeVQVAE

The label enters the denoiser as a learned embedding added to its time embedding (the usual
class conditioning of diffusion models), so every step of the backward chain sees it.

Guide: the bridge VQ-VAE's ``q(z_q^0 | x)``, which does not read y: the encoding of an
image already says which digit it is, and the label only has to shape the prior.

Sampling a chosen class is conditioning the model: ``poutine.condition(model, {"y": y})``
(:meth:`ClassConditionalBridge.sample_class`). Outside the Pyro program the labels are an
argument: :meth:`ClassConditionalBridge.chain_network` binds the network to labels ``y``, and
the bridge's methods that run the chain (``chain_states``, ``state_logits``, ``inpaint``) take
that network.

This file is also a variant file for ``pbridge train models/class_conditional.py --out RUN``:
it defines ``CONFIG`` and ``build(config)`` (:mod:`pbridge.inference.user_variant`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pbridge.bridge_prior import prior_options
from pbridge.config import ImageConfig, image_preset
from pbridge.models.bridge_vqvae import DiffusionBridgeVQVAE
from pbridge.models.builders import build_image_bridge
from pbridge.samplers import ANCESTRAL, SamplerSettings

__all__ = ["LabelledTimeEmbedding", "ClassConditionalBridge", "CONFIG", "build"]


class LabelledTimeEmbedding(nn.Module):
    """A denoiser's time embedding plus a learned embedding of the class label.

    ``t: (N,) -> embed_time(t) + E[y]: (N, D)``, with the labels ``y: (B,)`` of the network
    call in progress; N = S B when the chain's bound evaluates S steps per item (``y`` is then
    repeated S times per item, as the items are). ``E`` starts at zero, so an untrained
    conditional denoiser is the unconditional one.

    The denoiser calls its time embedding with ``t`` alone, so the labels reach it for the
    duration of one call of the network bound to them (:class:`_LabelledNetwork`, through
    :meth:`given`); nothing outside that call sees them.

    Args:
        embed_time: the denoiser's ``t -> (N, D)`` module.  num_classes: C.
    """

    def __init__(self, embed_time: nn.Module, num_classes: int) -> None:
        super().__init__()
        dim = embed_time(torch.ones(1)).shape[-1]
        self.embed_time = embed_time
        self.embed_label = nn.Embedding(num_classes, dim)
        self.labels: torch.Tensor | None = None

    @contextmanager
    def given(self, y: torch.Tensor) -> Iterator[None]:
        """Within the block (one network call), the embedding adds that of the labels
        ``y: (B,)``."""
        saved, self.labels = self.labels, y
        try:
            yield
        finally:
            self.labels = saved

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if self.labels is None:
            raise ValueError(
                "the class-conditional network was called without labels: call the network "
                "of ClassConditionalBridge.chain_network(y)"
            )
        repeats, rest = divmod(t.shape[0], self.labels.shape[0])
        if rest or not repeats:
            raise ValueError(
                f"{t.shape[0]} denoiser inputs for {self.labels.shape[0]} labels: expected a "
                "multiple of the number of labels"
            )
        return self.embed_time(t) + self.embed_label(self.labels.repeat_interleave(repeats))


class _LabelledNetwork(nn.Module):
    """The chain's network ``(z_in, t) -> out`` bound to the labels ``y: (B,)`` it was made with."""

    def __init__(
        self, network: nn.Module, embedding: LabelledTimeEmbedding, labels: torch.Tensor
    ) -> None:
        super().__init__()
        self.network, self.embedding, self.labels = network, embedding, labels

    def forward(self, z_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with self.embedding.given(self.labels):
            return self.network(z_in, t)


class ClassConditionalBridge(DiffusionBridgeVQVAE):
    """The bridge VQ-VAE with the prior conditioned on a class label; model and guide take
    ``(x, y)`` with ``y: (B,)`` int64 in ``0..C-1``: a :class:`~pbridge.variant.TakesLabels`
    (``num_classes`` and :meth:`sample_class`), so the training and analysis code pass them.

    Args: as :class:`~pbridge.models.bridge_vqvae.DiffusionBridgeVQVAE` (the denoiser must have
    an ``embed_time`` module, as :class:`~pbridge.image_networks.UNetDenoiser` does), plus
    ``num_classes`` (C).
    """

    def __init__(self, *args, num_classes: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        embed_time = getattr(self.denoiser, "embed_time", None)
        if not isinstance(embed_time, nn.Module):
            raise ValueError(
                f"the denoiser ({type(self.denoiser).__name__}) has no embed_time module to "
                "add the label embedding to"
            )
        self.denoiser.embed_time = LabelledTimeEmbedding(embed_time, num_classes)
        self.num_classes = num_classes

    def chain_network(self, y: torch.Tensor | None = None) -> nn.Module:
        """The chain's network bound to the labels ``y: (B,)`` int64 in ``0..C-1``: pass it as
        ``network`` to the bridge's methods that run the chain (``chain_states``,
        ``state_logits``, ``inpaint``, ``prior``). The prior built with it keeps it, since Pyro
        evaluates its ``log_prob`` after the model has run."""
        if y is None:
            raise ValueError("the class-conditional chain needs labels: chain_network(y)")
        if y.dim() != 1 or y.dtype != torch.long:
            raise ValueError(f"y must be int64 labels (B,), got {y.dtype} {tuple(y.shape)}")
        if y.numel() and not (0 <= int(y.min()) and int(y.max()) < self.num_classes):
            raise ValueError(
                f"labels must lie in 0..{self.num_classes - 1}, got {int(y.min())}..{int(y.max())}"
            )
        return _LabelledNetwork(self.denoiser, self.denoiser.embed_time, y)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        # The items' labels, in a plate of their own: the bridge's model opens "data".
        with pyro.plate("labels", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=x.new_zeros(self.num_classes)), obs=y)
        self.model_sites(x, self.chain_network(y))

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        super().guide(x)

    @torch.no_grad()
    def sample_class(self, y: torch.Tensor, sampler: SamplerSettings = ANCESTRAL) -> torch.Tensor:
        """Decoder means of prior draws of the classes ``y: (B,)``, the chain drawn by
        ``sampler``: the model conditioned on y, everything else drawn. Returns
        ``(B, *data_shape)``."""
        placeholder = next(self.parameters()).new_zeros((y.shape[0], *self.data_shape))
        model = poutine.condition(poutine.uncondition(self.model), data={"y": y})
        trace = poutine.trace(prior_options(model, sampler=sampler)).get_trace(placeholder)
        return trace.nodes["x"]["fn"].mean


CONFIG = image_preset("digits", "small")


def build(config: ImageConfig) -> ClassConditionalBridge:
    """The image bridge VQ-VAE of ``config`` (end to end) with a prior over 10 classes."""
    base = build_image_bridge(config)
    return ClassConditionalBridge(
        base.encoder,
        base.decoder,
        base.denoiser,
        base.codebook,
        base.schedule,
        base.data_shape,
        base.latent_shape,
        base.settings,
        num_classes=10,
    )
