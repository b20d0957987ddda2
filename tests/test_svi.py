"""Training-loop guards: bad data, NaN losses, devices."""

import dataclasses
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pbridge.checkpoint import load_checkpoint
from pbridge.config import ToyConfig, TrainSettings, image_preset
from pbridge.data import load_images
from pbridge.inference import bound
from pbridge.inference.bound import elbo_terms, negative_elbo
from pbridge.inference.run_dir import resolve_device
from pbridge.inference.svi import train
from pbridge.models.builders import build_image_model, build_toy_model
from pbridge.toy import sample_walks


def _variant():
    torch.manual_seed(0)
    return build_toy_model(ToyConfig(denoiser_width=32, denoiser_blocks=1))


class _Gaussian(nn.Module):
    """The smallest variant: z_i ~ N(0, 1), x_i ~ N(z_i + a, 1); guide z_i ~ N(w x_i, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.w = nn.Parameter(torch.zeros(())), nn.Parameter(torch.zeros(()))

    def model(self, x):
        pyro.module("gaussian", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z + self.a, 1.0), obs=x)

    def guide(self, x):
        pyro.module("gaussian", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.w * x, 1.0))


class _RareBlowUp(nn.Module):
    """One draw u ~ U(0, 1) per step (guide and model); when u < 0.1 the observation's mean
    is NaN (``where="loss"``) or sqrt(a) at a = 0, finite with an infinite gradient in ``a``
    (``where="gradient"``). Which step blows up depends on the draws alone."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.a, self.where = nn.Parameter(torch.zeros(())), where

    def model(self, x):
        pyro.module("rare", self)
        rare = pyro.sample("u", dist.Uniform(0.0, 1.0)) < 0.1
        if self.where == "loss":
            loc = torch.where(rare, torch.nan, self.a)
        else:
            loc = torch.where(rare, self.a, self.a.detach() + 1).sqrt()
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    def guide(self, x):
        pyro.module("rare", self)
        pyro.sample("u", dist.Uniform(0.0, 1.0))


@pytest.mark.filterwarnings("ignore:Encountered NaN")  # Pyro's own warning comes first
def test_nan_parameter_stops_training_naming_the_step():
    variant = _variant()
    x, _ = sample_walks(64)
    with torch.no_grad():
        variant.decoder.net.net[-1].bias.fill_(math.nan)
    # validation off: the guard, not torch's argument checks, must catch it
    with pyro.validation_enabled(False), pytest.raises(FloatingPointError, match="loss at step 1"):
        train(variant, x, TrainSettings(steps=3, batch_size=8), progress=False)


@pytest.mark.filterwarnings("ignore:Encountered NaN")
@pytest.mark.parametrize(
    "where, message",
    [("loss", "loss at step {}: x (model)"), ("gradient", "gradient at step {} in a")],
    ids=["loss", "gradient"],
)
def test_nan_guard_names_a_draw_dependent_failure(where, message):
    """The value goes non-finite only for some draws (u < 0.1, one draw per step): over 10 seeds,
    the guard names the first such step and the site or parameter, which needs the replay to
    see the same draws (a fresh draw reproduces the failure with probability 0.1)."""
    x = torch.randn(16)
    for seed in range(10):
        torch.manual_seed(seed)
        first = 1 + next(s for s in range(200) if float(torch.rand(())) < 0.1)
        torch.manual_seed(seed)
        with pyro.validation_enabled(False), pytest.raises(FloatingPointError) as failure:
            train(_RareBlowUp(where), x, TrainSettings(steps=200, batch_size=4), progress=False)
        assert str(failure.value).endswith(message.format(first)), (seed, str(failure.value))


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
    import pbridge.inference.bound as bound

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
    real_loss = bound.negative_elbo

    def interrupting_loss(*args):
        calls["n"] += 1
        if calls["n"] == 13:
            raise KeyboardInterrupt
        return real_loss(*args)

    variant, path = fresh("cut.pt")
    monkeypatch.setattr(bound, "negative_elbo", interrupting_loss)
    with pytest.raises(KeyboardInterrupt):
        train(variant, x, settings, progress=False, checkpoint=path)
    monkeypatch.setattr(bound, "negative_elbo", real_loss)
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


class _RecordingAdam(torch.optim.Adam):
    """Adam that records the learning rate of every step it takes."""

    rates: list[float] = []

    def step(self, closure=None):
        self.rates.append(self.param_groups[0]["lr"])
        return super().step(closure)


