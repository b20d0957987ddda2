"""The kinds of run a run directory holds, in one registry (like the data sets' and the image
variants'): ``toy`` (walks on a cycle, :mod:`.toy`), ``image`` (a built-in variant on an image
data set, :mod:`.images`), ``variant-file`` (a user's Pyro model/guide pair in a ``.py`` file,
:mod:`.user_variant`) and ``codes`` (the bridge prior on codes you bring in a ``.pt`` file,
:mod:`.codes_run`).

Each :class:`RunKind` carries what the commands need of it: the config class, the config of a
fresh ``pbridge train``, the training recipe, the opener, the evaluator, the writer of prior
draws, and what its config.json says of its draws. ``kind_for(DATASET)`` is the kind a
``train`` command asks for, ``kind_of(RUN_DIR)`` the kind that wrote a run directory; the
commands and :func:`~.load.load_run` call through them, with no branch on the kind of their
own.

    kind = kind_of("runs/toy")
    loaded = kind.open("runs/toy", "cpu", None)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch

from pbridge.config import CodesConfig, ImageConfig, ToyConfig, image_preset
from pbridge.config_overrides import apply_overrides
from pbridge.data import DATASETS, data_set, load_images
from pbridge.models.builders import image_variant
from pbridge.samplers import ANCESTRAL, SamplerSettings
from pbridge.toy import sample_walks

from . import analysis, codes_run, evaluate, images, toy, user_variant
from .progress import QUIET, Progress
from .run_dir import VARIANT_FILE, LoadedRun, read_config

__all__ = ["RunKind", "RUN_KINDS", "kind_for", "kind_of", "evaluate_run", "analyze_run"]

Shapes = tuple[tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class RunKind:
    """One kind of run.

    Attributes:
        name: ``"toy"``, ``"image"``, ``"variant-file"`` or ``"codes"``.
        config_class: the class of its config (a variant file's: ``ImageConfig``).
        fresh_config: ``(DATASET, overrides) -> config`` of a fresh ``pbridge train DATASET``.
        train: ``(DATASET, config, out, device, progress, root, download, resume, overwrite)
            -> metrics``: the training recipe run into the run directory ``out``.
        open: ``(run_dir, device, weights) -> LoadedRun``.
        evaluate: ``(loaded, run_dir, settings, root, sampler, progress) -> result``:
            ``pbridge evaluate`` on an opened run (writes eval.json).
        sample: ``(loaded, run_dir, num, sampler, progress) -> result``: ``num`` prior draws
            of an opened run, written to ``samples.pt`` and ``samples.png``.
        analyze: ``(loaded, run_dir, num, items, seed, root, sampler, progress) -> result``:
            ``pbridge analyze`` on an opened run (writes ``analysis.nc`` and its plots).
        shapes: ``config.json -> (data shape, latent shape)`` of one draw; ``None`` where
            config.json does not say (a variant file's: known once its file is built).
        data_name: ``config.json -> str``, what the run trained on, for messages.
        holds: ``(config.json, DATASET) -> bool``: whether a run of this kind is one on the
            ``DATASET`` of a ``train`` command of this kind (``--resume``).
    """

    name: str
    config_class: type
    fresh_config: Callable
    train: Callable[..., dict]
    open: Callable[[str | Path, str, str | None], LoadedRun]
    evaluate: Callable[..., dict]
    sample: Callable[..., dict]
    analyze: Callable[..., dict]
    shapes: Callable[[dict], Shapes | None]
    data_name: Callable[[dict], str]
    holds: Callable[[dict, str], bool] = lambda config, dataset: True


def _image_config(dataset: str, overrides: Sequence) -> ImageConfig:
    """The preset (a ``preset`` setting, else ``small``) of ``dataset``, the overrides
    applied; a ``dataset`` setting must name the same data set, a ``variant`` one a registered
    variant."""
    for item in overrides:
        if item.key == "dataset" and item.value != dataset:
            raise ValueError(
                f"{item.origin}: the data set is DATASET, here {dataset}; drop the setting "
                "or train on that data set"
            )
    presets = [item.value for item in overrides if item.key == "preset"]
    config = apply_overrides(image_preset(dataset, presets[-1] if presets else "small"), overrides)
    image_variant(config.variant)  # an unknown name (--set, --config) is refused here
    return config


def _train_toy(dataset, config, out, device, progress, root, download, resume, overwrite):
    return toy.run_toy(config, out, device, progress, resume=resume, overwrite=overwrite)


def _train_images(dataset, config, out, device, progress, root, download, resume, overwrite):
    return images.run_images(
        config,
        out,
        device,
        progress,
        root=root,
        download=download,
        resume=resume,
        overwrite=overwrite,
    )


def _train_variant_file(dataset, config, out, device, progress, root, download, resume, overwrite):
    return user_variant.run_user_variant(
        dataset,
        out,
        device,
        progress,
        root=root,
        download=download,
        resume=resume,
        overwrite=overwrite,
        config=config,
    )


def _evaluate_toy(loaded, run_dir, settings, root, sampler, progress):
    return toy.evaluate_toy_run(loaded, run_dir, settings, sampler, progress)


def _evaluate_images(loaded, run_dir, settings, root, sampler, progress):
    return evaluate.evaluate_images(
        loaded, run_dir, settings, root, sampler, progress, loaded.config.variant
    )


def _evaluate_variant_file(loaded, run_dir, settings, root, sampler, progress):
    return evaluate.evaluate_images(
        loaded, run_dir, settings, root, sampler, progress, type(loaded.variant).__name__
    )


def _analyze_toy(loaded, run_dir, num, items, seed, root, sampler, progress):
    """The analysis of ``items`` fresh walks drawn from ``seed``."""
    config = loaded.config
    generator = torch.Generator().manual_seed(seed)
    x, _ = sample_walks(items, config.length, config.noise, generator)
    return analysis.analyze_variant(loaded, run_dir, x, None, num, sampler, progress)


def _analyze_images(loaded, run_dir, num, items, seed, root, sampler, progress):
    """The analysis of the first ``items`` test images of the run's data set."""
    test = load_images(loaded.config.dataset, "test", root)
    x, labels = test.as_float()[:items], test.labels[:items]
    return analysis.analyze_variant(loaded, run_dir, x, labels, num, sampler, progress)


def _analyze_codes(loaded, run_dir, num, items, seed, root, sampler, progress):
    return codes_run.analyze_codes_run(loaded, run_dir, num, items, sampler, progress)


def _evaluate_codes(loaded, run_dir, settings, root, sampler, progress):
    return codes_run.evaluate_codes_run(loaded, run_dir, settings, sampler, progress)


def _train_codes(path, config, out, device, progress, root, download, resume, overwrite):
    return codes_run.run_codes(config, out, device, progress, resume=resume, overwrite=overwrite)


def _codes_shapes(config: dict) -> Shapes:
    cells = tuple(int(c) for c in config["cells"])
    return cells, (int(config["latent_dim"]), *cells)


def _toy_shapes(config: dict) -> Shapes:
    length, d = int(config["length"]), int(config["latent_dim"])
    return (2, length), (d, length)


def _image_shapes(config: dict) -> Shapes:
    channels, height, width = data_set(config["dataset"]).shape
    scale, d = 2 ** int(config["downsamples"]), int(config["latent_dim"])
    return (channels, height, width), (d, height // scale, width // scale)


RUN_KINDS: dict[str, RunKind] = {
    "toy": RunKind(
        "toy",
        ToyConfig,
        fresh_config=lambda dataset, overrides: apply_overrides(ToyConfig(), overrides),
        train=_train_toy,
        open=toy.open_toy_run,
        evaluate=_evaluate_toy,
        sample=toy.sample_toy_run,
        analyze=_analyze_toy,
        shapes=_toy_shapes,
        data_name=lambda config: "toy",
    ),
    "image": RunKind(
        "image",
        ImageConfig,
        fresh_config=_image_config,
        train=_train_images,
        open=images.open_image_run,
        evaluate=_evaluate_images,
        sample=images.sample_image_run,
        analyze=_analyze_images,
        shapes=_image_shapes,
        data_name=lambda config: str(config.get("dataset")),
        holds=lambda config, dataset: config.get("dataset") == dataset,
    ),
    "variant-file": RunKind(
        "variant-file",
        ImageConfig,
        fresh_config=lambda path, overrides: apply_overrides(
            user_variant.load_variant_file(path).config, overrides
        ),
        train=_train_variant_file,
        open=user_variant.open_user_run,
        evaluate=_evaluate_variant_file,
        sample=images.sample_image_run,
        analyze=_analyze_images,
        shapes=lambda config: None,
        data_name=lambda config: "a variant file",
    ),
    "codes": RunKind(
        "codes",
        CodesConfig,
        fresh_config=codes_run.codes_config,
        train=_train_codes,
        open=codes_run.open_codes_run,
        evaluate=_evaluate_codes,
        sample=codes_run.sample_codes_run,
        analyze=_analyze_codes,
        shapes=_codes_shapes,
        data_name=lambda config: f"the codes of {config.get('codes_file')}",
        holds=codes_run.holds_file,
    ),
}
"""Every kind of run, by name."""


def kind_for(dataset: str) -> RunKind:
    """The kind of run ``pbridge train DATASET`` makes: a file ending in ``.py`` is a variant
    file, one ending in ``.pt`` a codes file, ``toy`` the toy, a registered data set an image
    run; anything else is refused."""
    if dataset.endswith(".py"):
        return RUN_KINDS["variant-file"]
    if dataset.endswith(".pt"):
        return RUN_KINDS["codes"]
    if dataset == "toy":
        return RUN_KINDS["toy"]
    if dataset in DATASETS:
        return RUN_KINDS["image"]
    raise ValueError(
        f"unknown dataset {dataset!r}; expected one of toy, {', '.join(DATASETS)}, a "
        "variant file ending in .py or a codes file ending in .pt"
    )


def kind_of(run_dir: str | Path) -> RunKind:
    """The kind that wrote the run directory: a variant file's copy in it, else an image run
    when its config.json names a data set, a codes run when it names a codes file, else a toy
    run (``FileNotFoundError`` if it holds no ``config.json``)."""
    run = Path(run_dir)
    if (run / VARIANT_FILE).is_file():
        return RUN_KINDS["variant-file"]
    config = read_config(run)
    if "dataset" in config:
        return RUN_KINDS["image"]
    return RUN_KINDS["codes" if "codes_file" in config else "toy"]


def evaluate_run(
    run_dir: str | Path,
    settings: evaluate.EvalSettings | None = None,
    device: str = "auto",
    root: str | Path | None = None,
    sampler: SamplerSettings = ANCESTRAL,
    weights: str | None = None,
    progress: Progress = QUIET,
) -> dict:
    """``pbridge evaluate`` on any run directory: its kind's protocol (docs/evaluation.md) on the
    run opened with its EMA or raw ``weights`` (:func:`~.load.load_run`), the prior drawn by
    ``sampler`` (default the T-step chain); writes and returns eval.json's result. ``root``:
    where image data sets are read; ``progress`` shows each stage and the chain's steps."""
    settings = evaluate.EvalSettings() if settings is None else settings
    kind = kind_of(run_dir)
    loaded = kind.open(run_dir, device, weights)
    return kind.evaluate(loaded, Path(run_dir), settings, root, sampler, progress)


def analyze_run(
    run_dir: str | Path,
    num: int = 16,
    items: int = 8,
    seed: int = 0,
    device: str = "auto",
    root: str | Path | None = None,
    sampler: SamplerSettings = ANCESTRAL,
    weights: str | None = None,
    progress: Progress = QUIET,
) -> dict:
    """``pbridge analyze`` on any run directory: its kind's analysis (a toy or image run:
    :func:`~.analysis.analyze_variant`, prior and posterior as arviz InferenceData; a codes
    run: :func:`~.codes_run.analyze_codes_run`) on ``items`` test items with ``num`` draws
    (the prior's by ``sampler``), ``seed`` set before them; ``weights``: the run's EMA or raw
    weights (:func:`~.load.load_run`); ``progress`` shows the stages and the chains' steps.
    Returns what was written and a few figures."""
    if items <= 0:
        raise ValueError(f"items must be a positive integer, got {items}")
    kind = kind_of(run_dir)
    loaded = kind.open(run_dir, device, weights)
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    return kind.analyze(loaded, Path(run_dir), num, items, seed, root, sampler, progress)
