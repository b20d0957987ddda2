"""Analysis: arviz InferenceData of prior and posterior draws, ``pbridge analyze``, variant files
trained from the command line, and the class-conditional variant."""

import inspect
import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import arviz as az
import numpy as np
import pyro
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import pbridge
from pbridge.checkpoint import load_checkpoint
from pbridge.cli import main
from pbridge.codebook import code_logits, gather_codes
from pbridge.config import PaperSettings, image_preset
from pbridge.data import load_images
from pbridge.inference.analysis import summarise, to_inferencedata
from pbridge.inference.load import load_run
from pbridge.inference.plots import plot_elbo_trace
from pbridge.inference.sampling import sample_prior
from pbridge.inference.svi import train
from pbridge.models import class_conditional
from pbridge.models.builders import build_image_model
from pbridge.samplers import SamplerSettings

ITEMS, NUM = 3, 5
GROUPS = {
    "posterior",
    "posterior_predictive",
    "observed_data",
    "prior",
    "prior_predictive",
    "training",
}


@pytest.fixture(scope="module")
def bridge():
    """A small, untrained digits bridge of the paper's formulation (T = 20), whose guide has a
    continuous z_e^0: shapes and numbers, not learning. A wide kernel (tau_p = 4) makes the
    code entropies of order one."""
    config = image_preset("digits", "small")
    paper = PaperSettings(tau_p=4.0, encoder_scale=0.1)
    bridge = replace(config.bridge, formulation="paper", paper=paper)
    config = replace(config, unet_width=16, num_steps=20, bridge=bridge)
    torch.manual_seed(0)
    return build_image_model(config).eval()


@pytest.fixture(scope="module")
def tight_bridge():
    """The same with the default (tight) formulation: codes only, read out at z^1."""
    config = replace(image_preset("digits", "small"), unet_width=16, num_steps=20)
    torch.manual_seed(0)
    return build_image_model(config).eval()


def test_tight_bridge_records_codes_and_readout_entropy(tight_bridge, digits):
    """Tight: no continuous z_e^0 in either group; the prior holds the read-out's entropy per
    cell (within [0, log K]); its codes are sample_prior's under the same seed."""
    idata = _idata(tight_bridge, digits)
    assert "z_e_0" not in idata.posterior and "z_e_0" not in idata.prior
    entropy = idata.prior["code_entropy"]
    assert entropy.dims == ("chain", "draw", "cell_y", "cell_x") and entropy.shape == (1, NUM, 4, 4)
    assert float(entropy.min()) >= 0 and float(entropy.max()) <= math.log(32) + 1e-6
    pyro.set_rng_seed(1)
    direct = sample_prior(tight_bridge, NUM)
    np.testing.assert_array_equal(idata.prior["z_q_0"].values[0], direct.codes)


@pytest.fixture(scope="module")
def digits():
    return load_images("digits", "test").as_float()[:ITEMS]


def _idata(bridge, x, losses=None):
    pyro.set_rng_seed(1)
    return to_inferencedata(bridge, x, NUM, losses=losses)


def test_groups_dims_and_shapes_are_those_documented(bridge, digits):
    idata = _idata(bridge, digits, losses=[3.0, 2.0, 1.5])
    assert set(idata.groups()) == GROUPS
    d, (h, w), k = 16, (4, 4), 32
    expected = {
        ("posterior", "z_e_0"): (
            ("chain", "draw", "item", "latent_dim", "cell_y", "cell_x"),
            (1, NUM, ITEMS, d, h, w),
        ),
        ("posterior", "z_q_0"): (
            ("chain", "draw", "item", "cell_y", "cell_x"),
            (1, NUM, ITEMS, h, w),
        ),
        ("posterior", "code_entropy"): (
            ("chain", "draw", "item", "cell_y", "cell_x"),
            (1, NUM, ITEMS, h, w),
        ),
        ("posterior", "code_count"): (("chain", "draw", "code"), (1, NUM, k)),
        ("posterior_predictive", "x"): (
            ("chain", "draw", "item", "channel", "pixel_y", "pixel_x"),
            (1, NUM, ITEMS, 1, 8, 8),
        ),
        ("posterior_predictive", "x_mean"): (
            ("chain", "draw", "item", "channel", "pixel_y", "pixel_x"),
            (1, NUM, ITEMS, 1, 8, 8),
        ),
        ("observed_data", "x"): (("item", "channel", "pixel_y", "pixel_x"), (ITEMS, 1, 8, 8)),
        ("prior", "z_e_0"): (
            ("chain", "draw", "latent_dim", "cell_y", "cell_x"),
            (1, NUM, d, h, w),
        ),
        ("prior", "z_q_0"): (("chain", "draw", "cell_y", "cell_x"), (1, NUM, h, w)),
        ("prior", "code_count"): (("chain", "draw", "code"), (1, NUM, k)),
        ("prior_predictive", "x"): (
            ("chain", "draw", "channel", "pixel_y", "pixel_x"),
            (1, NUM, 1, 8, 8),
        ),
        ("training", "negative_elbo"): (("step",), (3,)),
    }
    for (group, name), (dims, shape) in expected.items():
        value = idata[group][name]
        assert (value.dims, value.shape) == (dims, shape), (group, name)
    np.testing.assert_array_equal(idata.training["step"], [1, 2, 3])
    np.testing.assert_array_equal(idata.training["negative_elbo"], [3.0, 2.0, 1.5])
    np.testing.assert_array_equal(idata.observed_data["x"], digits.numpy())
    assert idata.attrs["variant"] == "PaperBridgeVQVAE"  # the class of the paper formulation


