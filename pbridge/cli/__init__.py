"""The ``pbridge`` command line.

pbridge train DATASET --out RUN_DIR [--config FILE] [--set KEY=VALUE ...]
              [--steps N] [--seed S] [--lr LR] [--batch-size B] [--device auto|cpu|cuda]
              [--preset small|paper] [--variant NAME]
              [--codebook gradient|ema] [--restart-dead-codes U]
              [--overwrite | --resume [--steps N --extend-steps]]
              [--devices N [--nodes M --rdzv-endpoint HOST:PORT]]
pbridge train path/to/variant.py --out RUN_DIR [--set KEY=VALUE ...] [--resume] ...
pbridge train path/to/codes.pt --out RUN_DIR [--set KEY=VALUE ...] [--steps N] [--resume] ...
pbridge --version
pbridge sample RUN_DIR [--num N] [--sampler ancestral|respaced|sde|ode] [--sample-steps S]
               [--ddim-eta E] [--method M] [--no-progress]
pbridge evaluate RUN_DIR [--items N] [--samples N] [--fd-draws N] [--patch-items N]
                 [--patch-draws N] [--sampler ...] [--sample-steps S] [--no-progress]
pbridge analyze RUN_DIR [--num N] [--items N] [--seed S] [--sampler ...] [--sample-steps S]
                [--no-progress]

docs/cli.md describes every command and option.

This module holds :func:`main` (parsing, the one-line report of a failure, the data-parallel
launcher) and the dispatch to the commands; ``parser`` holds the parsers and their help,
``train`` the checks and the config of ``pbridge train``, ``run_commands`` the checks and calls of
``sample``, ``evaluate`` and ``analyze``, and ``messages`` how errors and warnings print.

Every command checks its inputs before it writes anything, so a command that refuses leaves
the run directory as it was, and holds the run directory's lock while it writes
(``inference/run_lock.py``: a second writer is refused, naming the first). Exit status: 0
done; 2 bad input, or a failure named in one line; 128 + signal number when stopped by
SIGINT/SIGTERM (in training, after writing a checkpoint).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import warnings

__all__ = ["main"]

from pbridge.cli.messages import one_line as _one_line
from pbridge.cli.messages import one_line_warning


def _parser() -> argparse.ArgumentParser:
    """The parser of ``pbridge`` and its commands (:func:`~pbridge.cli.parser.build_parser`)."""
    from pbridge.cli.parser import build_parser

    return build_parser()


def _print_version_if_asked(argv: list[str]) -> None:
    """``pbridge --version``: the version printed (and exit 0) before torch and Pyro are
    imported, read from the installed package's metadata."""
    from pbridge.cli.parser import version

    first = argparse.ArgumentParser(prog="pbridge", add_help=False)
    first.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    first.parse_known_args(argv[:1])


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input or a failure named in
    one line, 130 / 143 stopped by SIGINT / SIGTERM)."""
    argv = sys.argv[1:] if argv is None else argv
    _print_version_if_asked(argv)
    args = _parser().parse_args(argv)
    from torch import OutOfMemoryError

    from pbridge.checkpoint import CorruptCheckpointError
    from pbridge.cli.train import check_launch, check_train
    from pbridge.inference.svi import TrainingInterrupted

    with warnings.catch_warnings():  # pbridge's warnings as one line each
        warnings.filterwarnings("always", module=r"pbridge\.")
        warnings.showwarning = one_line_warning
        try:
            launch = args.command == "train" and (args.devices > 1 or args.nodes > 1)
            if launch and "WORLD_SIZE" not in os.environ:
                check_launch(args, check_train(args))
                return _launch_data_parallel(args, argv)
            return _run(args)
        except TrainingInterrupted as stopped:
            print(f"pbridge: {stopped}; continue with --resume", file=sys.stderr)
            return 128 + signal.Signals.__members__.get(stopped.signal_name, signal.SIGTERM).value
        except KeyboardInterrupt:
            print(f"pbridge: {args.command} stopped by SIGINT (Ctrl-C)", file=sys.stderr)
            return 128 + signal.SIGINT
        except (
            ValueError,
            TypeError,
            OSError,  # missing or unreadable files, permissions, a full disk
            ImportError,  # an optional extra that is not installed (pbridge[digits])
            CorruptCheckpointError,
            FloatingPointError,
            MemoryError,
            OutOfMemoryError,  # CUDA's
        ) as err:
            print(f"pbridge: {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
            return 2
        except RuntimeError as err:
            if "can't allocate memory" not in str(err):  # torch's CPU allocator; else a bug
                raise
            print(f"pbridge: out of memory: {_one_line(err)}", file=sys.stderr)
            return 2


def _launch_data_parallel(args: argparse.Namespace, argv: list[str]) -> int:
    """Run this same command under ``torchrun`` with ``--devices`` processes per machine
    (checked first by :func:`~pbridge.cli.train.check_launch`); on one machine the launcher
    holds the run directory's lock for its processes."""
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(args.devices),
    ]
    if args.nodes > 1:
        launcher += ["--nnodes", str(args.nodes), "--rdzv-backend", "c10d"]
        launcher += ["--rdzv-endpoint", args.rdzv_endpoint, "--rdzv-id", "pbridge"]
    else:
        launcher.append("--standalone")
    inner = _without_launch_options(argv)
    command = [*launcher, "-m", "pbridge.cli", *inner]
    if args.nodes > 1:  # the process of rank 0, on whichever machine, locks the run directory
        return subprocess.run(command, check=False).returncode
    from pbridge.inference.run_lock import INHERITED_LOCK, LOCK_FILE, run_lock

    name = "train --resume" if args.resume else "train"
    with run_lock(args.out, name, create=not args.resume) as held:
        env = {**os.environ, INHERITED_LOCK: str((held.folder / LOCK_FILE).resolve())}
        return subprocess.run(command, check=False, env=env).returncode


def _without_launch_options(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item in ("--devices", "--nodes", "--rdzv-endpoint"):
            skip = True
        elif not item.startswith(("--devices=", "--nodes=", "--rdzv-endpoint=")):
            kept.append(item)
    return kept


def _run(args: argparse.Namespace) -> int:
    from pbridge.cli.run_commands import analyze_command, evaluate_command, sample_command
    from pbridge.cli.train import train_command

    if args.command == "train":
        metrics = train_command(args)
    elif args.command == "evaluate":
        metrics = evaluate_command(args)
    elif args.command == "analyze":
        metrics = analyze_command(args)
    else:
        metrics = sample_command(args)
    if metrics:  # empty on the processes of a data-parallel job other than the first
        from pbridge.inference.run_dir import json_text

        print(json_text(metrics))
    return 0
