"""The variant contract (pbridge.variant) and the registry of image variants
(pbridge.models.builders.IMAGE_VARIANTS)."""

import json
import math
from dataclasses import replace

import pyro
import pytest
import torch
from pyro import poutine
from torch import nn

from pbridge.checkpoint import load_checkpoint
from pbridge.cli import _parser, main
from pbridge.config import BridgeSettings, ImageConfig, ToyConfig, image_preset
from pbridge.inference.bound import check_model_guide_sites
from pbridge.inference.svi import train
from pbridge.inference.user_variant import VariantFile, load_variant_file
from pbridge.models import class_conditional
from pbridge.models.builders import (
    IMAGE_VARIANTS,
    build_image_model,
    build_toy_model,
    image_variant,
)
from pbridge.variant import (
    AutoregressivePrior,
    BridgeChain,
    CodeDistribution,
    InitialisesCodebook,
    Inpaints,
    SurrogateSites,
    TakesLabels,
    Variant,
    missing_members,
    protocol_members,
)

CAPABILITIES = (BridgeChain, Inpaints, TakesLabels, AutoregressivePrior)


def _tiny(variant: str) -> ImageConfig:
    return replace(
        image_preset("digits", "small"), variant=variant, num_codes=8, latent_dim=4, unet_width=8
    )


def _capabilities(variant: nn.Module) -> set[str]:
    return {protocol.__name__ for protocol in CAPABILITIES if isinstance(variant, protocol)}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("end-to-end", {"BridgeChain", "Inpaints"}),
        ("two-stage", {"BridgeChain", "Inpaints"}),
        ("pixelcnn", {"Inpaints", "AutoregressivePrior"}),
        ("vqvae", {"Inpaints"}),
    ],
)
def test_every_image_variant_is_a_variant_with_its_capabilities(name, expected):
    variant = build_image_model(_tiny(name))
    assert all(isinstance(variant, p) for p in (Variant, SurrogateSites, InitialisesCodebook))
    assert _capabilities(variant) == expected


@pytest.mark.parametrize(
    "name, options",
    [
        ("end-to-end", {}),
        ("end-to-end", {"formulation": "paper"}),
        ("end-to-end", {"estimator": "full_chain"}),
        ("pixelcnn", {}),
        ("vqvae", {}),
    ],
    ids=["tight", "paper", "full-chain", "pixelcnn", "vqvae"],
)
def test_every_code_site_is_a_code_distribution(name, options):
    """The ``"z_q_0"`` site of every variant's guide and model (replayed on the guide, as the
    ELBO runs it) is a :class:`CodeDistribution`; the logits given the program's earlier draws
    are there exactly where the site is a kernel or a read-out at the chain's end."""
    config = _tiny(name)
    config = replace(config, num_steps=4, bridge=replace(config.bridge, **options))
    variant = build_image_model(config)
    x = torch.rand(2, *variant.data_shape)
    guide = poutine.trace(variant.guide).get_trace(x)
    model = poutine.trace(poutine.replay(variant.model, trace=guide)).get_trace(x)
    conditional = []
    for trace in (guide, model):
        fn = trace.nodes["z_q_0"]["fn"]
        assert isinstance(fn, CodeDistribution), type(fn).__name__
        conditional.append(fn.conditional_logits is not None)
    paper, full_chain = "formulation" in options, "estimator" in options
    assert conditional == [paper, paper or full_chain]


def test_the_toy_and_the_class_conditional_variants_capabilities():
    assert _capabilities(build_toy_model(ToyConfig())) == {"BridgeChain", "Inpaints"}
    labelled = class_conditional.build(_tiny("end-to-end"))
    assert _capabilities(labelled) == {"BridgeChain", "Inpaints", "TakesLabels"}


def test_the_pixelcnn_code_log_probabilities_are_its_networks():
    variant = build_image_model(_tiny("pixelcnn"))
    codes = torch.randint(0, 8, (2, 7, 7))
    expected = variant.prior_net.log_prob_per_cell(codes)
    assert torch.equal(variant.code_log_prob_per_cell(codes), expected)


def test_protocol_members_include_the_bases_and_name_what_is_missing():
    members = protocol_members(BridgeChain)
    assert members[:6] == ["codebook", "decoder", "data_shape", "latent_shape", "model", "guide"]
    assert {"inpaint", "schedule", "settings", "chain_states"} <= set(members)
    assert missing_members(nn.Linear(2, 2), Variant) == protocol_members(Variant)
    assert missing_members(build_image_model(_tiny("vqvae")), Variant) == []


def test_a_variant_file_whose_variant_lacks_members_is_refused_naming_them(tmp_path):
    source = VariantFile(tmp_path / "v.py", lambda config: nn.Linear(2, 2), _tiny("vqvae"))
    with pytest.raises(ValueError, match="has no 'codebook', 'decoder', 'data_shape'"):
        source.build_variant()


def test_the_registry_builds_and_stages_each_variant():
    assert [name for name, e in IMAGE_VARIANTS.items() if e.pretrains_vqvae] == [
        "end-to-end",
        "two-stage",
        "pixelcnn",
    ]
    stage_two = image_variant("two-stage").build(_tiny("two-stage"))
    assert not any(p.requires_grad for p in stage_two.encoder.parameters())
    assert all(p.requires_grad for p in stage_two.denoiser.parameters())
    with pytest.raises(ValueError, match="unknown variant 'bogus'; expected one of end-to-end"):
        build_image_model(_tiny("bogus"))


