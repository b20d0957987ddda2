"""Training never loses work: checksummed checkpoints, the previous one kept, signals, kills, NaNs,
and inputs that do not fit."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pyro
import pytest
import torch

import pbridge.inference.svi as svi
from pbridge.checkpoint import (
    CorruptCheckpointError,
    load_checkpoint,
    load_latest_checkpoint,
    previous_path,
    save_checkpoint,
)
from pbridge.cli import main
from pbridge.data import UnreadableDataError, load_images
from pbridge.inference.run_dir import environment, load_run
from pbridge.inference.svi import TrainingInterrupted, TrainSettings, train
from pbridge.presets import (
    ImageConfig,
    ToyConfig,
    build_image_model,
    build_image_vqvae,
    build_toy_model,
    image_preset,
)
from pbridge.toy import sample_walks


def _toy(**kwargs):
    torch.manual_seed(0)
    return build_toy_model(ToyConfig(denoiser_width=32, denoiser_blocks=1, **kwargs))


def _walks(n=256):
    return sample_walks(n, generator=torch.Generator().manual_seed(0))[0]


# ---------------------------------------------------------------- checkpoint files
def test_checkpoint_round_trip_and_the_previous_one_is_kept(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint({"step": 1, "w": torch.arange(3.0)}, path)
    save_checkpoint({"step": 2, "w": torch.arange(4.0)}, path)
    assert load_checkpoint(path)["step"] == 2
    assert torch.equal(load_checkpoint(previous_path(path))["w"], torch.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt", "ck.pt.prev"]  # no temp files


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign"])
def test_a_damaged_checkpoint_is_detected_and_the_previous_one_used(tmp_path, damage):
    path = tmp_path / "ck.pt"
    save_checkpoint({"step": 1}, path)
    save_checkpoint({"step": 2, "w": torch.ones(1000)}, path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-100] + bytes([data[-100] ^ 1]) + data[-99:])
    else:
        torch.save({"step": 2}, path)
    with pytest.raises(CorruptCheckpointError, match="ck.pt"):
        load_checkpoint(path)
    with pytest.warns(UserWarning, match="resuming from the previous checkpoint"):
        state, used = load_latest_checkpoint(path)
    assert state["step"] == 1 and used == previous_path(path)
    previous_path(path).write_bytes(b"garbage")
    with pytest.raises(CorruptCheckpointError, match="no usable checkpoint.*ck.pt.prev"):
        load_latest_checkpoint(path)


# ---------------------------------------------------------------- NaN guard
@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_nan_names_the_step_and_the_site_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    """A NaN decoder appears before step 5: the error names step 5 and the observation site whose
    log-density went non-finite; the checkpoint of step 4 is intact and finite."""
    pyro.enable_validation(False)
    variant, path = _toy(), tmp_path / "ck.pt"
    real_loss, calls = svi.negative_elbo, {"n": 0}

    def poisoning_loss(v, x, *args):
        calls["n"] += 1
        if calls["n"] == 5:
            with torch.no_grad():
                v.decoder.net.net[-1].bias.fill_(math.nan)
        return real_loss(v, x, *args)

    monkeypatch.setattr(svi, "negative_elbo", poisoning_loss)
    settings = TrainSettings(steps=10, batch_size=16, checkpoint_every=2)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 5: x \(model\)"):
        train(variant, _walks(), settings, progress=False, checkpoint=path)
    state = load_checkpoint(path)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nan_gradient_names_the_parameter():
    variant = _toy()
    variant.codebook.weight.register_hook(lambda grad: grad * math.nan)
    with pytest.raises(FloatingPointError, match="gradient at step 1 in codebook.weight"):
        train(variant, _walks(), TrainSettings(steps=3, batch_size=16), progress=False)


# ---------------------------------------------------------------- signals and kills
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_checkpoints_the_current_step_and_resume_finishes_the_run(
    sig, tmp_path, monkeypatch
):
    """The signal arrives during step 7: that step completes, is checkpointed, training stops
    with TrainingInterrupted; resuming ends exactly where an uninterrupted run ends."""
    pyro.enable_validation(False)
    x, settings = _walks(), TrainSettings(steps=12, batch_size=16, checkpoint_every=5)
    reference = _toy()
    whole = train(reference, x, settings, progress=False, checkpoint=tmp_path / "whole.pt")

    real_loss, calls = svi.negative_elbo, {"n": 0}

    def signalling_loss(*args):
        calls["n"] += 1
        if calls["n"] == 7:
            os.kill(os.getpid(), sig)
        return real_loss(*args)

    monkeypatch.setattr(svi, "negative_elbo", signalling_loss)
    path, handler_before = tmp_path / "cut.pt", signal.getsignal(sig)
    with pytest.raises(TrainingInterrupted, match=f"{sig.name} after step 7") as stopped:
        train(_toy(), x, settings, progress=False, checkpoint=path)
    assert stopped.value.step == 7 and load_checkpoint(path)["step"] == 7
    assert signal.getsignal(sig) is handler_before  # the handler is restored
    monkeypatch.setattr(svi, "negative_elbo", real_loss)
    variant = _toy()
    resumed = train(variant, x, settings, progress=False, checkpoint=path, resume=True)
    assert resumed.losses == whole.losses
    for name, value in variant.state_dict().items():
        assert torch.equal(value, reference.state_dict()[name]), name


def test_interrupted_command_line_exits_with_the_signal_status(tmp_path, monkeypatch, capsys):
    def stopped(*args, **kwargs):
        raise TrainingInterrupted(42, "SIGTERM", tmp_path / "checkpoint.pt")

    monkeypatch.setattr("pbridge.inference.toy.run_toy", stopped)
    assert main(["train", "toy", "--out", str(tmp_path)]) == 128 + signal.SIGTERM
    assert "SIGTERM after step 42" in capsys.readouterr().err


_CHILD = textwrap.dedent(
    """
    import sys, torch, pyro
    from pbridge.inference.svi import TrainSettings, train
    from pbridge.presets import ToyConfig, build_toy_model
    from pbridge.toy import sample_walks
    path, resume, out = sys.argv[1], sys.argv[2] == "resume", sys.argv[3]
    pyro.enable_validation(False)
    torch.manual_seed(0)
    variant = build_toy_model(ToyConfig(denoiser_width=32, denoiser_blocks=1))
    x = sample_walks(256, generator=torch.Generator().manual_seed(0))[0]
    settings = TrainSettings(steps=400, batch_size=16, checkpoint_every=10)
    train(variant, x, settings, progress=False, checkpoint=path, resume=resume)
    torch.save(variant.state_dict(), out)
    """
)


def _child(tmp_path, *args):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    return subprocess.Popen([sys.executable, str(script), *map(str, args)])


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path):
    """A training process killed with SIGKILL (no chance to clean up) after its checkpoint of
    step >= 50 resumes from the last intact checkpoint and ends with exactly the parameters of
    an uninterrupted run; it lost at most one checkpoint interval (10 steps)."""
    reference = _child(tmp_path, tmp_path / "whole.pt", "fresh", tmp_path / "whole.out")
    path = tmp_path / "cut.pt"
    victim = _child(tmp_path, path, "fresh", tmp_path / "never.out")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if load_checkpoint(path)["step"] >= 50:
                break
        except (FileNotFoundError, CorruptCheckpointError, EOFError, RuntimeError):
            pass
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert not (tmp_path / "never.out").exists()  # it really died mid-run
    state, _ = load_latest_checkpoint(path)
    assert 50 <= state["step"] < 400 and len(state["losses"]) == state["step"]
    resumed = _child(tmp_path, path, "resume", tmp_path / "resumed.out")
    assert resumed.wait() == 0 and reference.wait() == 0
    whole = torch.load(tmp_path / "whole.out", weights_only=True)
    again = torch.load(tmp_path / "resumed.out", weights_only=True)
    for name, value in whole.items():
        assert torch.equal(value, again[name]), name


# ---------------------------------------------------------------- inputs that do not fit
@pytest.mark.parametrize(
    "data, error, match",
    [
        (torch.zeros(8, 2, 5, dtype=torch.uint8), TypeError, "floating point.*torch.uint8"),
        (torch.zeros(8, 3, 5), ValueError, r"shape \(3, 5\), the variant expects \(2, 5\)"),
        (torch.zeros(0, 2, 5), ValueError, "empty"),
        ([[0.0] * 5] * 2, TypeError, "torch.Tensor, got list"),
    ],
    ids=["dtype", "shape", "empty", "not-a-tensor"],
)
def test_training_data_that_do_not_fit_are_refused_up_front(data, error, match):
    with pytest.raises(error, match=match):
        train(_toy(), data, TrainSettings(steps=1), progress=False)


def test_nan_in_the_data_names_the_item():
    x = _walks(32)
    x[17, 1, 3] = math.nan
    with pytest.raises(ValueError, match="NaN or inf values \\(first in item 17\\)"):
        train(_toy(), x, TrainSettings(steps=1), progress=False)


def test_resuming_with_another_codebook_size_names_the_tensor(tmp_path):
    path = tmp_path / "ck.pt"
    train(_toy(), _walks(), TrainSettings(steps=2, batch_size=8), False, checkpoint=path)
    with pytest.raises(ValueError, match=r"codebook.weight: checkpoint \(8, 2\), model \(6, 2\)"):
        train(_toy(num_codes=6), _walks(), TrainSettings(steps=4), False, path, resume=True)


def test_resuming_another_variant_is_refused(tmp_path):
    pyro.enable_validation(False)
    config = image_preset("digits", "small")
    x = load_images("digits", "train").as_float()[:64]
    path = tmp_path / "ck.pt"
    train(build_image_vqvae(config), x, TrainSettings(steps=1, batch_size=8), False, path)
    with pytest.raises(ValueError, match="written by a VQVAE run; cannot resume a DiffusionBridge"):
        train(build_image_model(config), x, TrainSettings(steps=2), False, path, resume=True)


def test_loading_a_run_whose_config_no_longer_fits_names_the_tensor(tmp_path):
    pyro.enable_validation(False)
    config = image_preset("digits", "small")
    assert main(["train", "digits", "--steps", "2", "--out", str(tmp_path), "--no-progress"]) == 0
    bigger = json.loads((tmp_path / "config.json").read_text())
    bigger["latent_dim"] = config.latent_dim + 1
    (tmp_path / "config.json").write_text(json.dumps(bigger))
    wrong_d = (
        r"fit this DiffusionBridgeVQVAE: .*checkpoint \(16, 32, 1, 1\), model \(17, 32, 1, 1\)"
    )
    with pytest.raises(ValueError, match=wrong_d):
        load_run(tmp_path, ImageConfig.from_dict, build_image_model, "cpu")


def test_unreadable_data_names_the_folder(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            (raw / f"{split}-{kind}-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(UnreadableDataError, match=f"fashion-mnist test split under {tmp_path}"):
        load_images("fashion-mnist", "test", root=tmp_path)


# ---------------------------------------------------------------- reproducibility
def test_same_seed_same_bits_and_the_run_records_its_environment(tmp_path):
    """Two runs with one seed and config are bit-identical; environment.json names the versions
    and the commit."""
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["train", "digits", "--steps", "3", "--out", str(out), "--no-progress"]) == 0
        runs.append(load_checkpoint(out / "checkpoint.pt"))
    for key, value in runs[0]["model"].items():
        assert torch.equal(value, runs[1]["model"][key]), key
    assert runs[0]["losses"] == runs[1]["losses"]
    recorded = json.loads((tmp_path / "a" / "environment.json").read_text())
    assert recorded["torch"] == torch.__version__ and recorded["pyro"] == pyro.__version__
    assert set(recorded) >= {"python", "torchsde", "pbridge", "git_commit", "git_dirty"}
    assert recorded == {**environment(), "git_dirty": recorded["git_dirty"], "processes": 1}


# ---------------------------------------------------------------- the library API
def test_library_functions_check_shapes_up_front():
    from pbridge.ou_bridge import image_schedule
    from pbridge.samplers import reverse_sample

    schedule = image_schedule(10)
    with pytest.raises(
        ValueError, match=r"shape \(B,\) for states of shape .* \(4, 2, 3\), got \(3,\)"
    ):
        schedule.marginal(torch.zeros(4, 2, 3), torch.ones(3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        schedule.marginal(torch.zeros(4, 2, 3), torch.ones(4))
    denoiser = build_image_model(image_preset("digits", "small")).denoiser
    with pytest.raises(ValueError, match=r"z_T must be .* got \(16,\)"):
        reverse_sample(schedule, denoiser, torch.zeros(16))
    with pytest.raises(ValueError, match="NaN or inf"):
        reverse_sample(schedule, denoiser, torch.full((1, 16, 4, 4), math.nan))


def test_image_gradients_are_bit_identical_across_passes():
    """Same seed, same batch, two threads: every gradient is bit-identical (indexing the codebook
    with ``codes[k]`` was not: its backward accumulates in a thread-dependent order)."""
    pyro.enable_validation(False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = load_images("digits", "train").as_float()[:64]
        x = torch.nn.functional.interpolate(x, size=(28, 28)).round(decimals=2)
        grads = []
        for _ in range(2):
            torch.manual_seed(0)
            variant = build_image_model(image_preset("fashion-mnist", "small"))
            variant.initialise_codebook(x)
            pyro.set_rng_seed(0)
            svi.negative_elbo(variant, x).backward()
            grads.append({n: p.grad for n, p in variant.named_parameters() if p.grad is not None})
    finally:
        torch.set_num_threads(threads)
    assert [n for n in grads[0] if not torch.equal(grads[0][n], grads[1][n])] == []
