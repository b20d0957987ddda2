"""The training log (train.csv, plain progress lines), the hooks, and the EMA of the weights:
none of them changes the trained bits, and the EMA resumes bit-exactly."""

import csv
import math

import pyro
import pytest
import torch

import pbridge.inference.bound as bound
import pbridge.inference.svi as svi
from pbridge.checkpoint import load_checkpoint, save_checkpoint
from pbridge.cli import main
from pbridge.config import ToyConfig, TrainSettings, image_preset
from pbridge.data import load_images
from pbridge.inference.load import load_run
from pbridge.inference.svi import train
from pbridge.inference.train_hooks import toy_grid, training_hooks
from pbridge.inference.training_log import STEP_COLUMNS, SUMMARY_COLUMNS
from pbridge.models.builders import build_image_model, build_toy_model
from pbridge.toy import sample_walks


def _toy():
    torch.manual_seed(0)
    return build_toy_model(ToyConfig(denoiser_width=32, denoiser_blocks=1))


def _digits():
    torch.manual_seed(0)
    return build_image_model(image_preset("digits", "small"))


def _walks(n=256, seed=0):
    return sample_walks(n, generator=torch.Generator().manual_seed(seed))[0]


def _rows(path):
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def test_the_csv_has_one_row_per_step_and_the_documented_columns(tmp_path):
    """7 steps, the summary every 3 and the held-out bound every 5 steps (and both at the last
    step): the loss, lr, gradient norm and time in every row, the other cells empty between."""
    pyro.enable_validation(False)
    settings = TrainSettings(steps=7, batch_size=16, log_every=3, eval_every=5, heldout_items=32)
    hooks = training_hooks(settings, tmp_path, _walks(64, seed=1))
    result = train(_toy(), _walks(), settings, False, log=tmp_path / "train.csv", hooks=hooks)
    header, rows = _rows(tmp_path / "train.csv")
    terms = ["term_z_q_0", "term_x"]  # the tight bound: the chain is in z_q_0's term
    assert header == [
        *STEP_COLUMNS,
        *SUMMARY_COLUMNS,
        *terms,
        "heldout_neg_elbo",
        "heldout_bits_per_dim",
    ]
    assert [int(r["step"]) for r in rows] == list(range(1, 8))
    assert [float(r["loss"]) for r in rows] == result.losses
    lr = [0.5 * settings.lr * (1 + math.cos(math.pi * s / 7)) for s in range(7)]
    assert [float(r["lr"]) for r in rows] == pytest.approx(lr, rel=1e-12)
    assert all(float(r["grad_norm"]) > 0 and float(r["seconds"]) > 0 for r in rows)
    summarised = [int(r["step"]) for r in rows if r["neg_elbo"]]
    assert summarised == [3, 6, 7]
    for r in rows:
        filled = [bool(r[c]) for c in (*SUMMARY_COLUMNS, *terms)]
        assert all(filled) if int(r["step"]) in summarised else not any(filled)
        if r["neg_elbo"]:
            split = -sum(float(r[t]) for t in terms)
            assert float(r["neg_elbo"]) == pytest.approx(split, rel=1e-6)
    assert [int(r["step"]) for r in rows if r["heldout_neg_elbo"]] == [5, 7]
    assert all(
        math.isfinite(float(r["heldout_bits_per_dim"])) for r in rows if r["heldout_neg_elbo"]
    )


@pytest.mark.parametrize("build, data", [(_toy, _walks), (_digits, None)], ids=["toy", "digits"])
def test_logging_and_hooks_do_not_change_the_run(build, data, tmp_path):
    """Same seed, logging off vs on (progress lines, CSV, the summary and held-out bound at
    every step, a sample grid): identical losses and final state (parameters, BatchNorm
    statistics, step costs, EMA)."""
    pyro.enable_validation(False)
    x = data() if data else load_images("digits", "train").as_float()[:64]
    settings = TrainSettings(steps=4, batch_size=8, log_every=1, eval_every=1, sample_every=2)
    runs = []
    for logged in (False, True):
        variant = build()
        hooks = training_hooks(settings, tmp_path, x[:16], toy_grid(4) if data else None)
        kwargs = dict(log=tmp_path / "train.csv", hooks=hooks) if logged else {}
        result = train(variant, x, settings, progress=logged, **kwargs)
        runs.append((result, variant.state_dict()))
    (off, off_state), (on, on_state) = runs
    assert off.losses == on.losses
    assert [n for n in off_state if not torch.equal(off_state[n], on_state[n])] == []
    assert [n for n in off.ema if not torch.equal(off.ema[n], on.ema[n])] == []
    assert len(_rows(tmp_path / "train.csv")[1]) == 4
    if data:
        assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
            "step_000002.png",
            "step_000004.png",
        ]


