import re
from pathlib import Path

import pyro
import pytest
import torch


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
