"""Configuration as data: every setting of a run, as frozen dataclasses that validate their
values, and the presets built from them.

A run's ``config.json`` is ``asdict`` of a :class:`ToyConfig` or :class:`ImageConfig`; the
command line and variant files build these, and the builders in ``pbridge.models`` read them.
Every numeric setting is range-checked when its dataclass is built (finite, an integer where
it counts, positive where zero means nothing): a ``ValueError`` names the setting and its
allowed range before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from typing import Any

from .data import data_set

__all__ = [
    "BridgeSettings",
    "PaperSettings",
    "TrainSettings",
    "ToyConfig",
    "ImageConfig",
    "CodesConfig",
    "image_preset",
    "CODEBOOKS",
    "config_from_dict",
    "upgrade_config_dict",
    "setting_type",
    "type_name",
]


def _check_number(
    name: str,
    value: Any,
    *,
    integer: bool = False,
    low: float | None = None,
    above: float | None = None,
    below: float | None = None,
    optional: bool = False,
) -> None:
    """``ValueError`` naming the setting ``name`` and its allowed range unless ``value`` is a
    finite number (an ``int`` where ``integer``; ``None`` allowed where ``optional``) that is
    ``>= low``, ``> above`` and ``< below`` (each bound where given)."""
    if optional and value is None:
        return
    kinds = (int,) if integer else (int, float)
    bounds = [f">= {low}"] if low is not None and not (integer and low == 1) else []
    bounds += [f"> {above}"] if above is not None else []
    bounds += [f"< {below}"] if below is not None else []
    kind = "a positive integer" if integer and low == 1 else "an integer" if integer else ""
    wanted = " ".join([kind or "a finite number", " and ".join(bounds)]).strip()
    wanted += " (or None)" if optional else ""
    is_number = isinstance(value, kinds) and not isinstance(value, bool)
    if (
        not is_number
        or not math.isfinite(value)
        or (low is not None and value < low)
        or (above is not None and value <= above)
        or (below is not None and value >= below)
    ):
        raise ValueError(f"{name} must be {wanted}, got {value!r}")


def _check_choices(settings: Any, **choices: tuple[str, ...]) -> None:
    """Each named field of ``settings`` is one of its allowed strings."""
    for name, allowed in choices.items():
        if getattr(settings, name) not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {getattr(settings, name)!r}")


@dataclass(frozen=True)
class PaperSettings:
    """The choices of the paper's formulation (``bridge.formulation = "paper"``, docs/maths.md
    s. 3-5), read by :class:`~pbridge.models.paper_bridge.PaperBridgeVQVAE` only.

    Attributes:
        tau_p / tau_q: temperatures of p(z_q^0 | z_e^0) and q(z_q^0 | z_e^0) (tau_q = 0: the
            nearest code).
        encoder_scale: s of q(z_e^0 | x).
        denoiser_loss: ``"elbo"`` or ``"simple"`` (see :class:`DiffusionPrior`).
        model_variance: ``"beta_tilde"`` or ``"beta"``, the reverse kernel's variance.
        gradient / gumbel_temperature: ``"straight_through"`` or ``"gumbel"`` path through
            z_q^0 and its relaxation temperature.
    """

    tau_p: float = 0.4
    tau_q: float = 0.0
    encoder_scale: float = 0.012
    denoiser_loss: str = "simple"
    model_variance: str = "beta_tilde"
    gradient: str = "straight_through"
    gumbel_temperature: float = 0.5

    def __post_init__(self) -> None:
        _check_choices(
            self,
            denoiser_loss=("elbo", "simple"),
            model_variance=("beta_tilde", "beta"),
            gradient=("straight_through", "gumbel"),
        )
        for name in ("tau_p", "encoder_scale", "gumbel_temperature"):
            _check_number(name, getattr(self, name), above=0)
        _check_number("tau_q", self.tau_q, low=0)
        if self.gradient == "gumbel" and self.tau_q == 0:
            raise ValueError("the gumbel gradient needs tau_q > 0 (a point mass has no relaxation)")


PAPER_SETTINGS = tuple(f.name for f in dataclasses.fields(PaperSettings))
"""The settings of :class:`PaperSettings`, which runs written before they had their own
section keep beside the others in ``bridge`` (:func:`upgrade_config_dict` moves them)."""


@dataclass(frozen=True)
class BridgeSettings:
    """The choices of the bridge VQ-VAE that are not network sizes.

    Attributes:
        formulation: ``"tight"`` (chain started at the code, categorical head; docs/maths.md
            s. 6) or ``"paper"`` (chain on the encoding with spread s, eps head; s. 3-5).
        estimator: ``"random_step"`` (one t per item, O(1) in T) or ``"full_chain"`` (T sites).
        t_sampling: ``"uniform"`` or ``"importance"``: tight, q(t) ~ sqrt(E[L_t^2]) tracked in
            training (:class:`StepCostTracker`); paper, q(t) = 0.5 w_t / sum w + 0.5 / T.
        spherical_radius: radius of the sphere holding codes and encodings; ``None`` = free.
        commitment: weight of the VQ commitment surrogate ||f - sg(e_k)||^2 (with the codebook
            term ||sg(f) - e_k||^2) of the tight guide; not part of the bound.
        self_condition: tight only (the paper formulation refuses a change): the head sees its
            own first-pass z0_hat (:class:`CodeHead`).
        readout_aux: tight only (likewise): weight of the head's cross-entropy on the true
            code, added to the gradient only (never to the reported bound).
        codes_lr_scale: the learning rate of the encoder and the codebook (what makes the
            codes) as a multiple of ``train.lr`` when they train with the prior on the joint
            ELBO (the decoder and the chain's network keep ``train.lr``); 1: one learning rate
            for everything (a run's config without it: 1). Read by the variants that train
            them with the prior (the toy, the image end-to-end variant); two-stage and the
            PixelCNN freeze them after the VQ-VAE stage.
        paper: the paper formulation's own settings (:class:`PaperSettings`); with the tight
            formulation they must keep their defaults (it reads none of them).
    """

    formulation: str = "tight"
    estimator: str = "random_step"
    t_sampling: str = "importance"
    spherical_radius: float | None = 1.0
    commitment: float = 0.25
    self_condition: bool = True
    readout_aux: float = 0.1
    codes_lr_scale: float = 1.0
    paper: PaperSettings = field(default_factory=PaperSettings)

    def __post_init__(self) -> None:
        _check_choices(
            self,
            formulation=("tight", "paper"),
            estimator=("random_step", "full_chain"),
            t_sampling=("uniform", "importance"),
        )
        if self.formulation == "tight" and self.paper != PaperSettings():
            changed = ", ".join(
                f"{name}={getattr(self.paper, name)!r}"
                for name in PAPER_SETTINGS
                if getattr(self.paper, name) != getattr(PaperSettings(), name)
            )
            raise ValueError(
                "the paper formulation's settings (bridge.paper) are read by it alone; with "
                f"bridge.formulation='tight' they keep their defaults (changed: {changed}); set "
                "bridge.formulation=paper to use them"
            )
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        changed = [
            f"{name}={getattr(self, name)!r}"
            for name in ("self_condition", "readout_aux")
            if getattr(self, name) != defaults[name]
        ]
        if self.formulation == "paper" and changed:
            raise ValueError(
                f"{', '.join(changed)}: read by the tight formulation alone; with "
                "bridge.formulation='paper' they keep their defaults"
            )
        _check_number("spherical_radius", self.spherical_radius, above=0, optional=True)
        for name in ("readout_aux", "commitment"):
            _check_number(name, getattr(self, name), low=0)
        _check_number("codes_lr_scale", self.codes_lr_scale, above=0)


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings.

    Attributes:
        steps: SVI steps (> 0).  batch_size: items per step.  lr: Adam learning rate.
        clip_norm: gradient-norm clip.  lr_decay: ``"cosine"`` (step s of S at
        ``lr (1 + cos(pi (s - 1) / S)) / 2``: lr at step 1, reaching 0 just after the last
        step) or ``"none"``.  seed: seed of parameters, batches and the ELBO's noise.
        checkpoint_every: steps between checkpoints of a run (0: only at the end).
        latent_warmup: steps over which the weight of the latent terms rises linearly from
            1 / latent_warmup to 1 (0: no warm-up; the loss is the ELBO from the start).
        autocast: run the model and guide under ``torch.autocast`` in bfloat16 (mixed
            precision: convolutions and matrix products in bf16, the rest in float32).
        ema_decay: decay of the exponential moving average of the weights (and buffers)
            kept beside them, ``ema <- d ema + (1 - d) weights`` after every step with
            ``d = min(decay, (1 + n) / (10 + n))`` at the n-th update (a warm-up); sampling and
            evaluation use it by default (0: none kept). docs/training.md.
        log_every: steps between the log's summary (ELBO terms, bits/dim, codebook usage of
            the step's batch) and the plain progress lines.
        eval_every: steps between held-out bounds in the log (0: none).
        heldout_items: items of the fixed held-out batch of that bound.
        sample_every: steps between grids of samples, ``samples/step_NNNNNN.png`` (0: none).
    """

    steps: int = 3000
    batch_size: int = 256
    lr: float = 2e-3
    clip_norm: float = 10.0
    lr_decay: str = "cosine"
    seed: int = 0
    checkpoint_every: int = 500
    latent_warmup: int = 0
    autocast: bool = False
    ema_decay: float = 0.995
    log_every: int = 100
    eval_every: int = 500
    heldout_items: int = 256
    sample_every: int = 1000

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "heldout_items"):
            _check_number(name, getattr(self, name), integer=True, low=1)
        for name in ("checkpoint_every", "latent_warmup", "eval_every", "sample_every"):
            _check_number(name, getattr(self, name), integer=True, low=0)
        _check_number("seed", self.seed, integer=True, low=0, below=2**32)
        if self.lr_decay not in ("cosine", "none"):
            raise ValueError(f"lr_decay must be 'cosine' or 'none', got {self.lr_decay!r}")
        _check_number("lr", self.lr, above=0)
        _check_number("clip_norm", self.clip_norm, above=0)
        _check_number("ema_decay", self.ema_decay, low=0, below=1)


class RunConfig:
    """What every run's config class has: ``to_dict`` (``config.json``) and ``from_dict``."""

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (``config.json``): sections as dicts, tuples kept."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """The config of :meth:`to_dict`'s data (keys left out take their defaults; lists read
        as tuples). Values are not type-checked: :func:`config_from_dict` does that."""
        return _from_dict(cls, data)


@dataclass(frozen=True)
class ToyConfig(RunConfig):
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

    def __post_init__(self) -> None:
        for name in ("num_train", "num_codes", "latent_dim", "hidden", "denoiser_width"):
            _check_number(name, getattr(self, name), integer=True, low=1)
        for name in ("denoiser_blocks", "num_steps", "num_samples"):
            _check_number(name, getattr(self, name), integer=True, low=1)
        _check_number("length", self.length, integer=True, low=2)
        _check_number("noise", self.noise, above=0)
        _check_number("delta", self.delta, above=0)


CODEBOOKS = ("gradient", "ema")


@dataclass(frozen=True)
class ImageConfig(RunConfig):
    """An image run: data set, sizes of the networks, bridge settings and optimisation.

    Attributes:
        dataset: a name of the registry of data sets, :data:`pbridge.data.DATASETS`.
        preset: the name it was built from.
        variant: a name of the registry of image variants,
            :data:`pbridge.models.builders.IMAGE_VARIANTS` (checked when the variant is built):
            ``"end-to-end"`` (the paper's claim: a VQ-VAE for ``vqvae_steps`` steps, then
            everything with the bridge prior on the joint ELBO for ``train.steps``),
            ``"two-stage"`` and ``"pixelcnn"`` (a VQ-VAE for ``vqvae_steps`` steps, then a prior
            on it frozen for ``train.steps``), ``"vqvae"``.
        vqvae_steps: steps of the VQ-VAE stage (>= 0; 0: none, the variant trains from the
            start).
        vqvae_codebook: the VQ-VAE's codebook, ``"gradient"`` (codebook loss) or ``"ema"``
            (moving averages, :class:`~pbridge.codebook.EMACodebook`).
        restart_dead_codes: ``None``, or restart VQ-VAE codes whose average number of cells per
            batch falls below this value (:class:`~pbridge.codebook.Codebook`).
        num_codes / latent_dim: K and d.  downsamples: stride-2 stages of the encoder
            (``2**downsamples`` must divide the data set's image height and width).
        unet_width / unet_mults / unet_blocks: the U-Net denoiser.
        num_steps: T of the image OU schedule (DDPM betas 1e-4 -> 0.02).
        pixelcnn_channels / pixelcnn_layers: the PixelCNN baseline prior.
        bridge: the bridge's settings; for images the encoder and codebook learn at a tenth
            of the rate in the joint stage (``bridge.codes_lr_scale = 0.1``, the end-to-end
            schedule that beat two-stage at both budgets measured, docs/results.md).
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
        default_factory=lambda: BridgeSettings(
            commitment=0.25, spherical_radius=2.0, codes_lr_scale=0.1
        )
    )
    train: TrainSettings = field(
        default_factory=lambda: TrainSettings(steps=3000, batch_size=64, lr=1e-3)
    )

    def __post_init__(self) -> None:
        if self.vqvae_codebook not in CODEBOOKS:
            raise ValueError(
                f"unknown codebook {self.vqvae_codebook!r}; expected one of {', '.join(CODEBOOKS)}"
            )
        entry = data_set(self.dataset)  # an unknown name is refused, naming the choices
        _check_number("vqvae_steps", self.vqvae_steps, integer=True, low=0)
        _check_number("restart_dead_codes", self.restart_dead_codes, above=0, optional=True)
        for name in ("num_codes", "latent_dim", "unet_width", "unet_blocks", "num_steps"):
            _check_number(name, getattr(self, name), integer=True, low=1)
        for name in ("pixelcnn_channels", "pixelcnn_layers"):
            _check_number(name, getattr(self, name), integer=True, low=1)
        for name in ("max_train", "eval_items"):
            _check_number(name, getattr(self, name), integer=True, low=1, optional=True)
        mults = self.unet_mults
        positive = [isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in mults]
        if not mults or not all(positive):
            raise ValueError(
                f"unet_mults must be a non-empty tuple of positive integers, got {mults!r}"
            )
        _check_number("downsamples", self.downsamples, integer=True, low=0)
        height, width = entry.shape[1:]
        scale = 2**self.downsamples
        if height % scale or width % scale:
            fits = max(
                k for k in range(self.downsamples) if height % 2**k == 0 and width % 2**k == 0
            )
            raise ValueError(
                f"downsamples={self.downsamples} halves {self.dataset}'s {height} x {width} "
                f"images {self.downsamples} times, and 2**{self.downsamples} = {scale} does "
                f"not divide {height} and {width}: downsamples must lie in 0..{fits}"
            )


