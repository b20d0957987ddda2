"""``pbridge train path/to/variant.py``: a variant written as a Pyro model/guide pair in one file.

The file (docs/tutorial-variant.md) defines

- ``build(config) -> variant`` (required): an ``nn.Module`` with ``model`` and ``guide``, built
  for an :class:`~pbridge.config.ImageConfig`;
- ``CONFIG`` (optional): that ImageConfig (data set, network sizes, training settings);
  default ``image_preset("digits", "small")``.

The variant is a :class:`~pbridge.variant.Variant`: its model and guide take
``x: (B, C, H, W)`` and have the sites ``"z_q_0"``, ``"x"`` and, if present, ``"z_e_0"``; it
has ``data_shape``, ``latent_shape``, ``codebook`` and ``decoder``. Composing the building
blocks of :mod:`pbridge` (or subclassing a variant of :mod:`pbridge.models`) gives all of them.
A :class:`~pbridge.variant.TakesLabels` variant (``num_classes``, ``sample_class``) takes
``(x, y)`` with the class labels ``y: (B,)``; the other capabilities of
:mod:`pbridge.variant` (a bridge chain, inpainting, ...) are used where the variant has them.

The run directory holds ``variant.py`` (a copy of the file, from which the variant is rebuilt),
``config.json``, ``environment.json``, ``checkpoint.pt``, ``metrics.json``,
``reconstructions.png`` (rows: data, reconstruction) and ``samples.png`` (prior draws; one row
per class for a :class:`~pbridge.variant.TakesLabels` variant).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pyro
import torch
from pyro import poutine
from torch import nn

from pbridge.codebook import code_usage
from pbridge.config import ImageConfig, image_preset
from pbridge.data import load_images
from pbridge.likelihoods import bits_per_dim
from pbridge.variant import InitialisesCodebook, TakesLabels, Variant, missing_members

from .plots import plot_image_grid, plot_reconstructions
from .progress import Progress
from .run_dir import (
    CHECKPOINT_FILE,
    LoadedRun,
    atomic_write,
    check_resume,
    open_run,
    start_run,
    train_in_run,
    write_json,
    write_run_files,
)
from .sampling import sample_prior
from .svi import estimate_elbo
from .train_hooks import image_grid, training_hooks

__all__ = [
    "VARIANT_FILE",
    "VariantFile",
    "load_variant_file",
    "run_user_variant",
    "open_user_run",
    "load_user_run",
]

VARIANT_FILE = "variant.py"
"""The name of the variant file's copy in a run directory."""

_SAMPLES_PER_CLASS = 8


@dataclass(frozen=True)
class VariantFile:
    """A loaded variant file: its path, its ``build`` function and its (or the default) config."""

    path: Path
    build: Callable[[ImageConfig], nn.Module]
    config: ImageConfig

    def build_variant(self, config: ImageConfig | None = None) -> nn.Module:
        """``build(config)`` (default: the file's config), checked to be a model/guide pair."""
        try:
            variant = self.build(self.config if config is None else config)
        except Exception as err:  # the user's code: any failure is a bad input, named
            raise ValueError(f"build() in {self.path} failed: {type(err).__name__}: {err}") from err
        if not isinstance(variant, nn.Module):
            raise TypeError(
                f"build() in {self.path} must return a torch.nn.Module, got "
                f"{type(variant).__name__}"
            )
        missing = missing_members(variant, Variant)
        if missing:
            raise ValueError(
                f"the variant built by {self.path} ({type(variant).__name__}) has no "
                f"{', '.join(map(repr, missing))}; see docs/tutorial-variant.md for what a "
                "variant needs (pbridge.variant.Variant)"
            )
        return variant


def _import(path: Path) -> ModuleType:
    name = "pbridge_variant_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up by module name
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise ValueError(f"importing {path} failed: {type(err).__name__}: {err}") from err
    return module


def load_variant_file(path: str | Path) -> VariantFile:
    """Import a variant file and check that it defines ``build`` (and a valid ``CONFIG`` if
    any); errors name the file and what is missing."""
    path = Path(path)
    if path.suffix != ".py":
        raise ValueError(f"a variant file must be a Python file ending in .py, got {path}")
    if not path.is_file():
        raise FileNotFoundError(f"variant file {path} not found")
    module = _import(path)
    build = getattr(module, "build", None)
    if build is None:
        raise ValueError(
            f"{path} defines no 'build': a variant file must define build(config) -> variant "
            "(and may define CONFIG); see docs/tutorial-variant.md"
        )
    if not callable(build):
        raise TypeError(f"'build' in {path} must be a function, got {type(build).__name__}")
    config = getattr(module, "CONFIG", None)
    if config is None:
        config = image_preset("digits", "small")
    elif not isinstance(config, ImageConfig):
        raise TypeError(
            f"'CONFIG' in {path} must be a pbridge.config.ImageConfig, got {type(config).__name__}"
        )
    return VariantFile(path=path, build=build, config=config)