def test_values_agree_with_independent_computations(bridge, digits):
    """Codes are the nearest codes of the stored z_q vectors; counts add up to the cells; the
    entropy is that of torch's Categorical with the model's kernel; the predictive means are the
    decoder on the stored codes."""
    idata = _idata(bridge, digits)
    codes = bridge.codebook().detach()
    tau = bridge.paper.tau_p
    post_codes = torch.from_numpy(idata.posterior["z_q_0"].values[0])  # (draw, item, h, w)
    z_e = torch.from_numpy(idata.posterior["z_e_0"].values[0])  # (draw, item, d, h, w)
    assert int(post_codes.min()) >= 0 and int(post_codes.max()) < codes.shape[0]
    counts = idata.posterior["code_count"].values[0]
    np.testing.assert_array_equal(counts.sum(-1), np.full(NUM, ITEMS * 16))
    for draw in range(NUM):
        np.testing.assert_array_equal(
            counts[draw], np.bincount(post_codes[draw].flatten(), minlength=codes.shape[0])
        )
    # the kernel softmax_k(-||z_e - e_k||^2 / tau), per cell, written out
    sq = (z_e[..., None, :, :, :] - codes[:, :, None, None]).pow(2).sum(-3)  # (.., K, h, w)
    entropy = torch.distributions.Categorical(logits=(-sq / tau).movedim(-3, -1)).entropy()
    assert 0.1 < float(entropy.mean()) < math.log(32)
    np.testing.assert_allclose(idata.posterior["code_entropy"].values[0], entropy, rtol=1e-4)
    with torch.no_grad():
        mean = bridge.decoder(gather_codes(post_codes.flatten(0, 1), codes)).mean
        prior_codes = torch.from_numpy(idata.prior["z_q_0"].values[0])
        prior_mean = bridge.decoder(gather_codes(prior_codes, codes)).mean
    np.testing.assert_allclose(
        idata.posterior_predictive["x_mean"].values[0], mean.view(NUM, ITEMS, 1, 8, 8), atol=1e-6
    )
    np.testing.assert_allclose(idata.prior_predictive["x_mean"].values[0], prior_mean, atol=1e-6)
    # draws of x are the 256-level pixels of the discretised likelihood
    x = idata.posterior_predictive["x"].values
    np.testing.assert_allclose(x * 255, np.round(x * 255), atol=1e-4)
    # the posterior draws differ between draws (z_e^0 = e_k + s eps)
    assert not np.allclose(z_e[0], z_e[1])
    # the chain's prior draws are the model's: the same seed through sample_prior gives them
    pyro.set_rng_seed(1)
    direct = sample_prior(bridge, NUM)
    np.testing.assert_allclose(idata.prior["z_e_0"].values[0], direct.z_e, atol=1e-6)
    np.testing.assert_array_equal(idata.prior["z_q_0"].values[0], direct.codes)


