"""Training never loses work: checksummed checkpoints, the previous one kept, signals, kills, NaNs,
and inputs that do not fit."""

import errno
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from importlib import metadata
from pathlib import Path

import pyro
import pytest
import torch

import pbridge.inference.bound as bound
import pbridge.inference.svi as svi
from pbridge.checkpoint import (
    CorruptCheckpointError,
    checksum_path,
    load_checkpoint,
    load_latest_checkpoint,
    previous_path,
    save_checkpoint,
)
from pbridge.cli import main
from pbridge.config import ToyConfig, TrainSettings, image_preset
from pbridge.data import UnreadableDataError, load_images
from pbridge.inference.load import load_run
from pbridge.inference.run_dir import environment
from pbridge.inference.svi import TrainingInterrupted, train
from pbridge.models.builders import build_image_model, build_image_vqvae, build_toy_model
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
    names = sorted(p.name for p in tmp_path.iterdir())  # no temporary files
    assert names == ["ck.pt", "ck.pt.prev", "ck.pt.prev.sha256", "ck.pt.sha256"]


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
    real_loss, calls = bound.negative_elbo, {"n": 0}

    def poisoning_loss(v, x, *args):
        calls["n"] += 1
        if calls["n"] == 5:
            with torch.no_grad():
                v.decoder.net.net[-1].bias.fill_(math.nan)
        return real_loss(v, x, *args)

    monkeypatch.setattr(bound, "negative_elbo", poisoning_loss)
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

    real_loss, calls = bound.negative_elbo, {"n": 0}

    def signalling_loss(*args):
        calls["n"] += 1
        if calls["n"] == 7:
            os.kill(os.getpid(), sig)
        return real_loss(*args)

    monkeypatch.setattr(bound, "negative_elbo", signalling_loss)
    path, handler_before = tmp_path / "cut.pt", signal.getsignal(sig)
    with pytest.raises(TrainingInterrupted, match=f"{sig.name} after step 7") as stopped:
        train(_toy(), x, settings, progress=False, checkpoint=path)
    assert stopped.value.step == 7 and load_checkpoint(path)["step"] == 7
    assert signal.getsignal(sig) is handler_before  # the handler is restored
    monkeypatch.setattr(bound, "negative_elbo", real_loss)
    variant = _toy()
    resumed = train(variant, x, settings, progress=False, checkpoint=path, resume=True)
    assert resumed.losses == whole.losses
    for name, value in variant.state_dict().items():
        assert torch.equal(value, reference.state_dict()[name]), name


@pytest.mark.parametrize("latest", ["missing", "corrupt"])
def test_resume_from_the_previous_checkpoint_alone_finishes_the_run(latest, tmp_path, monkeypatch):
    """Only checkpoint.pt.prev (step 10 of 12) is intact, the latest file lost or damaged:
    resume runs steps 11 and 12 only (not the whole run again) and ends exactly where the
    uninterrupted run ended."""
    pyro.enable_validation(False)
    x, settings = _walks(), TrainSettings(steps=12, batch_size=16, checkpoint_every=5)
    reference, path = _toy(), tmp_path / "cut.pt"
    whole = train(reference, x, settings, progress=False, checkpoint=path)
    assert load_checkpoint(previous_path(path))["step"] == 10
    if latest == "missing":
        path.unlink()
        checksum_path(path).unlink()
    else:
        path.write_bytes(b"garbage")
    real_loss, calls = bound.negative_elbo, []

    def counting_loss(*args):
        calls.append(1)
        return real_loss(*args)

    monkeypatch.setattr(bound, "negative_elbo", counting_loss)
    variant = _toy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the damaged latest file is reported
        resumed = train(variant, x, settings, progress=False, checkpoint=path, resume=True)
    assert len(calls) == 2 and resumed.losses == whole.losses
    assert load_checkpoint(path)["step"] == 12
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
    from pbridge.inference.svi import train
    from pbridge.config import ToyConfig, TrainSettings, image_preset
    from pbridge.models.builders import build_toy_model
    from pbridge.config import ToyConfig
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
        (3.0, TypeError, "torch.Tensor, got float"),
        ([[0.0] * 5] * 2, TypeError, "an iterable whose first batch is not a tensor"),
    ],
    ids=["dtype", "shape", "empty", "not-a-tensor", "batches-not-tensors"],
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