@dataclass(frozen=True)
class CodesConfig(RunConfig):
    """The bridge prior fitted to codes you bring, ``pbridge train CODES.pt`` (docs/codes.md).

    The first five settings are read from the codes file when a run starts (they are not
    given): the file's absolute path and SHA-256 (checked whenever the run reads it again),
    one item's grid of cells and the codebook's K and d.

    Attributes:
        codes_file / codes_sha256: the file (``{"codes": (N, *cells) int64, "codebook": (K, d)}``).
        cells / num_codes / latent_dim: one item's grid, K and d.
        test_items: the file's last ``test_items`` items, held out (the training log's
            held-out bound, the score at the end and ``pbridge evaluate``); the others train.
        num_steps / beta_start / beta_end: T and the betas of the OU schedule,
            ``image_schedule(num_steps, beta_start, beta_end)`` (the defaults: abar_T ~ 4e-5).
        width / blocks: h_theta, ``build_chain_network`` (a U-Net for a 2-d grid of cells,
            else a residual MLP).
        self_condition / importance / readout_aux: the options of ``BridgeCodeModel``.
        num_samples: prior draws scored at the end of training.
    """

    codes_file: str
    codes_sha256: str
    cells: tuple[int, ...]
    num_codes: int
    latent_dim: int
    test_items: int = 1000
    num_steps: int = 100
    beta_start: float = 1e-3
    beta_end: float = 0.2
    width: int = 256
    blocks: int = 3
    self_condition: bool = True
    importance: bool = True
    readout_aux: float = 0.1
    num_samples: int = 1000
    train: TrainSettings = field(
        default_factory=lambda: TrainSettings(steps=3000, batch_size=128, sample_every=0)
    )

    def __post_init__(self) -> None:
        cells = self.cells
        if not cells or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in cells
        ):
            raise ValueError(f"cells must be a non-empty tuple of positive integers, got {cells!r}")
        for name in ("num_codes", "latent_dim", "test_items", "num_steps", "width", "blocks"):
            _check_number(name, getattr(self, name), integer=True, low=1)
        _check_number("num_samples", self.num_samples, integer=True, low=1)
        _check_number("beta_start", self.beta_start, above=0, below=1)
        _check_number("beta_end", self.beta_end, above=0, below=1)
        if self.beta_end < self.beta_start:
            raise ValueError(
                f"beta_end ({self.beta_end}) must be >= beta_start ({self.beta_start})"
            )
        _check_number("readout_aux", self.readout_aux, low=0)


