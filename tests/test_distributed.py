"""Data-parallel SVI: two CPU processes (gloo, launched by torchrun) against one process."""

import json
import subprocess
import sys
import textwrap

import pyro
import pytest
import torch

from pbridge.checkpoint import load_checkpoint
from pbridge.config import ToyConfig, TrainSettings
from pbridge.inference.bound import negative_elbo
from pbridge.inference.distributed import World, local_batches, step_seed
from pbridge.inference.svi import train
from pbridge.models.builders import build_toy_model
from pbridge.toy import sample_walks

SETTINGS = dict(batch_size=16, lr=1e-2, seed=3)

_CHILD = textwrap.dedent(
    """
    import json, sys, torch, pyro
    import torch.distributed as dist
    from pbridge.inference.distributed import world_from_environment
    from pbridge.inference.svi import train
    from pbridge.config import TrainSettings
    from pbridge.models.builders import build_toy_model
    from pbridge.config import ToyConfig
    from pbridge.toy import sample_walks
    out, settings = sys.argv[1], json.loads(sys.argv[2])
    world = world_from_environment()
    pyro.enable_validation(False)
    torch.manual_seed(0)
    variant = build_toy_model(ToyConfig(denoiser_width=32, denoiser_blocks=1))
    x = sample_walks(64, generator=torch.Generator().manual_seed(0))[0]
    train(variant, x, TrainSettings(**settings), progress=False, checkpoint=out, world=world)
    dist.destroy_process_group()
    """
)


def _variant():
    torch.manual_seed(0)
    return build_toy_model(ToyConfig(denoiser_width=32, denoiser_blocks=1))


def _data():
    return sample_walks(64, generator=torch.Generator().manual_seed(0))[0]


def _two_processes(tmp_path, checkpoint, **settings):

    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", str(script), str(checkpoint), json.dumps(settings)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_one_ddp_step_equals_one_step_on_the_whole_batch(tmp_path):
    """Two processes, each on its half of a global batch of 16 with its own draws, then one
    Adam step: the parameters equal one process's step on the mean loss of the two halves with
    the same draws (each half's chain steps and noise supplied by the same seed). The tracked
    step costs (a buffer, broadcast from the first process at every step as DDP does with
    buffers) are the first process's: those of the first half."""
    pyro.enable_validation(False)
    _two_processes(tmp_path, tmp_path / "ddp.pt", steps=1, **SETTINGS)
    ddp = load_checkpoint(tmp_path / "ddp.pt")

    variant, x = _variant(), _data()
    optimiser = torch.optim.Adam(variant.parameters(), lr=SETTINGS["lr"])
    losses = []
    for rank in range(2):
        index = next(local_batches(64, 16, World(rank, 2), SETTINGS["seed"], first_step=1))
        torch.manual_seed(step_seed(SETTINGS["seed"], rank, 1))
        loss = negative_elbo(variant, x[index]) / 2
        loss.backward()
        losses.append(float(loss.detach()))
        if rank == 0:
            tracked = {
                f"step_costs.{k}": v.clone() for k, v in variant.step_costs.state_dict().items()
            }
    torch.nn.utils.clip_grad_norm_(variant.parameters(), 10.0)
    optimiser.step()

    assert ddp["losses"][0] == pytest.approx(sum(losses), rel=1e-6)
    moved = 0
    for name, value in {**variant.state_dict(), **tracked}.items():
        torch.testing.assert_close(ddp["model"][name], value, rtol=1e-5, atol=1e-6)
        moved += int(not torch.equal(value, _variant().state_dict()[name]))
    assert moved > 10  # the step changed the parameters


def test_shards_are_disjoint_and_cover_the_global_batch():
    shards = [next(local_batches(64, 16, World(rank, 2), seed=3, first_step=5)) for rank in (0, 1)]
    assert len(set(shards[0].tolist()) | set(shards[1].tolist())) == 16
    with pytest.raises(ValueError, match="batch size 15 must be divisible by the number of"):
        next(local_batches(64, 15, World(0, 2), seed=3, first_step=1))


def test_each_epoch_deals_a_fresh_shuffle_and_a_resumed_stream_continues_it():
    """64 items, 2 processes, global batches of 16: the 4 steps of an epoch deal every item
    exactly once across the processes; the next epoch is another shuffle; the stream started at
    step s equals the full stream from step s on (resumption)."""
    streams = [local_batches(64, 16, World(rank, 2), seed=3, first_step=1) for rank in (0, 1)]
    steps = [torch.cat([next(stream) for stream in streams]) for _ in range(12)]
    epochs = [torch.cat(steps[e * 4 : e * 4 + 4]) for e in range(3)]
    for order in epochs:
        assert torch.equal(order.sort().values, torch.arange(64))
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    for first in (2, 5, 8):
        resumed = [local_batches(64, 16, World(r, 2), seed=3, first_step=first) for r in (0, 1)]
        assert torch.equal(torch.cat([next(stream) for stream in resumed]), steps[first - 1])


def test_a_two_process_checkpoint_resumes_in_one_process(tmp_path):
    """Written by 2 processes at step 4, continued to step 6 by one: the first 4 losses are the
    two-process run's, the last 2 new and finite, and the checkpoint says step 6."""
    path = tmp_path / "ck.pt"
    _two_processes(tmp_path, path, steps=4, checkpoint_every=2, **SETTINGS)
    written = load_checkpoint(path)
    assert written["step"] == 4
    variant = _variant()
    settings = TrainSettings(steps=6, checkpoint_every=2, **SETTINGS)
    with pyro.validation_enabled(False):
        result = train(variant, _data(), settings, progress=False, checkpoint=path, resume=True)
    assert result.losses[:4] == written["losses"]
    assert len(result.losses) == 6 and all(abs(v) < 1e6 for v in result.losses[4:])
    assert load_checkpoint(path)["step"] == 6


def test_command_line_trains_with_two_processes(tmp_path):
    """``--devices 2`` re-launches the command under torchrun; process 0 writes the run."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "pbridge.cli", "train", "toy", "--steps", "20"]
    command += ["--devices", "2", "--out", str(out), "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "environment.json").read_text())["processes"] == 2
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 20
    assert json.loads(done.stdout)["steps"] == 20  # one metrics report, from process 0
