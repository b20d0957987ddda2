"""``pbridge sample``, ``evaluate`` and ``analyze``: their up-front checks (the run, the sampler
against its chain, memory, a writable folder), then one call into ``pbridge.inference``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from pbridge.cli.messages import warn
from pbridge.cli.parser import sampler_settings


def _progress(args: argparse.Namespace):
    """The :class:`~pbridge.inference.progress.Progress` of ``--no-progress``."""
    from pbridge.inference.progress import Progress

    return Progress(not args.no_progress)


def _check_drawing(args: argparse.Namespace, sampler) -> None:
    """Up-front checks of sample / evaluate / analyze, each once: the run directory and its
    config.json, the sampler against the run's chain, the draws against memory (where
    config.json describes them: :attr:`~pbridge.inference.run_kinds.RunKind.shapes`) and that
    the directory can be written. (A variant file's chain is checked once it is built.)"""
    from pbridge.inference.run_dir import check_writable, read_config
    from pbridge.inference.run_kinds import kind_of

    kind, config = kind_of(args.run_dir), read_config(args.run_dir)
    try:
        shapes, num_codes = kind.shapes(config), int(config["num_codes"])
    except (KeyError, TypeError, ValueError):
        shapes = None  # a config.json that does not read is named when the run is loaded
    num_steps = config.get("num_steps")
    if shapes is not None and isinstance(num_steps, int):
        sampler.check_chain(num_steps)
    if shapes is not None:
        draws = args.samples * args.fd_draws if args.command == "evaluate" else args.num
        _check_memory(shapes, num_codes, draws, args.device)
    check_writable(args.run_dir)


@contextmanager
def _locked(args: argparse.Namespace) -> Iterator[None]:
    """The run directory of a sample / evaluate / analyze command, checked to hold a run and
    locked (:mod:`~pbridge.inference.run_lock`) for the command."""
    from pbridge.inference.run_dir import read_config
    from pbridge.inference.run_lock import run_lock

    read_config(args.run_dir)  # a missing run is named as such, not as a lock that failed
    with run_lock(args.run_dir, args.command):
        yield


def _check_memory(shapes, num_codes: int, num: int, device: str) -> None:
    """``num`` prior draws of ``shapes`` (data shape, latent shape) over ``num_codes`` codes
    fit in memory."""
    from pbridge.inference.run_dir import resolve_device
    from pbridge.inference.sampling import check_memory_for_draws

    data, latent = shapes
    check_memory_for_draws(num, data, latent, num_codes, resolve_device(device))


def sample_command(args: argparse.Namespace) -> dict:
    from pbridge.inference.sample_run import sample_run

    sampler = sampler_settings(args)
    with _locked(args):
        _check_drawing(args, sampler)
        return sample_run(
            args.run_dir, args.num, args.device, args.seed, sampler, args.weights, _progress(args)
        )


def analyze_command(args: argparse.Namespace) -> dict:
    from pbridge.inference.run_kinds import analyze_run

    sampler = sampler_settings(args)
    with _locked(args):
        _check_drawing(args, sampler)
        return analyze_run(
            args.run_dir,
            args.num,
            args.items,
            args.seed,
            args.device,
            args.root,
            sampler,
            args.weights,
            _progress(args),
        )


def evaluate_command(args: argparse.Namespace) -> dict:
    from pbridge.inference import run_kinds
    from pbridge.inference.evaluate import EvalSettings

    sampler = sampler_settings(args)
    settings = EvalSettings(
        bpd_items=args.items,
        chain_steps=args.chain_steps,
        num_samples=args.samples,
        fd_draws=args.fd_draws,
        patch_items=args.patch_items,
        patch_draws=args.patch_draws,
        seed=args.seed,
    )
    progress = _progress(args)
    with _locked(args):
        _check_drawing(args, sampler)
        result = run_kinds.evaluate_run(
            args.run_dir, settings, args.device, args.root, sampler, args.weights, progress
        )
    bpd, stderr = result.get("test_bits_per_dim"), result.get("test_bits_per_dim_stderr")
    if bpd is not None and stderr is not None and stderr > abs(bpd) / 4:
        warn(
            f"test bits/dim {bpd:.2f} +- {stderr:.2f}: noise dominates the estimate; raise "
            "--items (and --chain-steps) for a figure to compare"
        )
    return result