def test_loading_a_run_whose_config_no_longer_fits_names_the_setting(run):
    """A config.json edited after training (another d) is refused, naming the setting and the
    checkpoint it contradicts."""
    bigger = json.loads((run / "config.json").read_text())
    bigger["latent_dim"] += 1
    (run / "config.json").write_text(json.dumps(bigger))
    with pytest.raises(
        ValueError, match=r"contradicts .*checkpoint.pt.*latent_dim 3 \(checkpoint: 2\)"
    ):
        load_run(run, device="cpu")


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
        argv = ["train", "digits", "--steps", "3", "--vqvae-steps", "3", "--out", str(out)]
        tiny = ["num_steps=20", "unet_width=8", "max_train=64", "eval_items=16"]
        argv += [item for setting in tiny for item in ("--set", setting)]
        assert main([*argv, "--no-progress"]) == 0
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
            bound.negative_elbo(variant, x).backward()
            grads.append({n: p.grad for n, p in variant.named_parameters() if p.grad is not None})
    finally:
        torch.set_num_threads(threads)
    assert [n for n in grads[0] if not torch.equal(grads[0][n], grads[1][n])] == []


# ---------------------------------------------------------------- the command line
# Every refused command must leave the run directory byte-identical (contents and modes).
@pytest.fixture(scope="module")
def trained_toy(tmp_path_factory):
    """A finished 3-step toy run with tiny networks, trained once for the module's tests
    (copied per test)."""
    out = tmp_path_factory.mktemp("trained") / "toy"
    tiny = ["num_train=256", "num_samples=64", "hidden=16", "denoiser_width=16"]
    argv = ["train", "toy", "--steps", "3", "--out", str(out), "--no-progress"]
    assert main([*argv, *(item for setting in tiny for item in ("--set", setting))]) == 0
    return out


@pytest.fixture
def run(trained_toy, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained_toy, copy)
    return copy


@pytest.fixture
def no_training(monkeypatch):
    """Training raises instead of running (so a command that should have refused fails fast);
    returns the settings it was asked to train with."""
    asked = []

    def refuse(variant, data, settings, *args, **kwargs):
        asked.append(settings)
        raise _Trained(settings.steps)

    monkeypatch.setattr("pbridge.inference.pipeline.train_in_run", refuse)
    return asked


class _Trained(Exception):
    """Training was reached."""