def _reconstructions(
    variant: nn.Module, args: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's mean on the guide's z_q^0 for the data ``args = (x, [y])``, and the codes."""
    z_q = poutine.trace(variant.guide).get_trace(*args).nodes["z_q_0"]
    return variant.decoder(z_q["value"]).mean, z_q["fn"].indices(z_q["value"])


@torch.no_grad()
def _score(variant: nn.Module, args: tuple[torch.Tensor, ...], out: Path) -> dict[str, Any]:
    """Test bits/dim (every term of the bound), codebook usage, reconstruction error; writes
    ``reconstructions.png`` and ``samples.png``."""
    x = args[0]
    elbo, stderr = estimate_elbo(variant, args, repeats=4, strata=10)
    x_mean, codes = _reconstructions(variant, args)
    usage = code_usage(codes, variant.codebook.num_codes)
    with atomic_write(out / "reconstructions.png") as tmp:
        title = "32 test images and their reconstructions (decoder mean)"
        plot_reconstructions(x[:32].cpu(), x_mean[:32].cpu(), tmp, title)
    with atomic_write(out / "samples.png") as tmp:
        if isinstance(variant, TakesLabels):
            classes = torch.arange(variant.num_classes, device=x.device)
            samples = variant.sample_class(classes.repeat_interleave(_SAMPLES_PER_CLASS))
            title = f"{_SAMPLES_PER_CLASS} prior samples per class (rows: classes 0, 1, ...)"
            plot_image_grid(samples.cpu(), tmp, title, nrow=_SAMPLES_PER_CLASS)
        else:
            title = "64 prior samples (decoder mean), ancestral sampler"
            plot_image_grid(sample_prior(variant, 64).x_mean.cpu(), tmp, title)
    return {
        "test_bits_per_dim": bits_per_dim(-elbo, x[0].numel()),
        "test_bits_per_dim_stderr": bits_per_dim(stderr, x[0].numel()),
        "codes_used": usage.codes_used,
        "perplexity": usage.perplexity,
        "reconstruction_mse": float((x_mean - x).pow(2).mean()),
    }


def run_user_variant(
    path: str | Path,
    out_dir: str | Path,
    device: str = "auto",
    progress: bool = True,
    train_overrides: dict[str, Any] | None = None,
    root: str | Path | None = None,
    download: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    config: ImageConfig | None = None,
) -> dict[str, Any]:
    """Train the variant of a variant file on its config's data set, score it on the test
    split and write the run directory. ``train_overrides``: fields of the config's
    :class:`~pbridge.config.TrainSettings` to replace (``steps``, ``seed``, ...);
    ``config``: use this config instead (a resumed run's own). Nothing is written before the
    file, the data, the directory and the checkpoint are checked."""
    start = time.perf_counter()
    source = load_variant_file(path)
    if config is None:
        config = source.config
        config = replace(config, train=replace(config.train, **(train_overrides or {})))
    variant_file = Path(out_dir) / VARIANT_FILE
    if resume and variant_file.is_file() and variant_file.read_bytes() != source.path.read_bytes():
        raise ValueError(
            f"{variant_file} differs from {source.path}: cannot resume another variant"
        )
    out, dev, world = start_run(out_dir, config, device)
    variant = source.build_variant(config).to(dev)

    train_set = load_images(config.dataset, "train", root, download)
    test_set = load_images(config.dataset, "test", root, download)
    train_x = train_set.as_float()[: config.max_train].to(dev)
    test_x = test_set.as_float()[: config.eval_items].to(dev)
    takes_labels = isinstance(variant, TakesLabels)
    data = (train_x, train_set.labels[: config.max_train].to(dev)) if takes_labels else train_x
    test = (test_x, test_set.labels[: config.eval_items].to(dev)) if takes_labels else (test_x,)
    if isinstance(variant, InitialisesCodebook):
        variant.initialise_codebook(
            train_x[:1024], torch.Generator(device=dev).manual_seed(config.train.seed)
        )
    if resume:
        check_resume(variant, out / CHECKPOINT_FILE, config)
    write_run_files(out, config, world, resume, overwrite)
    if world.is_main and source.path.resolve() != variant_file.resolve():
        shutil.copyfile(source.path, variant_file)
    hooks = training_hooks(config.train, out, test, image_grid())
    result = train_in_run(
        variant, data, config.train, out / "checkpoint.pt", config, progress, resume, world, hooks
    )
    if not world.is_main:
        return {}
    result.use_ema(variant)
    variant.eval()
    Progress(progress).stage(
        f"scoring: the test bound on {len(test[0]):,} test images, their reconstructions, then "
        "prior samples"
    )
    with pyro.validation_enabled(False):
        metrics = _score(variant, test, out)
    metrics.update(
        variant=type(variant).__name__,
        steps=config.train.steps,
        train_seconds=result.seconds,
        seconds=time.perf_counter() - start,
    )
    write_json(out / "metrics.json", metrics)
    return metrics


def open_user_run(
    run_dir: str | Path, device: str = "auto", weights: str | None = None
) -> LoadedRun:
    """A run of a variant file read back, the variant rebuilt from the run directory's copy of
    the file, with its EMA or raw ``weights`` (:func:`~.run_dir.open_run`)."""
    source = load_variant_file(Path(run_dir) / VARIANT_FILE)
    return open_run(run_dir, ImageConfig.from_dict, source.build_variant, device, weights)


def load_user_run(
    run_dir: str | Path, device: str = "auto", weights: str | None = None
) -> tuple[ImageConfig, nn.Module]:
    """The config and trained variant (eval mode) of a run of a variant file
    (:func:`open_user_run`)."""
    run = open_user_run(run_dir, device, weights)
    return run.config, run.variant