def test_progress_without_a_terminal_prints_plain_lines(capsys):
    """stderr is not a terminal under pytest's capture: one plain line per ``log_every`` steps
    (and the last), no carriage return of a progress bar."""
    pyro.enable_validation(False)
    train(_toy(), _walks(), TrainSettings(steps=5, batch_size=8, log_every=2), progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.strip().splitlines()
    assert [line.split()[2] for line in lines] == ["2/5", "4/5", "5/5"]
    assert all("loss" in line and "bits_per_dim" in line for line in lines)


def test_an_interrupted_run_resumes_to_the_same_ema_and_one_csv_row_per_step(tmp_path, monkeypatch):
    """Interrupted at step 13 (checkpoints every 5), resumed from step 10: the EMA weights in
    the checkpoint and the result equal an uninterrupted run's bit for bit, and differ from the
    raw weights; train.csv holds each step once."""
    pyro.enable_validation(False)
    x = _walks()
    settings = TrainSettings(steps=20, batch_size=16, checkpoint_every=5, ema_decay=0.9)
    whole = train(_toy(), x, settings, False, tmp_path / "whole.pt", log=tmp_path / "whole.csv")

    calls, real_loss = {"n": 0}, bound.negative_elbo

    def interrupting_loss(*args):
        calls["n"] += 1
        if calls["n"] == 13:
            raise KeyboardInterrupt
        return real_loss(*args)

    path, log = tmp_path / "cut.pt", tmp_path / "cut.csv"
    monkeypatch.setattr(bound, "negative_elbo", interrupting_loss)
    with pytest.raises(KeyboardInterrupt):
        train(_toy(), x, settings, False, path, log=log)
    monkeypatch.setattr(bound, "negative_elbo", real_loss)
    assert load_checkpoint(path)["step"] == 10
    assert [int(r["step"]) for r in _rows(log)[1]] == list(range(1, 13))  # flushed to step 12
    torch.manual_seed(123)
    variant = _toy()
    resumed = train(variant, x, settings, False, path, resume=True, log=log)
    assert resumed.losses == whole.losses
    saved = load_checkpoint(path)
    for name, value in whole.ema.items():
        assert torch.equal(value, resumed.ema[name]), name
        assert torch.equal(value, saved["ema"][name]), name
    assert saved["ema_updates"] == 20
    weight = "decoder.net.net.0.weight"
    assert not torch.equal(resumed.ema[weight], variant.state_dict()[weight])
    whole_rows, cut_rows = _rows(tmp_path / "whole.csv")[1], _rows(log)[1]
    assert [int(r["step"]) for r in cut_rows] == list(range(1, 21))
    assert [r["loss"] for r in cut_rows] == [r["loss"] for r in whole_rows]


def test_the_ema_warms_up_then_decays_at_its_set_rate():
    """AveragedModel with warmup_ema, fed the weights w_1..w_N, against the recursion written
    out: e_1 = w_1, e_{n+1} = d_n e_n + (1 - d_n) w_{n+1}, d_n = min(decay, (1 + n) / (10 + n));
    an integer buffer follows the weights."""
    layer = torch.nn.Linear(1, 1, bias=False, dtype=torch.float64)
    layer.register_buffer("count", torch.zeros((), dtype=torch.long))
    decay, weights = 0.9, torch.linspace(-1.0, 3.0, 60, dtype=torch.float64) ** 2
    ema = svi.AveragedModel(layer, multi_avg_fn=svi.warmup_ema(decay), use_buffers=True)
    expected = None
    for n, w in enumerate(weights.tolist()):
        layer.weight.data.fill_(w)
        layer.count.fill_(n)
        ema.update_parameters(layer)
        d = min(decay, (1 + n) / (10 + n))
        expected = w if expected is None else d * expected + (1 - d) * w
    assert ema.module.weight.item() == pytest.approx(expected, rel=1e-12)
    assert int(ema.module.count) == len(weights) - 1
    assert svi.ema_decay_at(decay, 1) == pytest.approx(2 / 11)  # warm-up: the early weights
    assert svi.ema_decay_at(decay, 500) == decay  # count little


def test_without_ema_no_average_is_kept():
    pyro.enable_validation(False)
    result = train(_toy(), _walks(), TrainSettings(steps=2, batch_size=8, ema_decay=0.0), False)
    assert result.ema is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ema_decay=1.0), "ema_decay must be a finite number >= 0 and < 1"),
        (dict(log_every=0), "log_every must be a positive"),
        (dict(eval_every=-1), "eval_every must be an integer >= 0"),
        (dict(sample_every=-5), "sample_every must be an integer >= 0"),
    ],
    ids=["ema", "log", "eval", "sample"],
)
def test_bad_log_settings_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainSettings(**kwargs)


def test_runs_sample_the_ema_weights_by_default_and_old_checkpoints_their_raw_ones(
    tmp_path, capsys
):
    run = tmp_path / "run"
    assert main(["train", "toy", "--steps", "3", "--out", str(run), "--no-progress"]) == 0
    assert (run / "train.csv").is_file() and (run / "samples" / "step_000003.png").is_file()
    state = load_checkpoint(run / "checkpoint.pt")
    default = load_run(run, device="cpu").variant
    raw = load_run(run, weights="raw", device="cpu").variant
    for name, value in default.state_dict().items():
        assert torch.equal(value, state["ema"][name]), name
        assert torch.equal(raw.state_dict()[name], state["model"][name]), name
    assert main(["sample", str(run), "--num", "4", "--weights", "raw"]) == 0

    del state["ema"], state["ema_updates"]  # as written before the EMA was kept
    save_checkpoint(state, run / "checkpoint.pt")
    old = load_run(run, device="cpu").variant
    for name, value in old.state_dict().items():
        assert torch.equal(value, state["model"][name]), name
    capsys.readouterr()
    assert main(["sample", str(run), "--num", "4", "--weights", "ema"]) == 2
    assert "holds no EMA weights" in capsys.readouterr().err


def test_progress_lines_count_items_in_plural(capsys):
    """A counter without a terminal prints lines naming its unit in the plural."""
    from pbridge.inference.progress import Progress

    assert list(Progress().iterate(range(3), 3, "test bound", "batch")) == [0, 1, 2]
    assert list(Progress().iterate(range(2), 2, "chain", "step")) == [0, 1]
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        *(f"test bound: {i}/3 batches" for i in (1, 2, 3)),
        *(f"chain: {i}/2 steps" for i in (1, 2)),
    ]