def test_paper_prior_records_the_kernels_entropy_at_the_chains_end(bridge, digits):
    """Paper formulation: the prior's code entropy is that of the model's kernel
    p(z_q^0 | z_e^0) at each prior draw's z_e^0 (the site's ``conditional_logits``), by torch's
    Categorical."""
    idata = _idata(bridge, digits)
    codes, tau = bridge.codebook().detach(), bridge.paper.tau_p
    z_e = torch.from_numpy(idata.prior["z_e_0"].values[0])  # (draw, d, h, w)
    sq = (z_e[:, None] - codes[None, :, :, None, None]).pow(2).sum(2)  # (draw, K, h, w)
    entropy = torch.distributions.Categorical(logits=(-sq / tau).movedim(1, -1)).entropy()
    value = idata.prior["code_entropy"]
    assert value.dims == ("chain", "draw", "cell_y", "cell_x")
    np.testing.assert_allclose(value.values[0], entropy, rtol=1e-4)


def test_round_trips_through_netcdf(bridge, digits, tmp_path):
    idata = _idata(bridge, digits, losses=[1.0, 0.5])
    path = tmp_path / "analysis.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    assert set(back.groups()) == set(idata.groups())
    for group in idata.groups():
        assert back[group].equals(idata[group]), group
    summary = summarise(back)
    rows = [name for name in summary.index if name.startswith("posterior code_count")]
    assert len(rows) == 32 and "posterior code_entropy[0, 0]" in summary.index
    counts = back.posterior["code_count"].values[0]
    np.testing.assert_allclose(summary.loc[rows, "mean"], counts.mean(0), atol=0.01)


def test_bad_input_is_refused(bridge, digits, tmp_path, capsys):
    with pytest.raises(ValueError, match="num must be a positive integer, got 0"):
        to_inferencedata(bridge, digits, 0)
    with pytest.raises(ValueError, match="PaperBridgeVQVAE does not take labels"):
        to_inferencedata(bridge, digits, 2, labels=torch.zeros(ITEMS, dtype=torch.long))
    assert main(["analyze", str(tmp_path / "nothing")]) == 2
    assert f"{tmp_path / 'nothing'} is not a run directory" in capsys.readouterr().err


def test_to_inferencedata_is_exported_from_pbridge():
    assert pbridge.to_inferencedata is to_inferencedata


