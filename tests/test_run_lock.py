"""A run directory is one writer's (issue 23): the lock of :mod:`pbridge.inference.run_lock`,
failed starts that remove only their own files, a finished run resumed, a lost checkpoint,
a full disk."""

import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pbridge.checkpoint import save_checkpoint
from pbridge.cli import main
from pbridge.config import ToyConfig
from pbridge.inference import run_lock as lock_module
from pbridge.inference.run_lock import INHERITED_LOCK, LOCK_FILE, RunLockedError, run_lock
from pbridge.inference.toy import run_toy

TINY = ["--set", "num_train=256", "--set", "num_samples=64", "--set", "hidden=16"]
TINY += ["--set", "denoiser_width=16", "--set", "denoiser_blocks=1", "--batch-size", "16"]
TINY += ["--no-progress"]
"""The tiny toy settings of ``tiny_toy_run`` (tests/conftest.py), ``--steps`` left out."""

TIMEOUT = 120
"""Seconds any process of these tests may take."""


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _cli(*args: object) -> subprocess.Popen:
    """``python -m pbridge.cli ARGS`` in a new process (one thread), its output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pbridge.cli", *map(str, args)]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    """The exit status and stderr of ``process``, killed after :data:`TIMEOUT` seconds."""
    try:
        _, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, err.strip()


def _one_wins(processes: list[subprocess.Popen]) -> tuple[int, str]:
    """The pid of the one process of ``processes`` that exits 0, and the last stderr line of
    the other, which must exit 2."""
    results = {process.pid: _finish(process) for process in processes}
    assert sorted(status for status, _ in results.values()) == [0, 2], results
    winner = next(pid for pid, (status, _) in results.items() if status == 0)
    refused = next(err for status, err in results.values() if status == 2)
    return winner, refused.splitlines()[-1]


def _refusal_names_the_holder(err: str, pid: int, command: str) -> None:
    assert err.startswith("pbridge: RunLockedError: ") and "\n" not in err, err
    assert f"is in use by `pbridge {command}` (pid {pid} on {socket.gethostname()}, since " in err


def _steps_logged(run: Path) -> list[int]:
    lines = (run / "train.csv").read_text().splitlines()
    column = lines[0].split(",").index("step")
    return [int(line.split(",")[column]) for line in lines[1:]]


@pytest.fixture
def run(tiny_toy_run, tmp_path):
    """A copy of the finished 30-step tiny toy run of tests/conftest.py."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_toy_run, copy)
    return copy


@pytest.fixture
def failing_training(monkeypatch):
    """Training writes ``samples/step_000001.png`` and a checkpoint of stage ``vqvae.pt``, then
    fails with a NaN at step 1 (the last stage)."""

    def fail(variant, data, settings, checkpoint, *args, **kwargs):
        if checkpoint.name == "vqvae.pt":  # a first stage that finished
            save_checkpoint({"step": settings.steps}, checkpoint)
            return type("Result", (), {"seconds": 0.0})()
        (checkpoint.parent / "samples").mkdir(exist_ok=True)
        (checkpoint.parent / "samples" / "step_000001.png").write_bytes(b"png")
        raise FloatingPointError("non-finite loss at step 1: x (model)")

    monkeypatch.setattr("pbridge.inference.pipeline.train_in_run", fail)


# ---------------------------------------------------------------- real processes
@pytest.mark.processes
def test_two_trains_started_at_once_one_trains_the_other_is_refused(tmp_path, capsys):
    """Issue 23 item 1: exactly one trains; the other exits 2 with one line naming it, and
    deletes nothing; the survivor's run samples and resumes."""
    out = tmp_path / "run"
    both = [_cli("train", "toy", "--out", out, "--steps", "30", *TINY) for _ in range(2)]
    winner, refused = _one_wins(both)
    _refusal_names_the_holder(refused, winner, "train")
    assert not (out / LOCK_FILE).exists()
    assert main(["sample", str(out), "--num", "4", "--no-progress"]) == 0
    resumed = ["train", "toy", "--out", str(out), "--resume", "--steps", "35", "--extend-steps"]
    assert main([*resumed, "--no-progress"]) == 0
    assert _steps_logged(out) == list(range(1, 36))


@pytest.mark.processes
def test_two_resumes_at_once_one_is_refused_and_train_csv_keeps_every_step(run):
    """Issue 23 item 1: two ``--resume --extend-steps`` of one run: one trains, one is refused;
    ``train.csv`` holds exactly one row per step."""
    resume = ["train", "toy", "--out", run, "--resume", "--steps", "60", "--extend-steps"]
    both = [_cli(*resume, *TINY) for _ in range(2)]
    winner, refused = _one_wins(both)  # its warning about --extend-steps before, maybe
    _refusal_names_the_holder(refused, winner, "train --resume")
    assert _steps_logged(run) == list(range(1, 61))