CODES_FILE_SETTINGS = ("codes_file", "codes_sha256", "cells", "num_codes", "latent_dim")
"""The settings of a :class:`CodesConfig` read from its codes file, never given."""


def image_preset(dataset: str, preset: str) -> ImageConfig:
    """``"small"`` (trains on a laptop CPU) or ``"paper"`` (K = 64, d = 32, T = 1000, a U-Net of
    width 128, for GPUs) for a data set. Its entry of ``pbridge.data.DATASETS`` gives the
    encoder's downsampling stages (mini-ImageNet: two, 84 -> 21) and whether its latent grid is
    small (digits: the small preset then has 32 codes and ``unet_mults=(1, 2)``)."""
    entry = data_set(dataset)
    downsamples = entry.downsamples
    if preset == "small":
        small_grid = entry.small_grid
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
            train=TrainSettings(
                steps=200_000, batch_size=128, lr=2e-4, ema_decay=0.9999, sample_every=10_000
            ),
        )
    raise ValueError(f"unknown preset {preset!r}; expected 'small' or 'paper'")


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """``cls(**data)`` with the dataclass-typed fields (sections) built from their dicts and
    lists made tuples where the field is a tuple."""
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        hint = hints.get(key)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = _from_dict(hint, value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list | tuple):
            value = tuple(value)
        values[key] = value
    return cls(**values)


