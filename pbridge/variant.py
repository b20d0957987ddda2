"""The variant contract: what the training, sampling, evaluation and analysis code
(:mod:`pbridge.inference`) may ask of a variant (the built-in ones of :mod:`pbridge.models`, a
user's variant file).

:class:`Variant` is what every variant has; the capability protocols below it are what some
have, and the code that uses a capability asks ``isinstance(variant, Capability)``, never for a
variant's class or one attribute at a time. The protocols are ``runtime_checkable``: a variant
need not inherit from them, only have their members (``isinstance`` checks that the members
exist, not their signatures; the signatures are the contract written here).

Shapes: ``x: (B, *data_shape)``; ``latent_shape = (d, *cells)``; code indices
``(B, *cells)``; K codes of dimension d.
"""

from __future__ import annotations

import inspect
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from .codebook import Codebook
from .config import BridgeSettings
from .ou_bridge import OUSchedule
from .samplers import ANCESTRAL, OnStep, SamplerSettings

__all__ = [
    "CodeDistribution",
    "Variant",
    "BridgeChain",
    "Inpaints",
    "TakesLabels",
    "AutoregressivePrior",
    "SurrogateSites",
    "CodeModel",
    "InitialisesCodebook",
    "SplitsLearningRate",
    "protocol_members",
    "missing_members",
]


@runtime_checkable
class CodeDistribution(Protocol):
    """The distribution at a program's ``"z_q_0"`` site: the codes of every latent cell, values
    code vectors ``(B, d, *cells)`` (:class:`~pbridge.code_distribution.CodeVector`,
    :class:`~pbridge.bridge_prior.BridgeCodePrior`, :class:`~pbridge.pixelcnn.PixelCNNPrior`).
    """

    def indices(self, value: torch.Tensor) -> torch.Tensor:
        """The code index ``(B, *cells)`` of every cell of a value ``(B, d, *cells)``."""
        ...

    @property
    def conditional_logits(self) -> torch.Tensor | None:
        """The logits ``(B, *cells, K)`` of every cell's code given what the program drew
        before this site: the tight bridge's read-out p(z_q^0 | z^1) at the end of its last
        draw, the paper's kernel p(z_q^0 | z_e^0) (the guide's q(z_q^0 | z_e^0)), the full
        chain's read-out at z_e^1. ``None`` where there is no such distribution: a fixed prior
        (uniform, a learned table), a point-mass guide, the PixelCNN (each cell given the cells
        drawn before it), a bridge prior not drawn yet. The most probable codes of a draw
        (:class:`~pbridge.inference.sampling.Draws`) and the prior's code entropy of
        ``pbridge analyze`` read it."""
        ...


@runtime_checkable
class Variant(Protocol):
    """Every variant: a Pyro model/guide pair over a batch of items, an ``nn.Module``.

    ``model(x)`` and ``guide(x)`` (``(x, y)`` for :class:`TakesLabels`) have the sites
    ``"z_q_0"`` (the codes; its distribution a :class:`CodeDistribution`), ``"x"`` (the
    observation, in the model) and, when the variant has one, ``"z_e_0"`` (the continuous
    latent). ``codebook()`` returns the codes ``(K, d)`` and ``codebook.num_codes`` is K;
    ``decoder(z_q: (B, *latent_shape))`` is a distribution over x with batch shape ``(B,)``.
    """

    codebook: Codebook
    decoder: nn.Module
    data_shape: tuple[int, ...]
    latent_shape: tuple[int, ...]

    def model(self, x: torch.Tensor, *labels: torch.Tensor) -> None: ...

    def guide(self, x: torch.Tensor, *labels: torch.Tensor) -> None: ...