@pytest.mark.parametrize("steps", [1, 2, 7], ids=["1-step", "2-steps", "7-steps"])
@pytest.mark.parametrize("decay", ["cosine", "none"], ids=["cosine", "constant"])
def test_learning_rate_schedule_step_by_step(decay, steps, monkeypatch):
    """Step s of S runs at lr * (1 + cos(pi (s - 1) / S)) / 2 (cosine; the set rate at step 1,
    above 0 at the last step, 0 only after it) or at lr (none)."""
    monkeypatch.setattr(_RecordingAdam, "rates", [])
    monkeypatch.setattr(torch.optim, "Adam", _RecordingAdam)
    lr = 0.01
    train(_Gaussian(), torch.randn(32), TrainSettings(steps, 8, lr, lr_decay=decay), progress=False)
    if decay == "cosine":
        expected = [lr * (1 + math.cos(math.pi * (s - 1) / steps)) / 2 for s in range(1, steps + 1)]
    else:
        expected = [lr] * steps
    assert _RecordingAdam.rates == pytest.approx(expected, rel=1e-12, abs=0.0)


@pytest.mark.parametrize("warmup", [0, 1, 4, 9], ids=["none", "1", "4", "longer-than-run"])
def test_latent_warmup_weights_step_by_step(warmup, monkeypatch):
    """The weight of the latent terms at step s is min(1, s / W): 1/W, 2/W, ..., 1, 1, ...;
    1 throughout without a warm-up."""
    import pbridge.inference.bound as bound

    betas, real_loss = [], bound.negative_elbo

    def recording_loss(variant, x, beta):
        betas.append(beta)
        return real_loss(variant, x, beta)

    monkeypatch.setattr(bound, "negative_elbo", recording_loss)
    settings = TrainSettings(steps=6, batch_size=8, latent_warmup=warmup)
    train(_Gaussian(), torch.randn(32), settings, progress=False)
    expected = [min(1.0, s / warmup) if warmup else 1.0 for s in range(1, 7)]
    assert betas == pytest.approx(expected, rel=1e-12, abs=0.0)


def test_train_takes_a_data_loader_and_passes_over_it_again():
    """A ``DataLoader`` of a ``TensorDataset`` (one tensor: batches of x alone) trains for more
    steps than it has batches; a list of batches too; each step one batch."""
    from torch.utils.data import DataLoader, TensorDataset

    variant = _variant()
    x, _ = sample_walks(96)
    loader = DataLoader(TensorDataset(x), batch_size=32, shuffle=True)
    result = train(variant, loader, TrainSettings(steps=7), progress=False)
    assert len(result.losses) == 7 and all(math.isfinite(v) for v in result.losses)
    seen = []
    real_loss = bound.negative_elbo

    def recording_loss(variant, batch, latent_scale=1.0):
        seen.append(batch.shape[0])
        return real_loss(variant, batch, latent_scale)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bound, "negative_elbo", recording_loss)
        train(variant, [x[:16], x[16:24]], TrainSettings(steps=5), progress=False)
    assert seen == [16, 8, 16, 8, 16]


def test_an_iterable_that_runs_out_or_holds_bad_batches_is_refused_before_training():
    x, _ = sample_walks(32)
    with pytest.raises(ValueError, match="ran out after 1 batches"):
        train(_variant(), (b for b in [x[:16]]), TrainSettings(steps=3), progress=False)
    with pytest.raises(ValueError, match="yields no batch"):
        train(_variant(), [], TrainSettings(steps=3), progress=False)
    with pytest.raises(ValueError, match=r"data items have shape \(2, 4\)"):
        train(_variant(), [x[:16, :, :4]], TrainSettings(steps=3), progress=False)


@pytest.mark.parametrize("scale", [1.0, 0.1], ids=["one-rate", "codes-at-0.1"])
def test_codes_lr_scale_moves_the_encoder_and_codebook_at_their_share_of_the_rate(scale):
    """End to end with ``bridge.codes_lr_scale = s``: Adam's first step moves every parameter
    with a gradient by its group's rate (|m / sqrt(v)| = 1), so the encoder's and the codebook's
    move by s * lr and the decoder's and the chain network's by lr (the network's layers before
    its zero-initialised last one have no gradient yet); the groups hold every parameter
    once."""
    torch.manual_seed(0)
    config = image_preset("digits", "small")
    bridge = dataclasses.replace(config.bridge, codes_lr_scale=scale)
    variant = build_image_model(dataclasses.replace(config, bridge=bridge, unet_width=8))
    before = {name: p.detach().clone() for name, p in variant.named_parameters()}
    lr = 1e-3
    settings = TrainSettings(1, 16, lr, lr_decay="none", clip_norm=1e9, ema_decay=0.0)
    train(variant, load_images("digits", "train").as_float()[:64], settings, progress=False)
    groups = variant.parameter_groups()
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(
        id(p) for p in variant.parameters()
    )
    moved_modules = set()
    for name, p in variant.named_parameters():
        moved = (p.detach() - before[name]).abs()
        moved = moved[moved > 0]
        if moved.numel():
            share = scale if name.startswith(("encoder.", "codebook.")) else 1.0
            assert moved.max().item() == pytest.approx(share * lr, rel=0.02), name
            moved_modules.add(name.split(".")[0])
    assert moved_modules == {"encoder", "codebook", "decoder", "denoiser"}