def type_name(hint: Any) -> str:
    """A field's annotation as people write it: ``int``, ``float | None``, ``tuple[int, ...]``."""
    if isinstance(hint, type) and not typing.get_args(hint):
        return "None" if hint is type(None) else hint.__name__
    return str(hint).replace("typing.", "")


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value can stand for a field annotated ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        return isinstance(value, list | tuple) and all(_fits(item, args[0]) for item in value)
    return True


def _unknown_setting(cls: type, key: str, prefix: str, root: type | None = None) -> ValueError:
    """The error for a setting ``prefix + key`` that ``cls`` (the section ``prefix`` of the
    config class ``root``) does not have, listing its own and suggesting the settings of
    ``root`` at other levels that have the same last name (``did you mean num_codes?``)."""
    section = prefix.rstrip(".") or _SECTION_NAMES.get(cls, cls.__name__)
    names = ", ".join(f.name for f in dataclasses.fields(cls))
    message = f"unknown setting {prefix + key!r}; {section} has: {names}"
    name = key.split(".")[-1]
    elsewhere = [k for k in _dotted_keys(root or cls) if k.split(".")[-1] == name]
    if elsewhere:
        message += f"; did you mean {' or '.join(elsewhere)}?"
    return ValueError(message)


def _dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every setting of the config class ``cls`` as a dotted key (``train.lr``)."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _dotted_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


