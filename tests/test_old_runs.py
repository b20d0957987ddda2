"""Runs trained before a change of the code keep working: the toy runs of
``tests/data/runs-before-25`` (tight and paper formulations, written when both were one class)
load, sample, evaluate and train on."""

import shutil
from pathlib import Path

import pytest

import pbridge
from pbridge.cli import main
from pbridge.models.bridge_vqvae import DiffusionBridgeVQVAE
from pbridge.models.paper_bridge import PaperBridgeVQVAE

OLD = Path(__file__).resolve().parent / "data" / "runs-before-25"


@pytest.mark.parametrize(
    "formulation, kind", [("tight", DiffusionBridgeVQVAE), ("paper", PaperBridgeVQVAE)]
)
def test_a_run_of_the_former_code_loads_samples_evaluates_and_trains_on(
    formulation, kind, tmp_path
):
    run = tmp_path / formulation
    shutil.copytree(OLD / formulation, run)
    loaded = pbridge.load_run(run, device="cpu")
    assert type(loaded.variant) is kind and loaded.step == 30
    assert pbridge.sample_prior(loaded.variant, 4).x.shape == (4, 2, 5)
    assert main(["sample", str(run), "--num", "8"]) == 0
    assert main(["evaluate", str(run)]) == 0
    args = ["train", "toy", "--out", str(run), "--resume", "--steps", "32", "--extend-steps"]
    assert main([*args, "--no-progress"]) == 0
    assert pbridge.load_run(run, device="cpu").step == 32