_HOLDER = """
import sys, time
from pbridge.inference.run_lock import run_lock
with run_lock(sys.argv[1], "sample"):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.mark.processes
def test_a_live_holder_is_named_and_its_lock_taken_over_once_it_is_killed(run, capsys):
    """A process holding the lock refuses ``sample`` (the run byte-identical); killed with
    SIGKILL it leaves its lock file behind, which the next command recognises as stale."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(run)
        assert main(["sample", str(run), "--num", "4", "--no-progress"]) == 2
        _refusal_names_the_holder(capsys.readouterr().err.strip(), holder.pid, "sample")
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):  # from Python too
            run_toy(_tiny_config(), run, progress=False, resume=True)
        assert _snapshot(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=TIMEOUT)
        holder.stdout.close()
    assert (run / LOCK_FILE).is_file()  # stale: its holder is dead
    assert main(["sample", str(run), "--num", "4", "--no-progress"]) == 0
    assert not (run / LOCK_FILE).exists()


# ---------------------------------------------------------------- the lock itself
def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=TIMEOUT)
    return child.pid


def _stale_lock(folder: Path) -> None:
    holder = {"pid": _dead_pid(), "host": socket.gethostname(), "command": "train"}
    (folder / LOCK_FILE).write_text(json.dumps({**holder, "since": "2026-12-01T00:00:00"}))


def test_a_stale_lock_of_a_dead_process_is_taken_over(run):
    _stale_lock(run)
    assert main(["sample", str(run), "--num", "4", "--no-progress"]) == 0
    assert not (run / LOCK_FILE).exists()


def test_an_unwritten_lock_is_stale_once_it_is_old(run, capsys):
    """A lock file naming no holder (its process killed between creating and writing it)."""
    (run / LOCK_FILE).write_text("")
    assert main(["sample", str(run), "--num", "4", "--no-progress"]) == 2
    assert "is being written" in capsys.readouterr().err
    os.utime(run / LOCK_FILE, (0, 0))
    assert main(["sample", str(run), "--num", "4", "--no-progress"]) == 0


def test_of_many_takers_of_a_stale_lock_exactly_one_wins(tmp_path):
    _stale_lock(tmp_path)
    path, start, won, refused = tmp_path / LOCK_FILE, threading.Barrier(8), [], []

    def take() -> None:
        start.wait()
        try:
            won.append(lock_module._acquire(path, "train"))
        except RunLockedError:
            refused.append(1)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TIMEOUT)
    assert len(won) == 1 and len(refused) == 7
    assert json.loads(path.read_text())["pid"] == os.getpid()
    os.unlink(path)
    os.close(won[0])