@runtime_checkable
class Inpaints(Variant, Protocol):
    """A prior that completes a grid of codes (masked-patch scores, ``pbridge evaluate``)."""

    def inpaint(
        self, indices: torch.Tensor, known: torch.Tensor, on_step: OnStep | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Complete ``indices: (B, *cells)`` where ``known`` (bool, same shape) is False;
        returns the completed indices and the probabilities they were drawn from,
        ``(B, *cells, K)`` (one-hot at known cells). ``on_step(done, total)``, when given, is
        told the draw's progress (a chain's steps, an autoregressive prior's cells)."""
        ...


@runtime_checkable
class BridgeChain(Inpaints, Protocol):
    """A variant whose prior is the diffusion bridge: an OU ``schedule`` of T steps and a
    learned backward chain (:class:`~pbridge.models.bridge_vqvae.DiffusionBridgeVQVAE`).

    ``network`` arguments: the chain's network (default :meth:`chain_network`; a labelled
    variant passes the one bound to its labels)."""

    schedule: OUSchedule
    settings: BridgeSettings

    def chain_network(self, *labels: torch.Tensor) -> nn.Module:
        """The chain's network (bound to the labels ``y: (B,)`` of a labelled variant)."""
        ...

    def prior(self, batch_size: int, network: nn.Module | None = None) -> object:
        """The random-step prior site (:class:`~pbridge.bridge_prior.BridgeCodePrior`, tight;
        :class:`~pbridge.bridge_prior.DiffusionPrior`, paper) for ``batch_size`` items."""
        ...

    def state_logits(
        self, z: torch.Tensor, t: int, network: nn.Module | None = None
    ) -> torch.Tensor:
        """Logits ``(B, *cells, K)`` of the discrete state attached to ``z = z^t``."""
        ...

    def chain_states(
        self,
        z_T: torch.Tensor,
        times: tuple[int, ...],
        network: nn.Module | None = None,
        on_step: OnStep | None = None,
    ) -> dict[int, torch.Tensor]:
        """``{t: z^t}`` of one T-step ancestral backward chain from ``z_T`` at ``times``."""
        ...

    def inpaint(
        self,
        indices: torch.Tensor,
        known: torch.Tensor,
        sampler: SamplerSettings = ANCESTRAL,
        network: nn.Module | None = None,
        on_step: OnStep | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`Inpaints.inpaint` with the backward chain drawn by ``sampler``."""
        ...

    def code_bound_per_cell(
        self, indices: torch.Tensor, strata: int = 100, network: nn.Module | None = None
    ) -> torch.Tensor:
        """Every cell's share ``(B, *cells)`` of the tight bound on log p(k) of ``indices: (B,
        *cells)``; summed over hidden cells, a bound on the inpainting model's
        log p(k_M | k_O) (docs/maths.md s. 7)."""
        ...


@runtime_checkable
class TakesLabels(Variant, Protocol):
    """A variant whose model and guide take ``(x, y)``, the class labels ``y: (B,)`` int64 in
    ``0..num_classes - 1`` (the model draws ``"y"`` when called without them)."""

    num_classes: int

    def sample_class(self, y: torch.Tensor, sampler: SamplerSettings = ANCESTRAL) -> torch.Tensor:
        """Decoder means ``(B, *data_shape)`` of prior draws of the classes ``y: (B,)``."""
        ...


@runtime_checkable
class AutoregressivePrior(Variant, Protocol):
    """A prior over codes with exact conditionals cell by cell (the PixelCNN baseline)."""

    def code_log_prob_per_cell(self, indices: torch.Tensor) -> torch.Tensor:
        """``log p(k_c | k_<c)`` of every cell of ``indices: (B, *cells)``, ``(B, *cells)``."""
        ...


@runtime_checkable
class CodeModel(Protocol):
    """A prior fitted to codes given as data (:class:`~pbridge.models.code_prior.
    BridgeCodeModel`): ``model(k)`` and ``guide(k)`` over code indices ``k: (B, *cells)``
    int64 in ``0..K-1`` (``data_shape = cells``); ``codebook()`` the codes ``(K, d)``."""

    codebook: nn.Module
    data_shape: tuple[int, ...]

    def model(self, k: torch.Tensor) -> None: ...

    def guide(self, k: torch.Tensor) -> None: ...

    def sample_codes(
        self, num: int, sampler: SamplerSettings = ANCESTRAL, on_step: OnStep | None = None
    ) -> torch.Tensor:
        """``num`` prior draws of the codes, indices ``(num, *cells)``."""
        ...


@runtime_checkable
class SurrogateSites(Protocol):
    """A model/guide pair whose guide has ``pyro.factor`` sites that are training surrogates,
    not terms of the bound: left out of every reported ELBO."""

    surrogate_sites: tuple[str, ...]


@runtime_checkable
class InitialisesCodebook(Protocol):
    """A variant whose codebook is initialised from the encodings of a data batch (k-means)."""

    def initialise_codebook(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> None: ...


@runtime_checkable
class SplitsLearningRate(Protocol):
    """A variant whose parameters train at more than one learning rate: ``parameter_groups()``
    returns Adam's parameter groups, each ``{"params": [...], "lr_scale": s}``, its learning rate
    ``s`` times the run's (every parameter in one group)."""

    def parameter_groups(self) -> list[dict]: ...


def protocol_members(protocol: type) -> list[str]:
    """The attributes and methods ``protocol`` declares, its own and its bases', in order."""
    names: list[str] = []
    for base in reversed(protocol.__mro__):
        if base in (Protocol, object) or not getattr(base, "_is_protocol", False):
            continue
        for name in (*inspect.get_annotations(base), *vars(base)):
            if not name.startswith("_") and name not in names:
                names.append(name)
    return names


def missing_members(obj: object, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``obj`` lacks (empty: ``isinstance(obj, protocol)``)."""
    return [name for name in protocol_members(protocol) if not hasattr(obj, name)]
