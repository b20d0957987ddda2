"""``pbridge evaluate``: one protocol for every variant, on tiny digits runs."""

import json
import math
from dataclasses import replace

import pytest
import torch
from pyro import poutine

from pbridge.cli import main
from pbridge.codebook import gather_codes
from pbridge.config import PaperSettings, image_preset
from pbridge.data import load_images
from pbridge.inference.evaluate import (
    EvalSettings,
    chain_bits_by_step,
    masked_patch_scores,
    results_table,
)
from pbridge.inference.images import run_images
from pbridge.inference.load import load_run
from pbridge.inference.progress import Progress
from pbridge.inference.run_kinds import evaluate_run
from pbridge.inference.sampling import sample_posterior
from pbridge.models.builders import build_image_model
from pbridge.samplers import ANCESTRAL, SamplerSettings

SMALL = ["--items", "64", "--samples", "16", "--patch-items", "8", "--patch-draws", "2"]


def _tiny_run(variant: str, out, formulation: str = "tight", **options) -> None:
    options = {"num_steps": 50, **options}
    config = image_preset("digits", "small")
    paper = (
        PaperSettings(tau_p=0.3, encoder_scale=0.1) if formulation == "paper" else PaperSettings()
    )
    bridge = replace(config.bridge, formulation=formulation, paper=paper)
    config = replace(
        config,
        bridge=bridge,
        variant=variant,
        vqvae_steps=30,
        eval_items=32,
        unet_width=16,
        train=replace(config.train, steps=30),
        **options,
    )
    run_images(config, out, progress=False)


