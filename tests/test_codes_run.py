"""``pbridge train CODES.pt``: the bridge prior fitted from the command line to codes you bring,
then sampled, scored and analysed like any run (inference/codes_run.py, docs/codes.md).

One tiny run is shared: walks of 5 cells on 8 codes (a uniform first code, then +-1 mod 8:
entropy 1.4 bits per cell; independent cells with the walks' frequencies: 3 bits), 600 SVI
steps of a small network.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import arviz as az
import pytest
import torch

import pbridge
from pbridge.cli import main
from pbridge.inference.run_kinds import kind_for, kind_of

K, L, N, TEST = 8, 5, 1500, 400


@pytest.fixture(scope="module")
def codes_file(tmp_path_factory, markov_walks, markov_codebook) -> Path:
    """``{"codes": N walks (conftest's markov_walks), "codebook": the circle}`` in a file."""
    path = tmp_path_factory.mktemp("codes") / "walks.pt"
    walks = markov_walks(N, torch.Generator().manual_seed(0))
    torch.save({"codes": walks, "codebook": markov_codebook}, path)
    return path


@pytest.fixture(scope="module")
def codes_run(codes_file) -> Path:
    out = codes_file.parent / "run"
    argv = ["train", str(codes_file), "--out", str(out), "--steps", "600", "--no-progress"]
    argv += ["--set", f"test_items={TEST}", "--set", "width=64", "--set", "num_samples=200"]
    assert main(argv) == 0
    return out


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _refused(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pbridge: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_a_pt_file_is_a_codes_run():
    assert kind_for("my/codes.pt").name == "codes"


def test_the_prior_fitted_from_the_command_line_learns_the_walks(codes_run):
    """The held-out bound lies at least 0.2 bits per cell below independent cells with the
    training frequencies (3 bits; after 600 steps the bound is about 2.6), and above the
    walks' entropy rate of 1.4 (a bound)."""
    metrics = json.loads((codes_run / "metrics.json").read_text())
    assert metrics["test_items"] == TEST
    assert metrics["independent_cells_bits_per_cell"] == pytest.approx(3.0, abs=0.02)
    assert metrics["test_bits_per_cell"] < metrics["independent_cells_bits_per_cell"] - 0.2
    assert metrics["test_bits_per_cell"] > (3 + 4) / L - 3 * metrics["test_bits_per_cell_stderr"]
    config = json.loads((codes_run / "config.json").read_text())
    assert config["cells"] == [L] and config["num_codes"] == K and config["latent_dim"] == 2


def test_the_run_reads_back_with_the_files_codebook(codes_run, markov_codebook):
    loaded = pbridge.load_run(codes_run, device="cpu")
    assert kind_of(codes_run).name == "codes"
    assert isinstance(loaded.variant, pbridge.BridgeCodeModel)
    assert torch.equal(loaded.variant.codebook(), markov_codebook)
    assert loaded.step == 600


def test_sample_evaluate_and_analyze_a_codes_run(codes_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(codes_run, run)
    assert main(["sample", str(run), "--num", "64", "--no-progress"]) == 0
    drawn = torch.load(run / "samples.pt")["codes"]
    assert drawn.shape == (64, L) and drawn.dtype == torch.int64
    assert 0 <= int(drawn.min()) and int(drawn.max()) < K
    steps = (drawn[:, 1:] - drawn[:, :-1]) % K
    assert ((steps == 1) | (steps == K - 1)).float().mean() > 0.4  # independent codes: 0.25
    argv = ["sample", str(run), "--num", "8", "--sampler", "respaced", "--sample-steps", "10"]
    assert main([*argv, "--no-progress"]) == 0
    assert (run / "samples.png").stat().st_size > 0
    assert main(["evaluate", str(run), "--items", "200", "--samples", "50", "--no-progress"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["test_items"] == 200 and result["test_bits_per_cell"] < 2.9
    assert main(["analyze", str(run), "--items", "20", "--num", "30", "--no-progress"]) == 0
    idata = az.from_netcdf(run / "analysis.nc")
    assert {"prior", "observed_data", "log_likelihood", "training"} <= set(idata.groups())
    assert idata.prior["codes"].shape == (1, 30, L)
    shares = torch.from_numpy(idata.log_likelihood["codes"].values)
    assert shares.shape == (1, 1, 20, L) and torch.isfinite(shares).all()
    for name in ("code_usage.png", "bound_by_cell.png", "elbo_trace.png"):
        assert (run / name).stat().st_size > 0


@pytest.mark.parametrize(
    "content, named",
    [
        ({"codes": torch.rand(10, 4), "codebook": torch.randn(8, 2)}, "integer indices"),
        ({"codes": torch.full((10, 4), 8), "codebook": torch.randn(8, 2)}, "code 8 is not one"),
        ({"codes": torch.zeros(10, 4, dtype=torch.long)}, "must hold a dict"),
        ([1, 2], "must hold a dict"),
        ({"codes": torch.zeros(10, 4, dtype=torch.long), "codebook": torch.randn(8)}, "(K, d)"),
        (
            {"codes": torch.zeros(10, dtype=torch.long), "codebook": torch.randn(8, 2)},
            "(N, *cells)",
        ),
        (
            {
                "codes": torch.zeros(10, 4, dtype=torch.long),
                "codebook": torch.full((8, 2), math.nan),
            },
            "NaN",
        ),
    ],
)
def test_a_codes_file_that_is_almost_right_is_refused_before_anything_is_written(
    tmp_path, capsys, content, named
):
    path = tmp_path / "codes.pt"
    torch.save(content, path)
    err = _refused(["train", str(path), "--out", str(tmp_path / "out"), "--steps", "2"], capsys)
    assert named in err
    assert not (tmp_path / "out").exists()


class Tokenizer:
    """An object a user might save beside the codes."""


def test_a_file_that_is_not_a_codes_file_is_named(tmp_path, capsys):
    pickled = tmp_path / "pickled.pt"
    torch.save({"codes": torch.zeros(4, 2, dtype=torch.long), "tokenizer": Tokenizer()}, pickled)
    err = _refused(["train", str(pickled), "--out", str(tmp_path / "o")], capsys)
    assert "holds objects other than tensors" in err
    junk = tmp_path / "junk.pt"
    junk.write_text("not a tensor file")
    assert "not a file torch.save wrote" in _refused(
        ["train", str(junk), "--out", str(tmp_path / "o")], capsys
    )
    assert "does not exist" in _refused(
        ["train", str(tmp_path / "no.pt"), "--out", str(tmp_path / "o")], capsys
    )


def test_what_the_codes_file_says_is_not_a_setting(codes_file, tmp_path, capsys):
    out = str(tmp_path / "out")
    err = _refused(["train", str(codes_file), "--out", out, "--set", "cells=[3]"], capsys)
    assert "cells is read from the codes file" in err
    err = _refused(["train", str(codes_file), "--out", out, "--set", f"test_items={N}"], capsys)
    assert f"holds out every one of the {N} items" in err
    err = _refused(["train", str(codes_file), "--out", out, "--variant", "two-stage"], capsys)
    assert "--variant applies to image data sets" in err
    assert not (tmp_path / "out").exists()


def test_resume_with_other_codes_or_a_changed_file_is_refused(
    codes_file, codes_run, tmp_path, capsys, markov_walks, markov_codebook
):
    others = {
        "codes": markov_walks(N, torch.Generator().manual_seed(1)),
        "codebook": markov_codebook,
    }
    other = tmp_path / "other.pt"
    torch.save(others, other)
    before = _snapshot(codes_run)
    err = _refused(["train", str(other), "--out", str(codes_run), "--resume"], capsys)
    assert "not " + str(other) in err
    assert _snapshot(codes_run) == before
    mine = tmp_path / "mine.pt"
    mine.write_bytes(codes_file.read_bytes())
    run = tmp_path / "run"
    argv = ["train", str(mine), "--out", str(run), "--steps", "2", "--no-progress"]
    assert main([*argv, "--set", "test_items=10", "--set", "num_samples=4"]) == 0
    torch.save(others, mine)
    err = _refused(["evaluate", str(run), "--items", "10", "--no-progress"], capsys)
    assert "changed since the run started" in err
