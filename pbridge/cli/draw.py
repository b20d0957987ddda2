"""``pbridge sample``, ``evaluate`` and ``analyze``: their up-front checks (the run, the sampler
against its chain, memory, a writable folder), then one call into ``pbridge.inference``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from pbridge.cli.messages import warn
from pbridge.cli.parser import sampler_settings
from pbridge.data import data_set


def _progress(args: argparse.Namespace):
    """The :class:`~pbridge.inference.progress.Progress` of ``--no-progress``."""
    from pbridge.inference.progress import Progress

    return Progress(not args.no_progress)


def _check_drawing(args: argparse.Namespace, sampler) -> str:
    """Up-front checks of sample / evaluate / analyze: the run directory, its config.json, the
    sampler against the run's chain and that the directory can be written; returns the run's
    kind."""
    from pbridge.inference.run_dir import check_writable, read_config, run_kind

    kind = run_kind(args.run_dir)
    config = read_config(args.run_dir)
    num_steps = config.get("num_steps")
    if kind != "variant-file" and isinstance(num_steps, int):
        sampler.check_chain(num_steps)
        chain_steps = getattr(args, "chain_steps", None)
        tight = config.get("bridge", {}).get("formulation", "tight") == "tight"
        if chain_steps is not None and not tight and num_steps % chain_steps:
            raise ValueError(f"--chain-steps {chain_steps} must divide the chain's T = {num_steps}")
    draws = args.samples * args.fd_draws if args.command == "evaluate" else args.num
    _check_memory(config, kind, draws, args.device)
    check_writable(args.run_dir)
    return kind


@contextmanager
def _locked(args: argparse.Namespace) -> Iterator[None]:
    """The run directory of a sample / evaluate / analyze command, checked to hold a run and
    locked (:mod:`~pbridge.inference.run_lock`) for the command."""
    from pbridge.inference.run_dir import read_config
    from pbridge.inference.run_lock import run_lock

    read_config(args.run_dir)  # a missing run is named as such, not as a lock that failed
    with run_lock(args.run_dir, args.command):
        yield


def _check_memory(config: dict, kind: str, num: int, device: str) -> None:
    """``num`` prior draws of the run fit in memory, estimated from its config.json (a variant
    file's shapes are known only once it is built: checked then)."""
    from pbridge.inference.run_dir import resolve_device
    from pbridge.inference.sampling import check_memory_for_draws

    try:
        d, k = int(config["latent_dim"]), int(config["num_codes"])
        if kind == "toy":
            length = int(config["length"])
            data, latent = (2, length), (d, length)
        elif kind == "image":
            channels, height, width = data_set(config["dataset"]).shape
            scale = 2 ** int(config["downsamples"])
            data, latent = (channels, height, width), (d, height // scale, width // scale)
        else:
            return
    except (KeyError, TypeError, ValueError):
        return  # a config.json that does not read is named when the run is loaded
    check_memory_for_draws(num, data, latent, k, resolve_device(device))


def sample_command(args: argparse.Namespace) -> dict:
    from pbridge.inference.sample_run import sample_run

    sampler = sampler_settings(args)
    with _locked(args):
        _check_drawing(args, sampler)
        return sample_run(
            args.run_dir, args.num, args.device, args.seed, sampler, args.weights, _progress(args)
        )


def analyze_command(args: argparse.Namespace) -> dict:
    from pbridge.inference.analysis import analyze_run

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
    from pbridge.inference.evaluate import EvalSettings, evaluate_run
    from pbridge.inference.toy import evaluate_toy_run

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
        if _check_drawing(args, sampler) == "toy":
            return evaluate_toy_run(
                args.run_dir, settings, args.device, sampler, args.weights, progress
            )
        result = evaluate_run(
            args.run_dir, settings, args.device, args.root, sampler, args.weights, progress
        )
    bpd, stderr = result.get("test_bits_per_dim"), result.get("test_bits_per_dim_stderr")
    if bpd is not None and stderr is not None and stderr > abs(bpd) / 4:
        warn(
            f"test bits/dim {bpd:.2f} +- {stderr:.2f}: noise dominates the estimate; raise "
            "--items (and --chain-steps) for a figure to compare"
        )
    return result
