"""Checkpoints readable by plain ``torch.load``, their sidecar checksum, the older layout, and
``pbridge.load_run`` on a run written by the command line."""

import csv
import hashlib
import io
import math
import os
import shutil
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import pbridge
from pbridge.checkpoint import (
    CorruptCheckpointError,
    checksum_path,
    load_checkpoint,
    load_latest_checkpoint,
    previous_path,
    save_checkpoint,
)
from pbridge.config import ImageConfig, ToyConfig, image_preset
from pbridge.inference.run_dir import write_json
from pbridge.inference.sampling import sample_prior
from pbridge.models import class_conditional
from pbridge.models.builders import build_image_model


def _write_old_layout(payload: dict, path) -> None:
    """A checkpoint as pbridge wrote them before the sidecar: one header line with the
    SHA-256 of the ``torch.save`` bytes that follow it."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    digest = hashlib.sha256(body).hexdigest().encode()
    path.write_bytes(b"pbridge-checkpoint sha256=" + digest + b"\n" + body)


# ---------------------------------------------------------------- the file format
@pytest.mark.parametrize("weights_only", [True, False])
def test_plain_torch_load_reads_a_checkpoint(tmp_path, weights_only):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 3, "w": torch.arange(4.0), "losses": [1.5, 0.5]}, path)
    state = torch.load(path, weights_only=weights_only)
    assert state["step"] == 3 and state["losses"] == [1.5, 0.5]
    assert torch.equal(state["w"], torch.arange(4.0))
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert checksum_path(path).read_text() == expected + "\n"  # what `sha256sum` prints


@pytest.mark.parametrize("damage", ["checkpoint", "sidecar", "no-sidecar"])
def test_a_tampered_checkpoint_or_sidecar_is_refused(tmp_path, damage):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1, "w": torch.ones(100)}, path)
    sidecar = checksum_path(path)
    if damage == "checkpoint":
        data = path.read_bytes()
        path.write_bytes(data[:-50] + bytes([data[-50] ^ 1]) + data[-49:])
    elif damage == "sidecar":
        sidecar.write_text("0" * 64 + "\n")
    else:
        sidecar.unlink()
    match = "no checksum file checkpoint.pt.sha256" if damage == "no-sidecar" else "corrupted"
    with pytest.raises(CorruptCheckpointError, match=match):
        load_checkpoint(path)


def test_an_old_layout_checkpoint_still_loads_and_is_kept_as_the_previous_one(tmp_path):
    path = tmp_path / "checkpoint.pt"
    _write_old_layout({"step": 1, "w": torch.arange(3.0)}, path)
    checksum_path(previous_path(path)).write_text("0" * 64 + "\n")  # stale, from a former run
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(3.0))

    save_checkpoint({"step": 2}, path)
    assert load_checkpoint(path)["step"] == 2 and load_checkpoint(previous_path(path))["step"] == 1
    assert not checksum_path(previous_path(path)).exists()

    data = previous_path(path).read_bytes()
    previous_path(path).write_bytes(data[:-10])
    with pytest.raises(CorruptCheckpointError, match="the header says"):
        load_checkpoint(previous_path(path))


@pytest.mark.parametrize("crash_at", range(4))
def test_a_write_stopped_between_any_two_renames_leaves_an_intact_checkpoint(
    tmp_path, monkeypatch, crash_at
):
    """Saving moves four files into place; stopped before any of those renames, the newest
    intact checkpoint is the one being written or the one before it, never none."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1}, path)
    save_checkpoint({"step": 2}, path)
    renames, replace = [], os.replace

    def crash_on_the_nth(src, dst):
        if len(renames) == crash_at:
            raise KeyboardInterrupt
        renames.append(dst)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_the_nth)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 3}, path)
    monkeypatch.setattr(os, "replace", replace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a damaged latest file is reported; the test is below
        state, _ = load_latest_checkpoint(path)
    assert state["step"] in (2, 3)
    assert not list(tmp_path.glob("*.tmp"))


# ---------------------------------------------------------------- pbridge.load_run
@pytest.mark.slow
def test_load_run_gives_a_variant_that_samples_with_its_config_and_losses(tiny_toy_run):
    run = pbridge.load_run(tiny_toy_run, device="cpu")
    assert isinstance(run, pbridge.LoadedRun)
    assert isinstance(run.config, ToyConfig) and run.config.denoiser_width == 16
    assert run.step == 30 and len(run.losses) == 30 and run.weights == "ema"
    with (tiny_toy_run / "train.csv").open() as handle:
        assert list(run.losses) == [float(row["loss"]) for row in csv.DictReader(handle)]
    assert run.checkpoint == tiny_toy_run / "checkpoint.pt" and not run.variant.training
    draws = sample_prior(run.variant, 4)
    assert draws.x.shape == (4, 2, 5) and bool(torch.isfinite(draws.x).all())


@pytest.mark.slow
def test_load_run_ema_and_raw_weights_differ(tiny_toy_run):
    ema = pbridge.load_run(tiny_toy_run, weights="ema", device="cpu")
    raw = pbridge.load_run(tiny_toy_run, weights="raw", device="cpu")
    assert raw.weights == "raw" and raw.losses == ema.losses
    state = torch.load(tiny_toy_run / "checkpoint.pt", weights_only=True)
    for name, value in raw.variant.state_dict().items():
        assert torch.equal(value, state["model"][name]), name
        assert torch.equal(ema.variant.state_dict()[name], state["ema"][name]), name
    differ = [
        name
        for name, value in raw.variant.state_dict().items()
        if value.is_floating_point() and not torch.equal(value, ema.variant.state_dict()[name])
    ]
    assert differ
    with pytest.raises(ValueError, match="weights must be 'ema' or 'raw', got 'best'"):
        pbridge.load_run(tiny_toy_run, weights="best", device="cpu")


@pytest.mark.slow
def test_load_run_reads_a_run_whose_checkpoint_has_the_old_layout(tiny_toy_run, tmp_path):
    state = torch.load(tiny_toy_run / "checkpoint.pt", weights_only=True)
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_bytes((tiny_toy_run / "config.json").read_bytes())
    _write_old_layout(state, old / "checkpoint.pt")
    run = pbridge.load_run(old, device="cpu")
    assert run.step == 30 and math.isfinite(run.losses[-1])
    for name, value in run.variant.state_dict().items():
        assert torch.equal(value, state["ema"][name]), name


def test_load_run_names_a_folder_that_holds_no_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory: no config.json"):
        pbridge.load_run(tmp_path / "nothing")


@pytest.mark.parametrize("kind", ["end-to-end", "two-stage", "pixelcnn", "vqvae", "variant-file"])
def test_load_run_reads_every_kind_of_image_run(tmp_path, kind):
    """An image run of each variant, and a variant file's run (the class-conditional bridge,
    rebuilt from the run's copy of the file), as the command line lays them out."""
    config = replace(image_preset("digits", "small"), unet_width=16)
    build = build_image_model
    if kind == "variant-file":
        shutil.copyfile(Path(class_conditional.__file__), tmp_path / "variant.py")
        build = class_conditional.build
    else:
        config = replace(config, variant=kind)
    config = replace(config, train=replace(config.train, steps=2))
    variant = build(config)
    write_json(tmp_path / "config.json", config.to_dict())
    state = {"variant": type(variant).__name__, "model": variant.state_dict(), "step": 2}
    payload = {**state, "losses": [3.0, 2.0], "config": config.to_dict()}
    save_checkpoint(payload, tmp_path / "checkpoint.pt")
    run = pbridge.load_run(tmp_path, device="cpu")
    assert isinstance(run.config, ImageConfig) and run.config.variant == config.variant
    assert type(run.variant).__name__ == type(variant).__name__  # the file's copy: another module
    assert run.losses == (3.0, 2.0) and run.step == 2 and run.weights == "raw"


def test_load_run_is_exported_without_importing_the_variants_at_import_pbridge():
    code = (
        "import sys, pbridge; before = set(sys.modules); pbridge.load_run; "
        "print('pbridge.inference.load' in before, 'pbridge.models' in before, "
        "'pbridge.inference.load' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True"]