def test_a_lock_of_another_host_is_never_taken_over(run, capsys):
    holder = {"pid": 1, "host": "elsewhere", "command": "train", "since": "2026-12-01"}
    (run / LOCK_FILE).write_text(json.dumps(holder))
    before = _snapshot(run)
    assert main(["sample", str(run), "--num", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "(pid 1 on elsewhere, since 2026-12-01)" in err and f"delete {run / LOCK_FILE}" in err
    assert _snapshot(run) == before


def test_the_lock_is_released_on_an_exception_and_on_ctrl_c(tmp_path):
    for raised in (ValueError("bad"), KeyboardInterrupt()):
        with pytest.raises(type(raised)), run_lock(tmp_path / "new", "train", create=True):
            assert (tmp_path / "new" / LOCK_FILE).is_file()
            raise raised
        assert not (tmp_path / "new").exists()  # created, left empty: removed


_INHERITOR = """
import sys
from pbridge.inference.run_lock import run_lock
with run_lock(sys.argv[1], "train"):
    print("in", flush=True)
"""


@pytest.mark.processes
def test_the_processes_of_a_launcher_holding_the_lock_inherit_it(tmp_path):
    """``train --devices N`` on one machine: the launcher holds the lock; its process of rank 0
    (told by ``PBRIDGE_RUN_LOCK``) and of rank 1 run under it without taking or removing it."""
    with run_lock(tmp_path, "train"):
        path = str((tmp_path / LOCK_FILE).resolve())
        for env in ({"RANK": "0", INHERITED_LOCK: path}, {"RANK": "1"}):
            done = subprocess.run(
                [sys.executable, "-c", _INHERITOR, str(tmp_path)],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
            assert (done.returncode, done.stdout) == (0, "in\n"), done.stderr
            assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()


def test_ranks_above_zero_take_no_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with run_lock(tmp_path, "train"):
        assert not (tmp_path / LOCK_FILE).exists()


# ---------------------------------------------------------------- the Python entry points
def _tiny_config(steps: int = 30) -> ToyConfig:
    from pbridge.config import TrainSettings

    train = TrainSettings(steps=steps, batch_size=16)
    return ToyConfig(
        num_train=256, num_samples=64, hidden=16, denoiser_width=16, denoiser_blocks=1, train=train
    )


def test_run_toy_refuses_an_existing_run_as_the_command_line_does(
    run, monkeypatch, failing_training
):
    """Issue 23 item 3: ``run_toy`` called from Python refuses a directory holding a run, up
    front and, should a run appear after that check, in ``write_run_files``'s re-check under
    the lock; the run stays byte-identical."""
    before = _snapshot(run)
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        run_toy(_tiny_config(), run, progress=False)
    monkeypatch.setattr("pbridge.inference.pipeline.check_out_dir", lambda *args: None)
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        run_toy(_tiny_config(), run, progress=False)
    assert _snapshot(run) == before and not (run / LOCK_FILE).exists()


# ---------------------------------------------------------------- failed starts
def test_a_failed_resume_of_a_run_without_a_checkpoint_removes_only_its_own_files(
    run, capsys, failing_training
):
    """Issue 23 item 4: its config, environment and log stay; what the failed session wrote
    (a grid of samples) goes."""
    for name in ("checkpoint.pt", "metrics.json"):
        (run / name).unlink()
    shutil.rmtree(run / "samples")  # stopped before its first grid
    before = _snapshot(run)
    assert main(["train", "toy", "--out", str(run), "--resume", "--no-progress"]) == 2
    assert "non-finite loss at step 1" in capsys.readouterr().err
    assert _snapshot(run) == before and not (run / "samples").exists()


def test_a_resume_that_fails_before_its_first_checkpoint_leaves_the_run_as_it_was(
    run, capsys, monkeypatch
):
    """A resume rewrites environment.json (here another commit's) and train.csv before it
    trains; failing before a checkpoint, it puts both back, byte for byte."""
    (run / "metrics.json").unlink()
    before = _snapshot(run)
    monkeypatch.setattr(
        "pbridge.inference.run_dir.environment", lambda: {"git_commit": "another commit"}
    )

    def fail(variant, data, settings, checkpoint, *args, **kwargs):
        (checkpoint.parent / "train.csv").write_text("step,loss\n")  # the log reopened
        raise FloatingPointError("non-finite loss at step 31: x (model)")

    monkeypatch.setattr("pbridge.inference.pipeline.train_in_run", fail)
    argv = ["train", "toy", "--out", str(run), "--resume", "--steps", "40", "--extend-steps"]
    assert main([*argv, "--no-progress"]) == 2
    assert "non-finite loss at step 31" in capsys.readouterr().err
    assert _snapshot(run) == before


def test_a_failed_second_stage_of_a_fresh_two_stage_run_keeps_the_first(
    tmp_path, capsys, failing_training
):
    """Issue 23 item 2: ``vqvae.pt``, the finished first stage, survives; the run resumes."""
    out = tmp_path / "new"
    argv = ["train", "digits", "--variant", "two-stage", "--vqvae-steps", "2", "--steps", "3"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 2
    assert "non-finite loss" in capsys.readouterr().err
    assert (out / "vqvae.pt").is_file() and (out / "config.json").is_file()
    assert not (out / LOCK_FILE).exists()


# ---------------------------------------------------------------- a finished run resumed
def test_resuming_a_finished_run_says_so_and_writes_nothing(run, capsys):
    """Issue 23 item 5: one line, exit 0, metrics.json (train_seconds) left as it is."""
    before = _snapshot(run)
    assert main(["train", "toy", "--out", str(run), "--resume", "--no-progress"]) == 0
    err = capsys.readouterr().err.strip()
    assert err == (
        f"pbridge: warning: {run} is finished: it has trained all its 30 steps and is scored "
        "(metrics.json, left as it is); nothing to do. To train it on, pass --steps N "
        "--extend-steps with --resume"
    )
    assert _snapshot(run) == before


# ---------------------------------------------------------------- a full disk
def test_a_full_disk_in_training_names_the_file_and_leaves_no_empty_samples_folder(
    tmp_path, capsys, monkeypatch
):
    """Issue 23 item 7: the grid of step 2 meets a full disk after the checkpoint of step 1:
    the line names the file; no empty ``samples/`` stays beside the resumable checkpoint."""

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("pbridge.inference.plots.plot_toy_samples", full)
    out = tmp_path / "new"
    every = ["--set", "train.checkpoint_every=1", "--set", "train.sample_every=2"]
    assert main(["train", "toy", "--steps", "3", "--out", str(out), *TINY, *every]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"pbridge: OSError: [Errno 28] No space left on device: '{out}/samples/step_000002.png'"
    )
    assert (out / "checkpoint.pt").is_file() and not (out / "samples").exists()