def _snapshot(folder):
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _refused(argv, capsys, status=2):
    """Run the command line; it must exit with ``status`` and one line on stderr, and leave
    every folder named in ``argv`` byte-identical."""
    folders = [Path(a) for a in argv if isinstance(a, Path) and a.is_dir()]
    before = [_snapshot(folder) for folder in folders]
    assert main([str(a) for a in argv]) == status
    assert [_snapshot(folder) for folder in folders] == before
    err = capsys.readouterr().err.strip()
    assert err.startswith("pbridge: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_item1_resume_with_another_data_set_leaves_the_run_intact(run, capsys, no_training):
    before = _snapshot(run)
    err = _refused(["train", "digits", "--out", run, "--resume", "--no-progress"], capsys)
    assert "holds a run on toy, not digits" in err
    assert _snapshot(run) == before
    assert main(["sample", str(run), "--num", "4"]) == 0  # still a working run


def test_item2_an_existing_run_is_kept_unless_resume_or_overwrite(run, capsys, no_training):
    before = _snapshot(run)
    err = _refused(["train", "toy", "--steps", "3", "--out", run, "--no-progress"], capsys)
    assert "already holds a run; pass --resume to continue it or --overwrite" in err
    assert _snapshot(run) == before
    assert main(["sample", str(run), "--num", "4"]) == 0
    with pytest.raises(_Trained):  # --overwrite replaces the run: no stale samples stay
        main(["train", "toy", "--steps", "3", "--out", str(run), "--overwrite", "--no-progress"])
    assert not (run / "samples.pt").exists() and not (run / "samples.png").exists()
    assert not (run / "checkpoint.pt").exists() and not (run / "checkpoint.pt.sha256").exists()


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_item3_resume_of_a_missing_or_empty_directory_refuses(where, tmp_path, capsys, no_training):
    out = tmp_path / "mistyped"
    if where == "empty":
        out.mkdir()
    err = _refused(["train", "toy", "--out", out, "--resume", "--no-progress"], capsys)
    assert f"cannot resume {out}" in err
    assert (where == "empty") == out.exists() and (not out.exists() or not any(out.iterdir()))


def test_item4_resume_takes_the_run_config_and_flags_must_match(run, capsys, no_training):
    before = _snapshot(run)
    for flags, named in [
        (["--steps", "10"], "--steps 10 differs from the run's 3 steps"),
        (["--seed", "1"], "--seed 1 (the run's: 0)"),
        (["--latent-warmup", "5"], "--latent-warmup 5 (the run's: 0)"),
        (["--extend-steps"], "--extend-steps goes with --resume and --steps"),
        (["--steps", "3", "--overwrite"], "give one of them"),
    ]:
        err = _refused(["train", "toy", "--out", run, "--resume", "--no-progress", *flags], capsys)
        assert named in err
        assert _snapshot(run) == before
    (run / "metrics.json").unlink()  # trained but not scored: a resume has work left
    with pytest.raises(_Trained):  # without --steps: the run's own 3 steps, not the preset's
        main(["train", "toy", "--out", str(run), "--resume", "--no-progress"])
    assert no_training[-1].steps == 3
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 3
    with pytest.raises(_Trained):  # extending is explicit, and says what it changes
        main(["train", "toy", "--out", str(run), "--resume", "--steps", "8", "--extend-steps"])
    assert no_training[-1].steps == 8
    assert "cosine learning-rate schedule is recomputed" in capsys.readouterr().err


def test_item5_the_progress_bar_does_not_change_the_run():
    """The bar's summary at step 100 draws random numbers; step 101 must not notice."""
    pyro.enable_validation(False)
    settings = TrainSettings(steps=101, batch_size=16)
    runs = []
    for progress in (False, True):
        variant = _toy()
        result = train(variant, _walks(), settings, progress=progress)
        runs.append((result.losses, variant.state_dict()))
    assert runs[0][0] == runs[1][0]
    for name, value in runs[0][1].items():
        assert torch.equal(value, runs[1][1][name]), name


def test_item6_evaluate_scores_a_toy_run(run, capsys):
    argv = ["evaluate", run, "--items", "64", "--samples", "32", "--chain-steps", "10"]
    assert main([str(a) for a in argv]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert math.isfinite(result["elbo"]) and 0 <= result["transition_accuracy"] <= 1
    assert "image measures" in result["not_applicable"]


def test_item6_out_naming_a_file_refuses(tmp_path, capsys, no_training):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert "is a file" in _refused(["train", "toy", "--out", target], capsys)
    assert target.read_text() == "mine"


def test_item6_ctrl_c_in_sample_exits_130_with_one_line(run, capsys, monkeypatch):
    before = _snapshot(run)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("pbridge.inference.sampling.sample_prior", interrupted)
    err = _refused(["sample", run, "--num", "4", "--no-progress"], capsys, status=130)
    assert "stopped by SIGINT" in err
    assert _snapshot(run) == before


def test_item6_sampler_options_are_refused_before_loading_without_a_trace_dump(
    run, capsys, monkeypatch
):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("pbridge.inference.sample_run.load_run", never)
    for options, named in [
        (["--sampler", "respaced", "--ddim-eta", "2"], "--ddim-eta must lie in [0, 1], got 2.0"),
        (["--ddim-eta", "0.5"], "--ddim-eta applies to the respaced sampler"),
        (["--sampler", "ode", "--method", "srk"], "--method 'srk'"),
        (["--sample-steps", "10"], "the ancestral sampler runs all T steps"),
    ]:
        assert named in _refused(["sample", run, *options], capsys)


def test_item6_pyro_trace_dumps_are_cut_from_the_message(run, capsys):
    err = _refused(["evaluate", run, "--sample-steps", 7], capsys)
    assert "--sample-steps 7: the ancestral sampler runs all T steps" in err
    assert "Trace Shapes" not in err
    with pytest.raises(SystemExit, match="2"):  # the parser's usage line and its error
        main(["train", "toy", "--seed", "-1", "--out", str(run)])
    assert "--seed: must be an integer in 0..2**32 - 1, got -1" in capsys.readouterr().err

    from pyro import poutine

    from pbridge.cli import _one_line

    def model():
        pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))
        raise ValueError("steps_per_item must divide T = 100, got 7")

    with pytest.raises(ValueError, match="Trace Shapes") as raised:
        poutine.trace(model).get_trace()
    assert _one_line(raised.value) == "steps_per_item must divide T = 100, got 7"


