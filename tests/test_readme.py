"""The Python example of README.md runs as written."""

import re
from pathlib import Path

import pyro

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    pyro.enable_validation(False)
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    prior, posterior = namespace["prior"], namespace["posterior"]
    assert prior.x.shape == (16, 2, 5) and posterior.x_mean.shape == (16, 2, 5)