def test_uniform_vqvae_scores_log2_k_on_the_patch(tmp_path, capsys):
    """The uniform prior's masked-patch NLL is exactly log2 K (K = 32 on digits); the command
    writes eval.json, eval.md and the inpainting grid; FD-FMNIST does not apply to digits."""
    _tiny_run("vqvae", tmp_path, vqvae_codebook="ema", restart_dead_codes=0.5)
    assert main(["evaluate", str(tmp_path), *SMALL]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result == json.loads(capsys.readouterr().out)
    assert result["masked_patch_bits_per_cell"] == pytest.approx(5.0, abs=1e-9)
    assert result["patch_cells"] == 4 and result["fd_fmnist"] is None
    assert 1 <= result["codes_used"] <= 32 and math.isfinite(result["test_bits_per_dim"])
    assert f"| {tmp_path.name} |" in (tmp_path / "eval.md").read_text()
    assert (tmp_path / "inpainting.png").stat().st_size > 0


@pytest.mark.parametrize("variant", ["two-stage", "pixelcnn"])
def test_bridge_and_pixelcnn_go_through_the_same_protocol(variant, tmp_path):
    """Both priors go through the same estimator; the PixelCNN also reports its exact
    teacher-forced figure, the tight bridge its conditional bound (between 0 and the
    uniform prior's log2 K plus the chain's slack), each named in the table."""
    _tiny_run(variant, tmp_path)
    settings = EvalSettings(bpd_items=64, num_samples=8, patch_items=8, patch_draws=2)
    sampler = SamplerSettings("respaced", 10) if variant == "two-stage" else ANCESTRAL
    result = evaluate_run(tmp_path, settings, sampler=sampler)
    bits = result["masked_patch_bits_per_cell"]
    assert bits > 0 and math.isfinite(bits) and result["masked_patch_bits_per_cell_stderr"] > 0
    assert ("masked_patch_bits_per_cell_exact" in result) == (variant == "pixelcnn")
    bound = result.get("masked_patch_conditional_bound_bits_per_cell")
    assert (bound is not None) == (variant == "two-stage")
    if bound is not None:
        assert 0 < bound < 10 and result["masked_patch_conditional_bound_bits_per_cell_stderr"] > 0
    assert result["sampler"]["name"] == ("respaced" if variant == "two-stage" else "ancestral")
    table = results_table({variant: result})
    assert table.count("\n") == 3 and variant in table
    assert ("conditional bound" in table.splitlines()[2]) == (variant == "two-stage")


def test_pixelcnn_sample_and_evaluate_show_a_bar_over_the_cells(tmp_path, capsys):
    """On a stderr that is not a terminal, ``pbridge sample`` of a PixelCNN run shows its draw
    cell by cell (the 16 cells of the 4 x 4 grid) and ``pbridge evaluate`` every inpainting
    draw over the 4 cells of the patch, as plain lines; the draws are the same bits without."""
    _tiny_run("pixelcnn", tmp_path)
    assert main(["sample", str(tmp_path), "--num", "8"]) == 0
    err = capsys.readouterr().err
    assert "autoregressive prior, 8 draws: 16/16 cells (" in err and "\r" not in err
    shown = torch.load(tmp_path / "samples.pt", weights_only=True)
    assert main(["sample", str(tmp_path), "--num", "8", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    hidden = torch.load(tmp_path / "samples.pt", weights_only=True)
    assert all(torch.equal(shown[name], hidden[name]) for name in shown)
    assert main(["evaluate", str(tmp_path), *SMALL]) == 0
    err = capsys.readouterr().err
    for draw in (1, 2):
        assert f"autoregressive prior, inpainting, draw {draw} of 2: 4/4 cells (" in err
    assert "autoregressive prior, 16 draws: 16/16 cells (" in err


def test_inpainting_shows_the_chain_steps_of_every_draw(tmp_path, capsys):
    """A bridge's masked-patch score shows one bar per inpainting draw over the steps of the
    sampler's chain (5 respaced times: 4 steps down to z^1, where the tight chain stops); the
    scores are the same bits without it."""
    config = replace(
        image_preset("digits", "small"), num_codes=8, latent_dim=4, unet_width=8, num_steps=20
    )
    torch.manual_seed(0)
    variant = build_image_model(config).eval()
    x = load_images("digits", "test").as_float()[:4]
    settings, sampler = EvalSettings(patch_items=4, patch_draws=2), SamplerSettings("respaced", 5)
    torch.manual_seed(1)
    shown = masked_patch_scores(variant, x, settings, sampler, tmp_path / "a.png", Progress())
    err = capsys.readouterr().err
    torch.manual_seed(1)
    quiet = masked_patch_scores(variant, x, settings, sampler, tmp_path / "b.png")
    assert shown == quiet and capsys.readouterr().err == ""
    for draw in (1, 2):
        assert f"backward chain (respaced), inpainting, draw {draw} of 2: 4/4 steps (" in err


def test_evaluate_refuses_a_sampler_the_variant_lacks(tmp_path, capsys):
    _tiny_run("vqvae", tmp_path)
    assert main(["evaluate", str(tmp_path), *SMALL, "--sampler", "ode"]) == 2
    assert "has no diffusion chain" in capsys.readouterr().err


def test_chain_breakdown_covers_every_step_and_adds_up_to_the_bound(tmp_path):
    """Tight: the bands tile 1..T, every band is >= 0 (cross-entropy at t = 1, Gaussian KLs
    after), and bands + L_T, every step scored, equal the stratified bound on the codes (the
    prior's log_prob, 48 images; T = 100) within 3%."""
    _tiny_run("two-stage", tmp_path, num_steps=100)
    variant = load_run(tmp_path).variant
    x = load_images("digits", "test").as_float()[:48]
    T = variant.schedule.num_steps
    breakdown = chain_bits_by_step(variant, x, per_band=T)
    bands = [tuple(map(int, key.split("-"))) for key in breakdown["chain_bits_per_cell_by_step"]]
    assert bands[0][0] == 1 and bands[-1][1] == T
    assert all(a[1] + 1 == b[0] for a, b in zip(bands, bands[1:], strict=False))
    assert min(breakdown["chain_bits_per_cell_by_step"].values()) >= 0
    assert "guide_log_density_bits_per_cell" not in breakdown
    total = sum(breakdown["chain_bits_per_cell_by_step"].values())
    total += breakdown["prior_kl_bits_per_cell"]
    codes = sample_posterior(variant, x).codes
    with torch.no_grad():
        value = gather_codes(codes, variant.codebook())
        prior = variant.prior(len(x)).with_options(strata=T)
        bound = -prior.log_prob(value).mean() / (16 * math.log(2))
    assert total == pytest.approx(float(bound), rel=0.03)


def test_paper_chain_breakdown_matches_the_guide_density(tmp_path):
    """Paper formulation: the closed-form log q(z_e^0 | x) per cell equals the guide's own
    log-density of its draws (Monte Carlo over 256 images)."""
    _tiny_run("two-stage", tmp_path, formulation="paper")
    variant = load_run(tmp_path).variant
    x = load_images("digits", "test").as_float()[:256]
    breakdown = chain_bits_by_step(variant, x, per_band=2)
    site = poutine.trace(variant.guide).get_trace(x).nodes["z_e_0"]
    per_cell = site["fn"].log_prob(site["value"]).mean() / (16 * math.log(2))
    assert breakdown["guide_log_density_bits_per_cell"] == pytest.approx(float(per_cell), rel=0.02)