def test_item7_a_run_without_a_checkpoint_yet_says_so(run, capsys):
    for name in ("checkpoint.pt", "metrics.json", "train.csv"):  # as before its first one
        (run / name).unlink()
    err = _refused(["sample", run], capsys)
    assert "has no checkpoint yet" in err and "Corrupt" not in err


@pytest.mark.parametrize("finished", [True, False], ids=["scored", "logged"])
def test_a_finished_run_that_lost_its_checkpoint_says_so(finished, run, capsys):
    """Issue 23 item 6: not "no checkpoint yet" for a run that had one."""
    (run / "checkpoint.pt").unlink()
    if not finished:
        (run / "metrics.json").unlink()  # its train.csv still logs the 3 steps
    err = _refused(["sample", run], capsys)
    what = "its training finished" if finished else "its train.csv logs 3 of 3 steps"
    assert f"{run} has no checkpoint.pt (nor checkpoint.pt.prev), yet {what}" in err
    assert "deleted or moved" in err and "no checkpoint yet" not in err


def test_item7_a_broken_config_json_is_named(run, capsys):
    (run / "config.json").write_text('{"num_codes": 8,')
    err = _refused(["sample", run], capsys)
    assert f"{run / 'config.json'} is not valid JSON (line 1" in err


def test_item7_sampling_an_unfinished_run_warns(run, capsys):
    config = json.loads((run / "config.json").read_text())
    config["train"]["steps"] = 5  # as if stopped after 3 of 5 steps
    (run / "config.json").write_text(json.dumps(config))
    assert main(["sample", str(run), "--num", "4"]) == 0
    assert "stopped at step 3 of 5" in capsys.readouterr().err


def test_item7_a_failed_start_leaves_no_directory(tmp_path, capsys):
    out = tmp_path / "new"
    args = ["train", "cifar10", "--root", tmp_path / "no-data", "--out", out]
    assert "CIFAR-10 not found" in _refused(args, capsys)
    assert not out.exists()


def test_item7_a_noisy_bits_per_dim_is_flagged(tmp_path, capsys, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps(image_preset("digits", "small").to_dict()))
    noisy = {"test_bits_per_dim": -33.4, "test_bits_per_dim_stderr": 34.9}
    monkeypatch.setattr("pbridge.inference.run_kinds.evaluate_run", lambda *a, **k: noisy)
    assert main(["evaluate", str(tmp_path)]) == 0
    assert "noise dominates the estimate" in capsys.readouterr().err


def test_item7_the_checkpoint_has_the_mode_of_the_other_files(trained_toy):
    mode = (trained_toy / "config.json").stat().st_mode
    assert (trained_toy / "checkpoint.pt").stat().st_mode == mode
    assert (trained_toy / "checkpoint.pt.sha256").stat().st_mode == mode


def test_item8_a_failed_start_over_a_run_leaves_it_intact(run, capsys):
    before = _snapshot(run)
    for extra in ([], ["--overwrite"]):
        args = ["train", "cifar10", "--root", run / "no-data", "--out", run, *extra]
        _refused(args, capsys)
        assert _snapshot(run) == before
    assert main(["sample", str(run), "--num", "4"]) == 0


def test_item8_a_config_json_that_contradicts_its_checkpoint_is_refused(run, capsys):
    config = json.loads((run / "config.json").read_text())
    config["num_steps"], config["bridge"]["commitment"] = 50, 0.5
    (run / "config.json").write_text(json.dumps(config))
    err = _refused(["sample", run], capsys)
    assert (
        "num_steps 50 (checkpoint: 100)" in err and "bridge.commitment 0.5 (checkpoint: 1.0)" in err
    )