def test_the_command_line_variants_are_the_registrys(tmp_path, capsys):
    train = _parser()._subparsers._group_actions[0].choices["train"]
    (variant,) = [a for a in train._actions if a.dest == "variant"]
    assert variant.choices == tuple(IMAGE_VARIANTS)
    argv = ["train", "digits", "--set", "variant=bogus", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "pbridge: ValueError: unknown variant 'bogus'; expected one of " + ", ".join(
        IMAGE_VARIANTS
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_variant_file_run_works_with_every_command(tmp_path, capsys, tutorial_variant):
    """The tutorial's variant file through the command line: train, resume (extended), sample,
    evaluate (what applies to a variant without inpaint or chain) and analyze each exit 0 and
    write their outputs."""
    run = tmp_path / "run"
    small = ["--set", "max_train=128", "--set", "eval_items=32", "--set", "train.batch_size=16"]
    train = ["train", str(tutorial_variant), "--out", str(run), "--no-progress", *small]
    commands = [
        [*train, "--steps", "4"],
        [*train, "--steps", "6", "--resume", "--extend-steps"],
        ["sample", str(run), "--num", "8"],
        ["evaluate", str(run), "--items", "16", "--samples", "8", "--fd-draws", "1"]
        + ["--patch-items", "4", "--patch-draws", "1"],
        ["analyze", str(run), "--num", "2", "--items", "2"],
    ]
    for argv in commands:
        assert main(argv) == 0, (argv, capsys.readouterr().err)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 6
    written = ["metrics.json", "samples.pt", "samples.png", "eval.json", "eval.md"]
    written += ["analysis.nc", "analysis_summary.csv", "code_usage.png"]
    assert [name for name in written if not (run / name).is_file()] == []
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["variant"] == "LearnedPriorVQVAE"
    assert evaluation["masked_patch_bits_per_cell"] is None
    assert "does not inpaint" in evaluation["masked_patch_note"]
    assert math.isfinite(evaluation["test_bits_per_dim"])


def _variant_and_batch(name: str) -> tuple[nn.Module, object]:
    digits = torch.rand(2, 1, 8, 8)
    if name == "toy":
        return build_toy_model(ToyConfig()), torch.randn(2, 2, 5)
    if name == "class-conditional":
        return class_conditional.build(_tiny("end-to-end")), (digits, torch.tensor([0, 3]))
    if name == "paper":
        paper = replace(_tiny("end-to-end"), bridge=BridgeSettings(formulation="paper"))
        return build_image_model(paper), digits
    return build_image_model(_tiny(name)), digits


@pytest.mark.parametrize("name", ["toy", *IMAGE_VARIANTS, "paper", "class-conditional"])
def test_the_built_in_variants_sample_the_same_latent_sites_in_model_and_guide(name):
    check_model_guide_sites(*_variant_and_batch(name))


def test_the_tutorial_variant_samples_the_same_latent_sites(tutorial_variant):
    source = load_variant_file(tutorial_variant)
    check_model_guide_sites(source.build_variant(_tiny("vqvae")), torch.rand(2, 1, 8, 8))


MISMATCHED = {
    "guide-site-missing-from-the-model": (
        "            nearest_code_sites(self.encode(x), self.codebook(), self.commitment)\n",
        "            nearest_code_sites(self.encode(x), self.codebook(), self.commitment)\n"
        "            pyro.sample('z_extra', pyro.distributions.Normal(0.0, 1.0))\n",
        "'z_extra' in the guide only",
    ),
    "model-latent-missing-from-the-guide": (
        '            pyro.sample("x", self.decoder(z_q0), obs=x)\n',
        "            pyro.sample('scale', pyro.distributions.LogNormal(0.0, 1.0))\n"
        '            pyro.sample("x", self.decoder(z_q0), obs=x)\n',
        "'scale' in the model only",
    ),
}


@pytest.mark.parametrize("case", MISMATCHED, ids=list(MISMATCHED))
def test_a_variant_file_whose_model_and_guide_disagree_is_refused_before_training(
    case, tmp_path, capsys, tutorial_variant
):
    old, new, named = MISMATCHED[case]
    text = tutorial_variant.read_text()
    assert old in text
    tutorial_variant.write_text(text.replace(old, new))
    run = tmp_path / "run"
    argv = ["train", str(tutorial_variant), "--out", str(run), "--no-progress", "--steps", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pbridge: ValueError: the model and guide of LearnedPriorVQVAE")
    assert named in err and "\n" not in err, err
    assert not run.exists()  # no checkpoint, nothing written


def test_python_train_refuses_a_model_and_guide_that_disagree():
    variant = build_image_model(_tiny("vqvae"))
    guide = variant.guide

    def guide_with_extra_site(x):
        guide(x)
        pyro.sample("z_extra", pyro.distributions.Normal(0.0, 1.0))

    variant.guide = guide_with_extra_site
    settings = replace(_tiny("vqvae").train, steps=1, batch_size=2)
    with pytest.raises(ValueError, match="'z_extra' in the guide only"):
        train(variant, torch.rand(4, 1, 8, 8), settings, progress=False)


def test_the_site_check_leaves_the_run_as_it_was():
    """Same seed, same bits: the check draws from forked random states, keeps the parameter
    store and restores the variant's buffers (batch norm's running statistics)."""
    variant = build_image_model(_tiny("end-to-end"))
    before = {name: value.clone() for name, value in variant.state_dict().items()}
    pyro.get_param_store().get_param("kept", torch.ones(2))
    x = torch.rand(4, 1, 8, 8)
    state = torch.get_rng_state()
    check_model_guide_sites(variant, x)
    assert torch.equal(torch.get_rng_state(), state)
    assert list(pyro.get_param_store().keys()) == ["kept"]
    after = variant.state_dict()
    assert [name for name, value in before.items() if not torch.equal(value, after[name])] == []