_SECTION_NAMES = {
    ToyConfig: "a toy config",
    ImageConfig: "an image config",
    CodesConfig: "a codes config",
}


def _check_types(
    cls: type, data: dict[str, Any], source: str, prefix: str = "", root: type | None = None
) -> None:
    """Every key of ``data`` is a field of ``cls`` and every value fits its annotation
    (sections recursively; ``root``: the config class of which ``cls`` is the section
    ``prefix``); errors name ``source`` and the dotted setting."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in names:
            raise ValueError(f"{source}: {_unknown_setting(cls, key, prefix, root)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ValueError(f"{source}: {prefix}{key} must be an object, got {value!r}")
            _check_types(hint, value, source, f"{prefix}{key}.", root or cls)
        elif not _fits(value, hint):
            raise ValueError(f"{source}: {prefix}{key} must be {type_name(hint)}, got {value!r}")


def upgrade_config_dict(data: dict[str, Any]) -> dict[str, Any]:
    """A run's config as written by an earlier pbridge, in today's keys: the paper formulation's
    settings that stood beside the others in ``bridge`` (``bridge.tau_p``) move to their
    section ``bridge.paper``. Today's configs come back as they are; ``data`` is not changed."""
    bridge = data.get("bridge")
    if not isinstance(bridge, dict) or not any(name in bridge for name in PAPER_SETTINGS):
        return data
    moved = {name: bridge[name] for name in PAPER_SETTINGS if name in bridge}
    kept = {key: value for key, value in bridge.items() if key not in moved}
    paper = kept.get("paper")
    paper = {**moved, **paper} if isinstance(paper, dict) else moved
    return {**data, "bridge": {**kept, "paper": paper}}