def test_item9_a_read_only_run_is_refused_before_sampling(run, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("sampled before checking the folder")

    monkeypatch.setattr("pbridge.inference.sampling.sample_prior", never)
    run.chmod(0o555)
    try:
        if os.geteuid() == 0:  # root writes anywhere: the folder answers as a read-only one

            def read_only(*args, **kwargs):
                raise PermissionError(13, "Permission denied")

            monkeypatch.setattr(tempfile, "mkstemp", read_only)
        err = _refused(["sample", run], capsys)
    finally:
        run.chmod(0o755)
    assert f"cannot write to {run}" in err


def test_item9_a_full_disk_is_one_line_and_leaves_no_partial_file(run, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("pbridge.inference.sample_run.torch.save", full)
    quiet = ["sample", run, "--num", "4", "--no-progress"]  # stderr: the error line alone
    err = _refused(quiet, capsys)
    assert f"No space left on device: '{run / 'samples.pt'}'" in err  # the file is named
    assert not (run / "samples.pt").exists() and not list(run.glob(".*tmp*"))


def test_item9_an_absurd_number_of_draws_is_refused_up_front(run, capsys):
    err = _refused(["sample", run, "--num", 10**9], capsys)
    assert "1000000000 draws need at least" in err


def test_absurd_draws_in_evaluate_are_refused_before_anything_is_written(run, capsys):
    before = _snapshot(run)
    assert "draws need at least" in _refused(["evaluate", run, "--samples", 10**9], capsys)
    assert _snapshot(run) == before


def test_flags_that_do_not_apply_are_refused(tmp_path, capsys, no_training):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("mine")
    for argv, named in [
        (
            ["train", "toy", "--preset", "paper", "--out", tmp_path / "a"],
            "--preset applies to image",
        ),
        (["train", "toy", "--out", busy], "is not empty and holds no run"),
    ]:
        assert named in _refused(argv, capsys)
    assert not (tmp_path / "a").exists() and [p.name for p in busy.iterdir()] == ["thesis.tex"]


def test_running_out_of_memory_while_sampling_is_one_line(run, capsys, monkeypatch):
    def exhausted(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8")

    monkeypatch.setattr("pbridge.inference.sampling.sample_prior", exhausted)
    quiet = ["sample", run, "--num", "4", "--no-progress"]  # stderr: the error line alone
    assert "pbridge: out of memory: " in _refused(quiet, capsys)


def test_item9_the_nan_guard_is_one_line_and_a_fresh_run_leaves_nothing(
    tmp_path, capsys, monkeypatch
):
    def diverged(*args, **kwargs):
        raise FloatingPointError("non-finite loss at step 1: z_q_0 (model)")

    monkeypatch.setattr("pbridge.inference.pipeline.train_in_run", diverged)
    out = tmp_path / "new"
    err = _refused(["train", "toy", "--out", out, "--no-progress"], capsys)
    assert err == "pbridge: FloatingPointError: non-finite loss at step 1: z_q_0 (model)"
    assert not out.exists()


def test_item9_a_variant_file_whose_build_fails_is_one_line(tmp_path, capsys):
    source = tmp_path / "broken.py"
    source.write_text("def build(config):\n    raise RuntimeError('no such layer')\n")
    err = _refused(["train", source, "--out", tmp_path / "out"], capsys)
    assert f"build() in {source} failed: RuntimeError: no such layer" in err
    assert not (tmp_path / "out").exists()


def _idx(path, shape, cut=0):
    header = bytes([0, 0, 8, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape)
    body = bytes(math.prod(shape))
    path.write_bytes((header + body)[: len(header) + len(body) - cut])


def test_item10_a_truncated_idx_file_is_named(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 6), ("t10k", 4)):
        _idx(raw / f"{split}-images-idx3-ubyte", (n, 28, 28), cut=100 if split == "t10k" else 0)
        _idx(raw / f"{split}-labels-idx1-ubyte", (n,))
    with pytest.raises(UnreadableDataError, match="t10k-images-idx3-ubyte is truncated"):
        load_images("fashion-mnist", "test", root=tmp_path)
    assert load_images("fashion-mnist", "train", root=tmp_path).images.shape == (6, 1, 28, 28)


def test_item10_a_string_where_a_number_belongs_is_named(run, capsys):
    config = json.loads((run / "config.json").read_text())
    config["train"]["steps"] = "3"
    (run / "config.json").write_text(json.dumps(config))
    assert "train.steps must be int, got '3'" in _refused(["sample", run], capsys)


def test_item10_temporary_files_of_a_killed_checkpoint_write_are_removed(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1}, path)
    stale = tmp_path / "checkpoint.ptk1l2x9.tmp"  # as left by SIGKILL during a write
    stale.write_bytes(b"half")
    (tmp_path / "checkpoint.pt.sha256k3j4.tmp").write_bytes(b"half")
    save_checkpoint({"step": 2}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.pt",
        "checkpoint.pt.prev",
        "checkpoint.pt.prev.sha256",
        "checkpoint.pt.sha256",
    ]


def test_an_image_folder_of_mixed_sizes_loads_and_a_broken_image_is_named(tmp_path):
    from PIL import Image

    folder = tmp_path / "miniimagenet" / "test" / "n01"
    folder.mkdir(parents=True)
    Image.new("RGB", (120, 90), (200, 10, 10)).save(folder / "wide.png")
    Image.new("L", (84, 84), 128).save(folder / "grey.png")
    (folder / "notes.txt").write_text("not an image, not listed")
    assert load_images("miniimagenet", "test", root=tmp_path).images.shape == (2, 3, 84, 84)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(UnreadableDataError, match="broken.jpg is not a readable image"):
        load_images("miniimagenet", "test", root=tmp_path)


def test_sample_progress_shows_lines_is_silenced_and_never_changes_the_draws(run, capsys):
    """``pbridge sample`` says what it draws and shows the chain's steps as plain lines on a
    stderr that is not a terminal (no carriage returns); ``--no-progress`` shows nothing; the
    samples are the same bits either way."""
    assert main(["sample", str(run), "--num", "8"]) == 0
    err = capsys.readouterr().err
    assert "drawing 8 samples ..." in err and "backward chain (ancestral), 8 draws: " in err
    assert "/99 steps" in err and "\r" not in err
    shown = torch.load(run / "samples.pt", weights_only=True)
    assert main(["sample", str(run), "--num", "8", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    hidden = torch.load(run / "samples.pt", weights_only=True)
    assert all(torch.equal(shown[name], hidden[name]) for name in shown)


@pytest.fixture
def launches(monkeypatch):
    """The torchrun launches of ``pbridge train --devices N``, recorded instead of run."""
    commands = []

    def record(command, **kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr("pbridge.cli.subprocess.run", record)
    return commands


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--devices", "3"], "--devices 3: the batch of 256 items (train.batch_size) must be "
         "shared evenly by the 3 processes; give --batch-size 255 or 258"),
        (["--devices", "2", "--nodes", "2", "--rdzv-endpoint", "h:1", "--batch-size", "6"],
         "--devices 2 --nodes 2: the batch of 6 items (train.batch_size) must be shared evenly "
         "by the 4 processes; give --batch-size 4 or 8"),
        (["--devices", "2", "--nodes", "2"], "--nodes 2 needs --rdzv-endpoint HOST:PORT"),
        (["--devices", "2", "--nodes", "2", "--rdzv-endpoint", "host"],
         "--rdzv-endpoint 'host' must be HOST:PORT"),
    ],
    ids=["batch-not-divisible", "batch-not-divisible-over-nodes", "no-rendezvous",
         "bad-rendezvous"],
)  # fmt: skip
def test_a_data_parallel_launch_is_checked_before_torchrun_starts(
    argv, named, tmp_path, capsys, launches
):
    out = tmp_path / "run"
    err = _refused(["train", "toy", "--out", out, *argv], capsys)
    assert err.startswith("pbridge: ValueError: ") and named in err, err
    assert launches == [] and not out.exists()


def test_a_data_parallel_launch_that_fits_starts_torchrun(tmp_path, launches):
    argv = ["train", "toy", "--out", str(tmp_path / "run"), "--devices", "2", "--device", "cpu"]
    assert main(argv) == 0
    (command,) = launches
    assert command[1:6] == ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]
    assert command[6:] == ["-m", "pbridge.cli", *argv[:4], "--device", "cpu"]


def test_metrics_json_is_strict_json_with_null_where_a_number_is_undefined(tmp_path, capsys):
    """A one-batch standard error (NaN) is written null, which strict parsers read; the
    readers of the scores take null."""
    from pbridge.inference.evaluate import results_table
    from pbridge.inference.run_dir import json_text, write_json

    def strict(text):
        return json.loads(text, parse_constant=lambda word: pytest.fail(f"{word} in JSON"))

    metrics = {"test_bits_per_dim": 1.5, "test_bits_per_dim_stderr": math.nan, "a": [math.inf]}
    write_json(tmp_path / "metrics.json", metrics)
    read = strict((tmp_path / "metrics.json").read_text())
    assert read == {"test_bits_per_dim": 1.5, "test_bits_per_dim_stderr": None, "a": [None]}
    assert strict(json_text(metrics)) == read
    scores = {"masked_patch_bits_per_cell": None, "masked_patch_bits_per_cell_stderr": None}
    scores |= {"codes_used": 3, "sampling_seconds_per_image": 0.1, **read}
    assert "| run | 1.50 | n/a |" in results_table({"run": scores})
    in_memory = scores | {"test_bits_per_dim_stderr": math.nan}  # eval.md from the run's dict
    assert "| run | 1.50 | n/a |" in results_table({"run": in_memory})


def test_a_checkpoint_copied_without_its_checksum_says_how_to_accept_it(tmp_path):
    save_checkpoint({"step": 3}, tmp_path / "checkpoint.pt")
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(tmp_path / "checkpoint.pt", copy / "checkpoint.pt")
    with pytest.raises(CorruptCheckpointError) as refused:
        load_checkpoint(copy / "checkpoint.pt")
    advice = "run `sha256sum checkpoint.pt > checkpoint.pt.sha256` in " + str(copy)
    assert advice in str(refused.value)
    if shutil.which("sha256sum"):  # the advice, followed: sha256sum's own line is read
        subprocess.run("sha256sum checkpoint.pt > checkpoint.pt.sha256", shell=True, cwd=copy)
    else:
        digest = hashlib.sha256((copy / "checkpoint.pt").read_bytes()).hexdigest()
        (copy / "checkpoint.pt.sha256").write_text(f"{digest}  checkpoint.pt\n")
    assert load_checkpoint(copy / "checkpoint.pt")["step"] == 3


@pytest.mark.filterwarnings("always")  # as outside the tests, where warnings are not errors
def test_other_libraries_warnings_keep_their_category_and_source(tmp_path, capsys, monkeypatch):
    """pbridge's own warnings read ``pbridge: warning: ...``; numpy's keep their category and
    file, on one line."""
    import numpy as np

    def warn_twice(*args, **kwargs):
        np.mean(np.array([]))  # numpy: RuntimeWarning, Mean of empty slice
        own = svi.__file__, 1, "pbridge.inference.svi"
        warnings.warn_explicit("a warning of pbridge's own", UserWarning, *own)
        return {}

    monkeypatch.setattr("pbridge.inference.toy.run_toy", warn_twice)
    assert main(["train", "toy", "--out", str(tmp_path / "run")]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    numpy_line = next(line for line in lines if "Mean of empty slice" in line)
    assert "numpy" in numpy_line and ": RuntimeWarning: Mean of empty slice" in numpy_line
    assert not numpy_line.startswith("pbridge:")
    assert "pbridge: warning: a warning of pbridge's own" in lines


def test_version_is_printed_without_importing_torch():
    code = (
        "import sys, runpy; sys.argv = ['pbridge', '--version']\n"
        "try:\n    runpy.run_module('pbridge.cli', run_name='__main__')\n"
        "except SystemExit as done:\n    assert done.code == 0\n"
        "print('torch' in sys.modules, 'pyro' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["pbridge", metadata.version("pbridge"), "False", "False"]
