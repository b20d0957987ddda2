import math
import os
import re
from pathlib import Path

import pyro
import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):  # one worker per core: one thread each
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # and for the commands the tests start


@pytest.fixture(autouse=True)
def _pyro_state():
    """Every test starts from an empty param store, Pyro validation on and a fixed seed."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def float64():
    """Run a test in float64 (numbers compared to independent computations)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(scope="session")
def tiny_toy_run(tmp_path_factory):
    """A toy run of 30 steps with tiny networks, trained once through the command line
    (``pbridge train toy``, EMA weights kept); tests read it and must not change it."""
    from pbridge.cli import main

    out = tmp_path_factory.mktemp("tiny") / "toy"
    tiny = ["num_train=256", "num_samples=64", "hidden=16", "denoiser_width=16"]
    args = ["train", "toy", "--steps", "30", "--batch-size", "16", "--out", str(out)]
    args += [item for setting in tiny + ["denoiser_blocks=1"] for item in ("--set", setting)]
    assert main([*args, "--no-progress"]) == 0
    return out


TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial-variant.md"


@pytest.fixture
def tutorial_variant(tmp_path: Path) -> Path:
    """The variant file of docs/tutorial-variant.md (its Python block defining ``build``),
    written to ``tmp_path / "my_variant.py"``."""
    blocks = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(), flags=re.S)
    file = tmp_path / "my_variant.py"
    file.write_text(next(b for b in blocks if "def build" in b))
    return file


MARKOV_CODES, MARKOV_CELLS = 8, 5
"""The Markov walks of the code-prior tests: 8 codes, 5 cells."""


def _markov_walks(n: int, generator: torch.Generator) -> torch.Tensor:
    first = torch.randint(0, MARKOV_CODES, (n, 1), generator=generator)
    steps = 2 * torch.randint(0, 2, (n, MARKOV_CELLS - 1), generator=generator) - 1
    return torch.cat([first, first + steps.cumsum(1)], 1) % MARKOV_CODES


@pytest.fixture(scope="session")
def markov_walks():
    """``walks(n, generator) -> (n, 5)`` int64: walks on 8 codes, a uniform first code, then
    +-1 (mod 8) with probability 1/2 each (entropy (3 + 4) / 5 = 1.4 bits per cell; the
    unigram entropy is 3)."""
    return _markov_walks


def _circle_codebook() -> torch.Tensor:
    angles = torch.arange(MARKOV_CODES) * 2 * math.pi / MARKOV_CODES
    return torch.stack([angles.cos(), angles.sin()], 1)


@pytest.fixture(scope="session")
def markov_codebook():
    """``(8, 2)``: the walks' codes evenly spaced on the unit circle."""
    return _circle_codebook()


@pytest.fixture(scope="session")
def markov_code_model():
    """The bridge prior fitted to 4,096 walks of :func:`markov_walks` through the documented
    path, ``pbridge.train`` on a :class:`~pbridge.models.code_prior.BridgeCodeModel` (Pyro SVI;
    codes evenly spaced on the unit circle, T = 100 with abar_T ~ 1e-4, 1,500 steps of 128,
    lr 3e-3, tracked importance sampling, self-conditioning, the read-out auxiliary), EMA
    weights, eval mode. Shared by the tests of the bound on these codes; they must not change
    it."""
    import pbridge
    from pbridge.models.builders import build_chain_network
    from pbridge.models.code_prior import BridgeCodeModel
    from pbridge.ou_bridge import image_schedule

    torch.manual_seed(0)
    codes = _circle_codebook()
    net = build_chain_network(2, MARKOV_CODES, (MARKOV_CELLS,), width=128, blocks=2)
    model = BridgeCodeModel(codes, net, image_schedule(100, 1e-3, 0.18), (MARKOV_CELLS,))
    walks = _markov_walks(4096, torch.Generator().manual_seed(0))
    settings = pbridge.TrainSettings(steps=1500, batch_size=128, lr=3e-3, seed=0)
    result = pbridge.train(model, walks, settings)
    result.use_ema(model)
    return model.eval()
