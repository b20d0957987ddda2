"""The Python examples of README.md run as written, one after the other (the one that loads
``runs/toy`` reads a tiny toy run put there)."""

import re
import shutil
from pathlib import Path

import pyro
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(tiny_toy_run, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 3, "README.md should have its training, analysis and loading examples"
    shutil.copytree(tiny_toy_run, tmp_path / "runs" / "toy")
    monkeypatch.chdir(tmp_path)
    pyro.enable_validation(False)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    imports = [ln for ln in blocks[0].splitlines() if ln.startswith(("import ", "from "))]
    assert imports == ["import pbridge"], "the training example needs one import line"
    result, variant = namespace["result"], namespace["variant"]
    state = variant.state_dict()
    assert result.ema and all(torch.equal(v, state[k]) for k, v in result.ema.items())
    prior, posterior = namespace["prior"], namespace["posterior"]
    assert prior.x.shape == (16, 2, 5) and posterior.x_mean.shape == (16, 2, 5)
    idata = namespace["idata"]
    assert idata.posterior["z_q_0"].shape == (1, 16, 8, 5)  # (chain, draw, item, cell)
    assert idata.training["negative_elbo"].shape == (200,)
    run, draws = namespace["run"], namespace["draws"]
    assert len(run.losses) == run.step == 30 and draws.x.shape == (16, 2, 5)
