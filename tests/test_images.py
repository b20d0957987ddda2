"""The image pipeline through the command line on scikit-learn's digits (a short learning check)."""

import json
import math
from dataclasses import replace

import pyro
import pytest
import torch

from pbridge.checkpoint import load_checkpoint
from pbridge.cli import main
from pbridge.config import ImageConfig, image_preset
from pbridge.data import load_images
from pbridge.inference.images import run_images
from pbridge.inference.load import load_run
from pbridge.inference.sampling import sample_posterior
from pbridge.inference.svi import train
from pbridge.models.builders import build_image_denoiser, build_image_model, build_image_vqvae
from pbridge.models.two_stage import bridge_on_frozen_vqvae
from pbridge.ou_bridge import image_schedule


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    argv = ["train", "digits", "--steps", "100", "--vqvae-steps", "20", "--out", str(out)]
    assert main([*argv, "--set", "num_steps=100", "--no-progress"]) == 0
    return out


@pytest.mark.slow
def test_digits_trains_end_to_end(digits_run):
    """Learning happened: reconstructions are far better than the untrained model's (the
    per-step loss itself swings by thousands of nats: one random step of T = 100)."""
    metrics = json.loads((digits_run / "metrics.json").read_text())
    torch.manual_seed(0)
    untrained = build_image_model(image_preset("digits", "small")).eval()
    x = load_images("digits", "test").as_float()
    with pyro.validation_enabled(False):
        mse_untrained = float((sample_posterior(untrained, x).x_mean - x).pow(2).mean())
    assert metrics["reconstruction_mse"] < 0.6 * mse_untrained
    assert metrics["codes_used"] >= 8  # of 32: the codebook has not collapsed
    assert metrics["test_bits_per_dim"] > 0 and metrics["reconstruction_mse"] < 0.2
    for name in ("reconstructions.png", "samples.png", "checkpoint.pt", "config.json"):
        assert (digits_run / name).stat().st_size > 0