@pytest.mark.slow
def test_tutorial_variant_trains_and_is_analysed_from_the_command_line(
    tmp_path, capsys, tutorial_variant
):
    """The tutorial's variant file, trained by `pbridge train FILE`: the loss falls, the learned
    prior moves towards the code frequencies of every cell (more than 1/K on the codes in use),
    and `pbridge analyze` reads the run."""
    file, run = tutorial_variant, tmp_path / "run"
    assert main(["train", str(file), "--steps", "150", "--out", str(run), "--no-progress"]) == 0
    losses = load_checkpoint(run / "checkpoint.pt")["losses"]
    assert np.mean(losses[-20:]) < 0.9 * np.mean(losses[:20])  # fell by more than 10%
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["variant"] == "LearnedPriorVQVAE" and math.isfinite(metrics["test_bits_per_dim"])
    assert (run / "variant.py").read_text() == file.read_text()

    variant = load_run(run, device="cpu").variant
    x = load_images("digits", "train").as_float()
    with torch.no_grad():
        used = code_logits(variant.encode(x), variant.codebook(), 0.0).argmax(-1)  # (B, h, w)
        log_prior = variant.prior_logits.log_softmax(-1).flatten(0, 1)  # (cells, K)
    frequency = torch.nn.functional.one_hot(used.flatten(1), 32).float().mean(0)  # (cells, K)
    taken = (frequency * log_prior).sum(-1).mean()  # E log p(code) under the codes in use
    assert taken > math.log(1 / 32) + 0.05, taken  # nats above the uniform prior
    correlation = torch.corrcoef(torch.stack([frequency.flatten(), log_prior.flatten()]))[0, 1]
    assert correlation > 0.5, correlation  # the prior learns which codes each cell uses

    capsys.readouterr()
    assert main(["analyze", str(run), "--num", "4", "--items", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["groups"]) == GROUPS
    idata = az.from_netcdf(str(run / "analysis.nc"))
    assert "z_e_0" not in idata.posterior and idata.posterior["z_q_0"].shape == (1, 4, 3, 4, 4)
    for name in ("code_usage.png", "elbo_trace.png", "analysis_summary.csv"):
        assert (run / name).stat().st_size > 0


def test_a_broken_variant_file_is_named(tmp_path, capsys, tutorial_variant):
    file = tmp_path / "broken.py"
    file.write_text("x = 1\n")
    assert main(["train", str(file), "--out", str(tmp_path / "run")]) == 2
    assert f"{file} defines no 'build'" in capsys.readouterr().err
    good = tutorial_variant
    assert main(["train", str(good), "--variant", "two-stage", "--out", str(tmp_path / "r")]) == 2
    assert "--variant do not apply to a variant file" in capsys.readouterr().err


@pytest.mark.slow
def test_class_conditional_samples_are_of_the_requested_class():
    """Trained for 500 steps on digits, the class-conditional bridge's samples (50 DDIM-style
    steps) are assigned to the requested class by a logistic regression (96% on the test split)
    at least 35% of the time; chance is 10%."""
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    pyro.enable_validation(False)
    config = class_conditional.CONFIG
    variant = class_conditional.build(config)
    data = load_images("digits", "train")
    x, y = data.as_float(), data.labels
    variant.initialise_codebook(x[:1024], torch.Generator().manual_seed(0))
    train(variant, (x, y), replace(config.train, steps=500), progress=False)
    variant.eval()

    classifier = LogisticRegression(max_iter=2000).fit(x.flatten(1).numpy(), y.numpy())
    requested = torch.arange(10).repeat_interleave(20)
    samples = variant.sample_class(requested, SamplerSettings("respaced", sample_steps=50))
    assigned = torch.from_numpy(classifier.predict(samples.flatten(1).numpy()))
    accuracy = float((assigned == requested).float().mean())
    assert accuracy >= 0.35, accuracy


def test_class_conditional_chain_needs_valid_labels():
    variant = class_conditional.build(replace(class_conditional.CONFIG, unet_width=16))
    with pytest.raises(ValueError, match="labels must lie in 0..9, got 0..12"):
        variant.chain_network(torch.tensor([0, 12]))
    with pytest.raises(ValueError, match="needs labels"):
        variant.chain_network()


DOCS = Path(__file__).resolve().parents[1] / "docs"


def _words(text: str) -> str:
    return " ".join(text.split())


def test_the_docs_name_the_statistic_elbo_trace_draws():
    """elbo_trace.png draws a running median; docs/analysis.md says so."""
    (statistic,) = re.findall(r'label = f"running (\w+)', inspect.getsource(plot_elbo_trace))
    row = next(line for line in (DOCS / "analysis.md").read_text().splitlines()
               if line.startswith("| `elbo_trace.png`"))  # fmt: skip
    assert f"running {statistic}" in row and statistic == "median", row


def test_analyze_on_a_toy_run_writes_what_the_docs_say(tiny_toy_run, tmp_path, capsys):
    """A toy run gets no reverse_chain.png; docs/cli.md, docs/analysis.md and analyze --help
    say which runs do."""
    run = tmp_path / "toy"
    shutil.copytree(tiny_toy_run, run)
    capsys.readouterr()
    assert main(["analyze", str(run), "--num", "2", "--items", "2", "--no-progress"]) == 0
    written = json.loads(capsys.readouterr().out)["written"]
    assert "reverse_chain.png" not in written and not (run / "reverse_chain.png").exists()
    assert "a toy run gets no `reverse_chain.png`" in _words((DOCS / "cli.md").read_text())
    row = next(line for line in (DOCS / "analysis.md").read_text().splitlines()
               if line.startswith("| `reverse_chain.png`"))  # fmt: skip
    assert "image runs of a bridge variant only" in row
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    assert "reverse_chain.png (image runs of bridge variants)" in _words(capsys.readouterr().out)


def test_evaluate_help_covers_toy_runs(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    shown = _words(capsys.readouterr().out)
    assert "image run directory" not in shown and "trained image run" not in shown
    assert "A toy run: the ELBO on its test walks" in shown


def test_analyze_on_a_labelled_variant_files_run_observes_the_test_labels(tmp_path, capsys):
    """A class-conditional run (models/class_conditional.py as a variant file) analysed from
    the command line: the test images' labels are observed and condition the guide's draws."""
    run = tmp_path / "run"
    tiny = ["num_steps=20", "unet_width=8", "max_train=64", "eval_items=16", "num_codes=8"]
    argv = ["train", class_conditional.__file__, "--out", str(run), "--steps", "2"]
    argv += [item for setting in tiny for item in ("--set", setting)]
    assert main([*argv, "--no-progress"]) == 0, capsys.readouterr().err
    assert main(["analyze", str(run), "--num", "2", "--items", "3", "--no-progress"]) == 0
    idata = az.from_netcdf(run / "analysis.nc")
    labels = load_images("digits", "test").labels[:3]
    assert idata.observed_data["y"].values.tolist() == labels.tolist()
