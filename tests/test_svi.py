"""Training-loop guards: bad data, NaN losses, devices."""

import math

import pyro
import pytest
import torch

from pbridge.checkpoint import load_checkpoint
from pbridge.data import load_images
from pbridge.inference.svi import TrainSettings, elbo_terms, negative_elbo, resolve_device, train
from pbridge.presets import ToyConfig, build_image_model, build_toy_model, image_preset
from pbridge.toy import sample_walks


def _variant():
    torch.manual_seed(0)
    return build_toy_model(ToyConfig(denoiser_width=32, denoiser_blocks=1))


@pytest.mark.filterwarnings("ignore:Encountered NaN")  # Pyro's own warning comes first
def test_nan_parameter_stops_training_naming_the_step():
    variant = _variant()
    x, _ = sample_walks(64)
    with torch.no_grad():
        variant.decoder.net.net[-1].bias.fill_(math.nan)
    # validation off: the guard, not torch's argument checks, must catch it
    with pyro.validation_enabled(False), pytest.raises(FloatingPointError, match="loss at step 1"):
        train(variant, x, TrainSettings(steps=3, batch_size=8), progress=False)


@pytest.mark.parametrize(
    "data, match",
    [(torch.zeros(0, 2, 5), "empty"), (torch.full((4, 2, 5), math.inf), "NaN or inf")],
    ids=["empty", "inf"],
)
def test_bad_training_data_is_refused(data, match):
    with pytest.raises(ValueError, match=match):
        train(_variant(), data, TrainSettings(steps=1), progress=False)


def test_training_lowers_the_loss():
    """A short run on the toy: the mean loss of the last 20 steps is far below the first 20's."""
    torch.manual_seed(0)
    variant = _variant()
    x, _ = sample_walks(2000, generator=torch.Generator().manual_seed(0))
    variant.initialise_codebook(x)
    result = train(variant, x, TrainSettings(steps=150, batch_size=64), progress=False)
    first, last = sum(result.losses[:20]) / 20, sum(result.losses[-20:]) / 20
    assert first - last > 50, (first, last)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(steps=0), "steps"), (dict(batch_size=-1), "batch_size"), (dict(lr=0.0), "lr")],
    ids=["steps", "batch", "lr"],
)
def test_bad_train_settings_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainSettings(**kwargs)


def test_device_resolution():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="unknown device 'tpu9'"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_variant_trains_with_pyro_svi():
    """model/guide are plain Pyro programs: pyro.infer.SVI with a Pyro optimiser updates them."""
    variant = _variant()
    x, _ = sample_walks(32)
    before = variant.codebook.weight.detach().clone()
    svi = pyro.infer.SVI(
        variant.model, variant.guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO()
    )
    loss = svi.step(x)
    assert math.isfinite(loss)
    assert not torch.equal(before, variant.codebook.weight.detach())
    assert "bridge_vqvae$$$codebook.weight" in pyro.get_param_store().keys()


def _digits_variant():
    return build_image_model(image_preset("digits", "small"))


@pytest.mark.parametrize(
    "build, data",
    [
        (_variant, lambda: sample_walks(256, generator=torch.Generator().manual_seed(0))[0]),
        (_digits_variant, lambda: load_images("digits", "train").as_float()[:256]),
    ],
    ids=["toy", "digits-images"],
)
def test_interrupted_run_resumes_to_the_same_parameters(build, data, tmp_path, monkeypatch):
    """Interrupt at step 13 (checkpoints every 5), resume: the result equals an uninterrupted
    run bit for bit, and the resumed run repeated at most one checkpoint interval."""
    import pbridge.inference.svi as svi

    pyro.enable_validation(False)
    x = data()
    settings = TrainSettings(steps=20, batch_size=16, checkpoint_every=5, latent_warmup=8)

    def fresh(path):
        torch.manual_seed(0)
        return build(), tmp_path / path

    variant, path = fresh("whole.pt")
    whole = train(variant, x, settings, progress=False, checkpoint=path)
    reference = {k: v.clone() for k, v in variant.state_dict().items()}

    calls = {"n": 0}
    real_loss = svi.negative_elbo

    def interrupting_loss(*args):
        calls["n"] += 1
        if calls["n"] == 13:
            raise KeyboardInterrupt
        return real_loss(*args)

    variant, path = fresh("cut.pt")
    monkeypatch.setattr(svi, "negative_elbo", interrupting_loss)
    with pytest.raises(KeyboardInterrupt):
        train(variant, x, settings, progress=False, checkpoint=path)
    monkeypatch.setattr(svi, "negative_elbo", real_loss)
    assert load_checkpoint(path)["step"] == 10

    variant, _ = fresh("cut.pt")  # a new process would rebuild the variant from scratch
    torch.manual_seed(123)  # and its RNG would differ: the checkpoint restores it
    resumed = train(variant, x, settings, progress=False, checkpoint=path, resume=True)
    assert resumed.losses == whole.losses
    for name, value in variant.state_dict().items():
        assert torch.equal(value, reference[name]), name


def _loss(variant, x, beta, seed=3):
    pyro.set_rng_seed(seed)
    return float(negative_elbo(variant, x, beta).detach())


def test_latent_warmup_scales_only_the_latent_terms():
    """With the same random draws, loss(beta) = -log p(x|z) + surrogate - beta * (latent terms of
    the ELBO): affine in beta, and the slope is the latent part of ``elbo_terms``."""
    variant = _variant()
    x, _ = sample_walks(32, generator=torch.Generator().manual_seed(0))
    variant.initialise_codebook(x)
    pyro.set_rng_seed(3)
    terms = elbo_terms(variant, x)
    latent = sum(v for k, v in terms.items() if k != "x")
    quarter, half, full = (_loss(variant, x, beta) for beta in (0.25, 0.5, 1.0))
    assert abs(latent) > 1.0
    assert full - quarter == pytest.approx(-0.75 * latent, rel=1e-4)
    assert half - quarter == pytest.approx(-0.25 * latent, rel=1e-4)


def test_autocast_loss_stays_close_and_trains_with_warmup():
    """bfloat16 autocast gives a loss within 2% of float32's for the same draws; training with
    autocast and a warm-up keeps finite losses and float32 parameters."""
    variant = _variant()
    x, _ = sample_walks(256, generator=torch.Generator().manual_seed(0))
    variant.initialise_codebook(x)
    exact = _loss(variant, x, 1.0)
    with torch.autocast("cpu", torch.bfloat16):
        mixed = _loss(variant, x, 1.0)
    assert mixed == pytest.approx(exact, rel=0.02)
    settings = TrainSettings(steps=4, batch_size=16, latent_warmup=2, autocast=True)
    result = train(variant, x, settings, progress=False)
    assert all(math.isfinite(v) for v in result.losses)
    assert all(p.dtype == torch.float32 for p in variant.parameters())