def config_from_dict(cls: type, data: dict[str, Any], source: str) -> Any:
    """``cls.from_dict(data)`` (its keys upgraded, :func:`upgrade_config_dict`) with every key
    and value's type checked first; errors (those of the dataclasses' own checks included) name
    ``source`` and the setting."""
    data = upgrade_config_dict(data)
    _check_types(cls, data, source)
    try:
        return cls.from_dict(data)
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"{source}: {err}") from err


def setting_type(cls: type, key: str) -> Any:
    """The annotation of the dotted setting ``key`` of the config class ``cls``
    (``"bridge.paper.tau_p"``); ``ValueError`` naming the key and the settings at its level when
    there is no such setting, or when it names a whole section."""
    parts, root = key.split("."), cls
    for depth, part in enumerate(parts):
        prefix = "".join(f"{p}." for p in parts[:depth])
        if not dataclasses.is_dataclass(cls):
            raise ValueError(f"unknown setting {key!r}: {prefix.rstrip('.')} has no fields")
        hint = typing.get_type_hints(cls).get(part)
        if hint is None:
            raise _unknown_setting(cls, part, prefix, root)
        cls = hint
    if dataclasses.is_dataclass(cls):
        names = ", ".join(f"{key}.{f.name}" for f in dataclasses.fields(cls))
        raise ValueError(f"{key!r} is a section, not a setting; set its fields: {names}")
    return cls