@pytest.mark.slow
def test_sample_command_on_an_image_run(digits_run, capsys):
    assert main(["sample", str(digits_run), "--num", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["num"] == 4
    assert torch.load(digits_run / "samples.pt", weights_only=True)["x"].shape == (4, 1, 8, 8)


def test_config_round_trips_through_json():
    config = image_preset("miniimagenet", "small")
    again = ImageConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and build_image_model(again).latent_shape == (16, 21, 21)


@pytest.mark.parametrize(
    "dataset, preset, match",
    [("svhn", "small", "unknown data set 'svhn'"), ("cifar10", "huge", "unknown preset 'huge'")],
)
def test_unknown_dataset_or_preset(dataset, preset, match):
    with pytest.raises(ValueError, match=match):
        image_preset(dataset, preset)


def _tiny(variant: str, **train) -> ImageConfig:
    config = image_preset("digits", "small")
    return replace(
        config,
        variant=variant,
        vqvae_steps=30,
        eval_items=64,
        unet_width=16,
        num_steps=50,
        train=replace(config.train, steps=30, **train),
    )


def test_vqvae_elbo_has_the_uniform_prior_term():
    """VQ-VAE: log p(z_q) = -cells log K exactly, and the guide's point mass has log q = 0."""
    from pbridge.inference.bound import elbo_terms

    vqvae = build_image_vqvae(_tiny("two-stage"))
    terms = elbo_terms(vqvae, torch.rand(8, 1, 8, 8))
    assert math.isclose(terms["z_q_0"], -16 * math.log(32), rel_tol=1e-6)


@pytest.mark.parametrize("codebook", ["gradient", "ema"])
def test_dead_codes_restart_in_vqvae_training(codebook):
    """Dead-code restart trains with either codebook (the gradient codebook's codes, moved in
    place, must not be part of the step's graph when they move). Usage starts at the uniform
    share, 16 images x 16 cells / 32 codes = 8 per batch; with the threshold 7.9 a code that
    gets no cell in the first two steps falls to 7.84 and jumps onto an encoding, a distance of
    order 1 from where the same run without restart (same seed, same batches) leaves it."""

    def trained(restart: float | None) -> torch.Tensor:
        config = replace(_tiny("vqvae"), vqvae_codebook=codebook, restart_dead_codes=restart)
        torch.manual_seed(0)
        vqvae = build_image_vqvae(config)
        x = load_images("digits", "train").as_float()[:64]
        with pyro.validation_enabled(False):
            train(vqvae, x, replace(config.train, steps=3, batch_size=16), progress=False)
        return vqvae.codebook.weight.detach()

    moved = (trained(7.9) - trained(None)).norm(dim=-1)
    assert int((moved > 0.5).sum()) >= 1


def test_two_stage_moves_only_the_denoiser():
    config = _tiny("two-stage")
    torch.manual_seed(0)
    vqvae = build_image_vqvae(config)
    variant = bridge_on_frozen_vqvae(
        vqvae, build_image_denoiser(config), image_schedule(config.num_steps), config.bridge
    )
    frozen = {k: v.clone() for k, v in vqvae.state_dict().items()}  # BN statistics included
    denoiser = {k: v.clone() for k, v in variant.denoiser.state_dict().items()}
    x = torch.rand(64, 1, 8, 8)
    with pyro.validation_enabled(False):
        train(variant, x, replace(config.train, steps=5, batch_size=16), progress=False)
    assert all(torch.equal(v, frozen[k]) for k, v in vqvae.state_dict().items())
    changed = [not torch.equal(v, denoiser[k]) for k, v in variant.denoiser.state_dict().items()]
    assert any(changed)


@pytest.mark.slow
def test_two_stage_run_writes_both_stages(tmp_path):
    metrics = run_images(_tiny("two-stage"), tmp_path, progress=False)
    assert (tmp_path / "vqvae.pt").is_file() and (tmp_path / "checkpoint.pt").is_file()
    stage_one = load_checkpoint(tmp_path / "vqvae.pt")
    assert stage_one["step"] == 30 and stage_one["losses"][-1] < stage_one["losses"][0]
    assert math.isfinite(metrics["test_bits_per_dim"]) and metrics["codes_used"] >= 4


def test_pixelcnn_run_writes_both_stages_and_scores(tmp_path):
    """The PixelCNN baseline through the same run: VQ-VAE stage, PixelCNN stage, test bits/dim
    and prior samples drawn in raster order."""
    metrics = run_images(_tiny("pixelcnn"), tmp_path, progress=False)
    stage_two = load_checkpoint(tmp_path / "checkpoint.pt")
    assert stage_two["variant"] == "PixelCNNVQVAE"
    assert stage_two["losses"][-1] < stage_two["losses"][0]
    assert math.isfinite(metrics["test_bits_per_dim"]) and (tmp_path / "samples.png").is_file()


TINY_DIGITS = [
    "--set", "num_steps=20",
    "--set", "unet_width=8",
    "--set", "unet_mults=1",
    "--set", "num_codes=8",
    "--set", "latent_dim=4",
    "--set", "max_train=64",
    "--set", "eval_items=16",
    "--set", "train.batch_size=8",
    "--set", "train.heldout_items=16",
    "--set", "pixelcnn_channels=8",
    "--set", "pixelcnn_layers=2",
    "--no-progress",
]  # fmt: skip


def _train_digits(out, variant: str, vqvae_steps: int, steps: int) -> int:
    argv = ["train", "digits", "--variant", variant, "--out", str(out), *TINY_DIGITS]
    return main([*argv, "--vqvae-steps", str(vqvae_steps), "--steps", str(steps)])


def _rows(path) -> int:
    return len(path.read_text().splitlines()) - 1  # the header


@pytest.fixture(scope="module")
def two_stage_run(tmp_path_factory):
    """A tiny two-stage digits run, uninterrupted: 5 VQ-VAE steps, then 7 steps of the bridge."""
    out = tmp_path_factory.mktemp("two-stage") / "run"
    assert _train_digits(out, "two-stage", 5, 7) == 0
    return out


@pytest.mark.parametrize(
    "variant, vqvae_steps",
    [("two-stage", 5), ("pixelcnn", 5), ("end-to-end", 5), ("end-to-end", 0)],
)
def test_each_stage_trains_its_own_budget(variant, vqvae_steps, tmp_path, two_stage_run):
    """vqvae_steps != train.steps: the VQ-VAE stage logs and checkpoints vqvae_steps steps, the
    last stage train.steps (end to end too: its warm start; 0: no VQ-VAE stage at all), and
    the chain has the configured num_steps."""
    out = two_stage_run
    if variant != "two-stage":
        out = tmp_path / "run"
        assert _train_digits(out, variant, vqvae_steps, 7) == 0
    assert _rows(out / "train.csv") == 7 and load_checkpoint(out / "checkpoint.pt")["step"] == 7
    if vqvae_steps == 0:
        assert not (out / "vqvae.pt").exists() and not (out / "vqvae_train.csv").exists()
    else:
        assert _rows(out / "vqvae_train.csv") == 5
        assert load_checkpoint(out / "vqvae.pt")["step"] == 5
    assert json.loads((out / "metrics.json").read_text())["steps"] == 7
    if variant != "pixelcnn":
        assert load_run(out).variant.schedule.num_steps == 20


def test_resume_with_another_image_data_set_is_refused(two_stage_run, capsys):
    """A digits run resumed as fashion-mnist: exit 2, one line naming both data sets, the run
    left byte-identical."""
    before = {p.name: p.read_bytes() for p in two_stage_run.iterdir() if p.is_file()}
    argv = ["train", "fashion-mnist", "--out", str(two_stage_run), "--resume", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "digits" in err and "fashion-mnist" in err and "\n" not in err.strip(), err
    assert {p.name: p.read_bytes() for p in two_stage_run.iterdir() if p.is_file()} == before


def test_interrupted_between_stages_keeps_stage_one_and_resumes_into_stage_two(
    tmp_path, monkeypatch, two_stage_run
):
    """Ctrl-C as stage two starts: vqvae.pt and its log stay; --resume trains stage two only
    (stage one untouched) and ends with the uninterrupted run's parameters."""
    import pbridge.inference.pipeline as pipeline

    real = pipeline.train_in_run

    def interrupted(variant, data, settings, checkpoint, *args, **kwargs):
        if checkpoint.name == "checkpoint.pt":
            raise KeyboardInterrupt
        return real(variant, data, settings, checkpoint, *args, **kwargs)

    monkeypatch.setattr(pipeline, "train_in_run", interrupted)
    out = tmp_path / "run"
    assert _train_digits(out, "two-stage", 5, 7) == 130
    assert load_checkpoint(out / "vqvae.pt")["step"] == 5 and _rows(out / "vqvae_train.csv") == 5
    assert not (out / "checkpoint.pt").exists()
    stage_one = (out / "vqvae.pt").read_bytes()
    monkeypatch.setattr(pipeline, "train_in_run", real)
    assert main(["train", "digits", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert (out / "vqvae.pt").read_bytes() == stage_one and _rows(out / "vqvae_train.csv") == 5
    assert _rows(out / "train.csv") == 7
    resumed, whole = (load_checkpoint(d / "checkpoint.pt") for d in (out, two_stage_run))
    assert resumed["step"] == 7 and resumed["losses"] == whole["losses"]
    for key, value in whole["model"].items():
        assert torch.equal(resumed["model"][key], value), key
