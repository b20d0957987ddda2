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
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from pbridge.config import ImageConfig, image_preset
from pbridge.variant import Variant, missing_members

from .images import image_data, score_images
from .pipeline import Recipe, Stage, run
from .run_dir import CHECKPOINT_FILE, VARIANT_FILE, LoadedRun, open_run
from .train_hooks import image_grid

__all__ = [
    "VARIANT_FILE",
    "VariantFile",
    "load_variant_file",
    "run_user_variant",
    "open_user_run",
]


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


def run_user_variant(
    path: str | Path,
    out_dir: str | Path,
    device: str = "auto",
    progress: bool = True,
    root: str | Path | None = None,
    download: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    config: ImageConfig | None = None,
) -> dict[str, Any]:
    """Train the variant of a variant file on its config's data set, score it on the test
    split (:func:`~.images.score_images`) and write the run directory, the file copied into it
    (:func:`~.pipeline.run`). ``config``: use this config instead of the file's (the command
    line's, with its overrides; a resumed run's own). Nothing is written before the file, the
    data, the directory and the checkpoint are checked."""
    source = load_variant_file(path)
    config = source.config if config is None else config
    copy = Path(out_dir) / VARIANT_FILE
    if resume and copy.is_file() and copy.read_bytes() != source.path.read_bytes():
        raise ValueError(f"{copy} differs from {source.path}: cannot resume another variant")

    def copy_file(out: Path) -> None:
        if source.path.resolve() != (out / VARIANT_FILE).resolve():
            shutil.copyfile(source.path, out / VARIANT_FILE)

    recipe = Recipe(
        config=config,
        data=partial(image_data, config, root, download),
        stages=[Stage(CHECKPOINT_FILE, config.train.steps, partial(source.build_variant, config))],
        score=score_images,
        plot_samples=image_grid(),
        on_written=copy_file,
    )
    return run(recipe, out_dir, device, progress, resume, overwrite)


def open_user_run(
    run_dir: str | Path, device: str = "auto", weights: str | None = None
) -> LoadedRun:
    """A run of a variant file read back, the variant rebuilt from the run directory's copy of
    the file, with its EMA or raw ``weights`` (:func:`~.run_dir.open_run`)."""
    source = load_variant_file(Path(run_dir) / VARIANT_FILE)
    return open_run(run_dir, ImageConfig, source.build_variant, device, weights)
