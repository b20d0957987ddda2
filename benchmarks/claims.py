"""The paper's two claims on Fashion-MNIST, row by row: end to end against two-stage, and the
bridge against the PixelCNN, paired on the same test images, at more than one budget and seed.

    OMP_NUM_THREADS=1 python benchmarks/claims.py --out runs/claims

A row is one prior (``end-to-end``: the VQ-VAE warm start, as long a share of the budget as
two-stage's first stage, then the joint ELBO; ``end-to-end-warm1000``: the default warm start of
1,000 VQ-VAE steps at any budget, the rest on the joint ELBO; ``end-to-end-cold``: the joint
ELBO from the first step; ``two-stage``; ``pixelcnn``; ``end-to-end-unet48`` and
``two-stage-unet48``: the same with a chain U-Net of width 48 instead of 32;
``end-to-end-slowcodes``: end to end with the encoder and codebook at a tenth of the learning
rate in the joint stage, ``bridge.codes_lr_scale=0.1``, today's default;
``end-to-end-slowercodes``: the same at 0.03 of the rate; the other end-to-end
rows train everything at one rate, ``bridge.codes_lr_scale=1``) at one training
budget and seed. Its step counts give it the budget at the step costs measured side by side
(one process, one thread, batch 64, docs/results.md): VQ-VAE 0.167 s, PixelCNN on a frozen
VQ-VAE 1.10 s, tight bridge on a frozen VQ-VAE 0.575 s, tight bridge end to end 0.605 s; a
U-Net of width 48 costs 1.43 times a bridge step on frozen codes and 1.48 times an end-to-end
step (``benchmarks/step_costs.py``, docs/results.md). Each
run logs the held-out bound on the first ``HELDOUT_ITEMS`` test images every ``EVAL_EVERY``
steps of its last stage (``train.csv``, EMA weights), the curves' points; then every test image
of the first ``--items`` is scored twice with independent draws (``paired_bits.pt``), so that
any two rows compare on the same images.

Two streams run the rows, each command with one torch thread. A finished row (its scores
written, :data:`SCORES`, or its record in :data:`RECORDS`) is never rerun; a row cut short
resumes from its checkpoints. After every row its record is written, and the tables and the
curve figure are rewritten from the records between the markers of docs/results.md and
committed (``--no-commit``: not committed). To run a recorded row again, delete its record: the
new run's record replaces it. Rows run in :data:`RUN_ORDER` first; ``--rows NAME...`` runs
only the named rows (several invocations with ``--streams 1`` and disjoint rows may run side
by side, all but one with ``--no-commit``).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from doc_section import write_section

THREADS = os.environ.get("OMP_NUM_THREADS", "1")
HELDOUT_ITEMS = 1000
PATCH_ITEMS = 64
EVAL_EVERY = 250
SECTION = "claims"
"""The section of docs/results.md this benchmark writes (:mod:`doc_section`)."""
CURVE = "docs/images/claims-curve.png"
LEGACY_CURVE = "docs/images/claims-curve-before-records.png"
"""The curves of the rows recorded from docs/results.md after their run folders were lost
(their records keep no curve): the figure as this benchmark last drew it from those runs."""
RECORDS = "docs/data/claims"
"""One JSON record per finished row (:func:`record_from_run`): the tables and the figure are
written from these, and a recorded row is not rerun, whether or not its run folder is here."""

STEP_SECONDS = {"vqvae": 0.167, "pixelcnn": 1.10, "two-stage": 0.575, "end-to-end": 0.605}
"""Seconds per step of each stage, measured side by side (benchmarks/baselines.py's docstring)."""

UNET_WIDTH = {"end-to-end-unet48": 48, "two-stage-unet48": 48}
"""The priors whose chain U-Net is wider than the ``small`` preset's 32."""

CODES_LR_SCALE = {
    "end-to-end-slowcodes": 0.1,
    "end-to-end-slowercodes": 0.03,
    "end-to-end-restart": 0.1,
}
"""The end-to-end priors whose encoder and codebook learn at this multiple of the learning
rate in the joint ELBO (``bridge.codes_lr_scale``, the image default since these rows); the
other end-to-end priors at the full rate, as every run did before."""

RESTART_DEAD_CODES = {"end-to-end-restart": 1.0}
"""The priors whose VQ-VAE stage restarts a code used by fewer than this many cells per batch
(moving average, ``--restart-dead-codes``); the others restart none, the default."""

WIDTH_COST = {("two-stage", 48): 1.43, ("end-to-end", 48): 1.48}
"""(variant, U-Net width) -> its step cost over the width-32 step of that variant, measured
side by side (``OMP_NUM_THREADS=1 python benchmarks/step_costs.py``)."""


@dataclass(frozen=True)
class Row:
    """One run: ``prior`` at ``budget`` seconds of one core, seed ``seed``."""

    prior: str
    budget: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.prior}-{self.budget}s-seed{self.seed}"

    @property
    def variant(self) -> str:
        return next(v for v in ("end-to-end", "two-stage", "pixelcnn") if self.prior.startswith(v))

    @property
    def unet_width(self) -> int:
        return UNET_WIDTH.get(self.prior, 32)

    def step_seconds(self) -> float:
        """Seconds of one step of the last stage."""
        return STEP_SECONDS[self.variant] * WIDTH_COST.get((self.variant, self.unet_width), 1.0)

    def steps(self) -> tuple[int, int]:
        """(VQ-VAE steps, steps of the last stage) that spend the budget."""
        if self.prior == "end-to-end-cold":
            return 0, round(self.budget / self.step_seconds())
        vqvae = 1000 if self.prior == "end-to-end-warm1000" else 1000 * self.budget // 900
        rest = self.budget - vqvae * STEP_SECONDS["vqvae"]
        return vqvae, round(rest / self.step_seconds())


ROWS = [
    *(Row(p, 900, 0) for p in ("end-to-end", "two-stage", "pixelcnn", "end-to-end-cold")),
    *(Row(p, 900, s) for s in (1, 2) for p in ("end-to-end", "two-stage")),
    *(Row("pixelcnn", 900, s) for s in (1, 2)),
    *(Row(p, 3600, 0) for p in ("end-to-end", "two-stage", "pixelcnn")),
    Row("end-to-end-warm1000", 3600, 0),
    *(Row(p, 3600, 0) for p in ("end-to-end-unet48", "two-stage-unet48")),
    *(Row("end-to-end-slowcodes", 900, s) for s in (0, 1, 2)),
    Row("end-to-end-slowcodes", 3600, 0),
    Row("end-to-end-slowercodes", 3600, 0),
    Row("end-to-end-slowercodes", 900, 0),
    *(Row(p, 3600, 1) for p in ("end-to-end-slowcodes", "pixelcnn")),
    Row("end-to-end-restart", 900, 1),
]
"""Every row, in the order of the tables."""

ROWS_NAMED = ", ".join(r.name for r in ROWS)

BRIDGES = (
    "end-to-end",
    "end-to-end-warm1000",
    "two-stage",
    "end-to-end-unet48",
    "two-stage-unet48",
    "end-to-end-slowcodes",
    "end-to-end-slowercodes",
    "end-to-end-restart",
)
"""The bridge priors; the best of them at a budget and seed is paired with the PixelCNN."""

RUN_ORDER = [
    *(Row(p, 900, 2) for p in ("end-to-end", "two-stage")),
    *(Row(p, 3600, 0) for p in ("end-to-end", "two-stage", "pixelcnn")),
    *(Row("pixelcnn", 900, s) for s in (1, 2)),
    *(Row(p, 900, s) for s in (0, 1) for p in ("end-to-end", "two-stage")),
    Row("pixelcnn", 900, 0),
]
"""The rows that run first (the bridges' third seed, then the long budget, then the
PixelCNN's other seeds, then the FD-FMNIST of the first rows); the rest of :data:`ROWS`
(the cold-start ablation) follows in its order."""

FD_SAMPLES, FD_DRAWS = 500, 3
"""FD-FMNIST: ``FD_DRAWS`` independent sets of ``FD_SAMPLES`` prior samples (mean, s.e.)."""


def train_command(row: Row, out: Path) -> list[str]:
    vqvae, steps = row.steps()
    return [
        *("train", "fashion-mnist", "--preset", "small", "--variant", row.variant),
        f"--vqvae-steps={vqvae}",
        f"--steps={steps}",
        *("--seed", str(row.seed), "--out", str(out / row.name), "--no-progress"),
        *(("--set", f"unet_width={row.unet_width}") if row.prior in UNET_WIDTH else ()),
        *(
            ("--restart-dead-codes", str(RESTART_DEAD_CODES[row.prior]))
            if row.prior in RESTART_DEAD_CODES
            else ()
        ),
        *(
            ("--set", f"bridge.codes_lr_scale={CODES_LR_SCALE.get(row.prior, 1.0)}")
            if row.variant == "end-to-end"
            else ()
        ),
        *(
            "--set",
            f"train.eval_every={EVAL_EVERY}",
            "--set",
            f"train.heldout_items={HELDOUT_ITEMS}",
        ),
    ]


def run_row(row: Row, args: argparse.Namespace) -> None:
    """Train ``row`` (resuming a run cut short) and score its images; output to its log."""
    out = Path(args.out)
    run = out / row.name
    train = train_command(row, out)
    if (run / "metrics.json").is_file():
        train = []
    elif (run / "config.json").is_file():
        train.append("--resume")
    score = [sys.executable, __file__, "--score", str(run), "--items", str(args.items)]
    lines = [shlex.join([sys.executable, "-m", "pbridge.cli", *train])] if train else []
    lines.append(shlex.join(score))
    env = {**os.environ, "OMP_NUM_THREADS": THREADS}
    with (out / f"{row.name}.log").open("a") as log:
        done = subprocess.run(
            ["bash", "-c", "set -e; " + "; ".join(lines)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    if done.returncode:
        raise RuntimeError(f"{row.name} failed: see {out / row.name}.log")


SCORES = ("patch.json", "paired_bits.pt", "fd.json")
"""A row's scores; a row is finished when all three are written."""


def finished(run: Path) -> bool:
    """All its scores are written, in its run folder or (with its FD-FMNIST) in its record."""
    import json

    record = Path(RECORDS) / f"{run.name}.json"
    if record.is_file() and json.loads(record.read_text())["fd"] is not None:
        return True
    return all((run / name).is_file() for name in SCORES)


def scored(run: Path) -> bool:
    """Its bound and masked patch are scored (its FD-FMNIST may still be queued)."""
    return all((run / name).is_file() for name in SCORES[:2])


def score_run(run: Path, items: int, chain_steps: int = 100) -> None:
    """The scores of ``run`` not yet written (each file written whole, once):

    - ``patch.json``: the masked-patch figures of ``pbridge evaluate`` on the first
      :data:`PATCH_ITEMS` test images (bridges: completions by 100 respaced steps) and, for a
      bridge, its bound's bits per cell by band of steps on the first 200;
    - ``paired_bits.pt``: bits/dim of each of the first ``items`` test images, ``(2, items)``,
      two independent draws (:func:`paired_bound.bits_per_image`);
    - ``fd.json``: FD-FMNIST of :data:`FD_DRAWS` sets of :data:`FD_SAMPLES` prior samples
      (decoder means; bridges by 100 respaced steps) against the test split.

    Seed 0 before each."""
    import json

    import pyro
    from paired_bound import bits_per_image

    from pbridge.data import load_images
    from pbridge.feature_distance import fd_fmnist, load_classifier
    from pbridge.inference.evaluate import EvalSettings, chain_bits_by_step, masked_patch_scores
    from pbridge.inference.load import load_run
    from pbridge.inference.sampling import sample_prior
    from pbridge.samplers import ANCESTRAL, SamplerSettings
    from pbridge.variant import BridgeChain

    loaded = load_run(run, device="cpu")
    variant = loaded.variant
    test_x = load_images(loaded.config.dataset, "test").as_float()
    x = test_x[:items]
    sampler = ANCESTRAL  # the PixelCNN's and the VQ-VAE's own way
    if isinstance(variant, BridgeChain):
        sampler = SamplerSettings("respaced", sample_steps=min(100, variant.schedule.num_steps))

    def write(name: str, save) -> None:
        tmp = run / (name + ".tmp")
        save(tmp)
        tmp.replace(run / name)

    with pyro.validation_enabled(False):
        if not (run / "patch.json").is_file():
            pyro.set_rng_seed(0)
            settings = EvalSettings(chain_steps=chain_steps, patch_items=PATCH_ITEMS)
            patch = masked_patch_scores(
                variant, x[:PATCH_ITEMS], settings, sampler, run / "inpainting.png"
            )
            if isinstance(variant, BridgeChain):  # where the bound goes, on 200 test images
                with torch.no_grad():
                    patch.update(chain_bits_by_step(variant, x[:200]))
            write("patch.json", lambda f: f.write_text(json.dumps(patch, indent=2)))
        if not (run / "paired_bits.pt").is_file():
            pyro.set_rng_seed(0)
            scores = torch.stack([bits_per_image(variant, x, chain_steps) for _ in range(2)])
            write("paired_bits.pt", lambda f: torch.save(scores, f))
        if not (run / "fd.json").is_file():
            pyro.set_rng_seed(0)
            net = load_classifier()
            with torch.no_grad():
                fds = [
                    fd_fmnist(sample_prior(variant, FD_SAMPLES, sampler).x_mean, test_x, net)
                    for _ in range(FD_DRAWS)
                ]
            fd = {
                "fd_fmnist": sum(fds) / len(fds),
                "fd_fmnist_stderr": float(torch.tensor(fds).std()) / math.sqrt(len(fds)),
                "fd_fmnist_per_draw": fds,
                "samples": FD_SAMPLES,
                "sampler": "100 respaced steps" if sampler is not ANCESTRAL else "ancestral",
            }
            write("fd.json", lambda f: f.write_text(json.dumps(fd, indent=2)))


METRICS = ("test_bits_per_dim", "test_bits_per_dim_stderr", "codes_used", "train_seconds")
"""The figures of a run's metrics.json that its record keeps."""


def record_from_run(run: Path, row: Row) -> dict:
    """Everything the tables and the figure say of ``row``, read from its run folder: the
    record kept in :data:`RECORDS`, so that a finished row outlives its run folder."""
    import csv
    import json

    def read(name: str) -> dict | None:
        path = run / name
        return json.loads(path.read_text()) if path.is_file() else None

    metrics = read("metrics.json")
    bits = torch.load(run / "paired_bits.pt")
    with (run / "train.csv").open() as f:
        held = [x for x in csv.DictReader(f) if x.get("heldout_bits_per_dim")]
    return {
        "row": row.name,
        "steps": list(row.steps()),
        "command": shlex.join(["pbridge", *train_command(row, run.parent)]),
        "metrics": {k: metrics[k] for k in METRICS},
        "paired_bits_mean": float(bits.mean()),
        "paired_bits": [[round(float(v), 6) for v in draw] for draw in bits],
        "patch": read("patch.json"),
        "fd": read("fd.json"),
        "heldout": [[int(x["step"]), float(x["heldout_bits_per_dim"])] for x in held],
    }


def save_record(records: Path, record: dict) -> None:
    """Write ``record`` whole (a temporary file, then a rename) as ``records/ROW.json``."""
    import json

    records.mkdir(parents=True, exist_ok=True)
    tmp = records / (record["row"] + ".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(records / (record["row"] + ".json"))


def load_records(records: Path) -> dict[str, dict]:
    """Row name -> record, for every row of :data:`ROWS` with a record in ``records``."""
    import json

    found = {}
    for r in ROWS:
        path = records / f"{r.name}.json"
        if path.is_file():
            found[r.name] = json.loads(path.read_text())
    return found


def _per_image(recs: dict[str, dict], row: Row) -> bool:
    """Its record keeps the per-image scores (rows recorded before they were kept do not)."""
    return recs.get(row.name, {}).get("paired_bits") is not None


def _paired(recs: dict[str, dict], a: Row, b: Row) -> tuple[float, float] | None:
    """Mean and s.e. of ``a`` minus ``b`` over the paired images: from the per-image scores
    where both records keep them, else the difference ``a``'s record kept (rows recorded
    before per-image scores were kept), else None."""
    if a.name not in recs or b.name not in recs:
        return None
    first, second = recs[a.name], recs[b.name]
    if _per_image(recs, a) and _per_image(recs, b):
        diff = torch.tensor(first["paired_bits"]).mean(0)
        diff -= torch.tensor(second["paired_bits"]).mean(0)
        return float(diff.mean()), float(diff.std() / math.sqrt(len(diff)))
    kept = first.get("paired_differences", {}).get(b.name)
    return None if kept is None else (kept[0], kept[1])


def _comparisons(recs: dict[str, dict]) -> list[tuple[Row, Row]]:
    """The pairs to report per budget and seed: each end-to-end schedule minus two-stage with
    the same chain network, the codes at their own rate minus one rate, the dead-code restart
    minus the same schedule without it, the wider two-stage minus the narrower, the best bridge
    (lowest paired bits/dim) minus the PixelCNN, every other bridge minus the PixelCNN where
    both records keep per-image scores, and the warm start and two-stage against the cold
    start."""
    pairs = []
    for budget, seed in sorted({(r.budget, r.seed) for r in ROWS}):
        e2e, two, pcnn = (Row(p, budget, seed) for p in ("end-to-end", "two-stage", "pixelcnn"))
        bridges = [Row(p, budget, seed) for p in BRIDGES if Row(p, budget, seed) in ROWS]
        for b in bridges:
            wide = {w: p for p, w in UNET_WIDTH.items() if p.startswith("two-stage")}
            same_net = Row(wide.get(b.unet_width, "two-stage"), budget, seed)
            if b.variant == "end-to-end":
                pairs.append((b, same_net))
                if b.prior in RESTART_DEAD_CODES:
                    pairs.append((b, Row("end-to-end-slowcodes", budget, seed)))
                elif b.prior in CODES_LR_SCALE:
                    pairs.append((b, e2e))
            elif b != two:
                pairs.append((b, two))
        scored_bridges = [b for b in bridges if b.name in recs]
        best = min(scored_bridges, key=lambda b: recs[b.name]["paired_bits_mean"], default=e2e)
        pairs.append((best, pcnn))
        pairs += [
            (b, pcnn)
            for b in scored_bridges
            if b != best and _per_image(recs, b) and _per_image(recs, pcnn)
        ]
        if Row("end-to-end-cold", budget, seed) in ROWS:
            cold = Row("end-to-end-cold", budget, seed)
            pairs += [(e2e, cold), (cold, two)]
    return pairs


def _patch_table(recs: dict[str, dict], done: list[Row]) -> list[str]:
    """Masked-patch bits per cell of every finished row, each figure named by what it
    conditions on."""

    lines = [
        f"Masked patch (the central 5 x 5 of the 14 x 14 code grid, the first {PATCH_ITEMS} test "
        "images; bits per hidden cell; a uniform prior over the 128 codes: 7.00):",
        "",
        "| run | Monte Carlo, 4 completions (given the visible cells; floor 0.01) "
        "| exact (given the cells before it in raster order) "
        "| conditional bound (given the visible cells) |",
        "|---|---:|---:|---:|",
    ]
    for r in done:
        m = recs[r.name]["patch"]

        def cell(key: str, m: dict = m) -> str:
            value = m.get(key)
            return "n/a" if value is None else f"{value:.2f} ± {m[key + '_stderr']:.2f}"

        lines.append(
            f"| {r.name} | {cell('masked_patch_bits_per_cell')} "
            f"| {cell('masked_patch_bits_per_cell_exact')} "
            f"| {cell('masked_patch_conditional_bound_bits_per_cell')} |"
        )
    lines.append("")
    bridges = [r for r in done if "chain_bits_per_cell_by_step" in recs[r.name]["patch"]]
    if bridges:
        bands = list(recs[bridges[0].name]["patch"]["chain_bits_per_cell_by_step"])
        lines += [
            "Where the bridge's bound goes, bits per latent cell by band of steps t (t = 1: the "
            "read-out; 200 test images, 8 steps per band), and L_T:",
            "",
            "| run | " + " | ".join(f"t = {b}" for b in bands) + " | L_T |",
            "|---|" + "---:|" * (len(bands) + 1),
        ]
        for r in bridges:
            m = recs[r.name]["patch"]
            cells = " | ".join(f"{v:.3f}" for v in m["chain_bits_per_cell_by_step"].values())
            lines.append(f"| {r.name} | {cells} | {m['prior_kl_bits_per_cell']:.4f} |")
        lines.append("")
    return lines


def _fd(record: dict) -> str:
    fd = record["fd"]
    return "queued" if fd is None else f"{fd['fd_fmnist']:.2f} ± {fd['fd_fmnist_stderr']:.2f}"


def tables(recs: dict[str, dict], out: Path, items: int) -> str:
    """The section of docs/results.md for the rows recorded so far."""
    done = [r for r in ROWS if r.name in recs]
    kept = [r.name for r in done if recs[r.name]["paired_bits"] is None]
    lines = [
        "## The two claims, row by row (benchmarks/claims.py)",
        "",
        f"Produced by `OMP_NUM_THREADS={THREADS} python benchmarks/claims.py --out {out}` "
        f"(rows finished: {len(done)} of {len(ROWS)}; a row's command is in its record). "
        "Budget: seconds of one core at the measured step costs (VQ-VAE 0.167 s, PixelCNN "
        "1.10 s, bridge on frozen codes 0.575 s, bridge end to end 0.605 s per step; with a "
        "chain U-Net of width 48, the unet48 rows, 1.43 and 1.48 times these). End to end "
        "trains everything at one learning rate in its joint stage, except the slowcodes rows: "
        "the encoder and codebook at a tenth of it (`bridge.codes_lr_scale=0.1`, today's "
        "default for images), and the slowercodes rows: at 0.03 of it; the restart row is the "
        "slowcodes schedule with dead-code restart in its VQ-VAE stage "
        "(`--restart-dead-codes 1`, docs/training.md). "
        f"Paired: the first {items} test images, each scored twice with independent draws "
        "(bits/dim: their mean); test bits/dim: the run's own score on the first 2,000 test "
        "images, EMA weights. Train time: wall seconds of the training command on a machine "
        "shared with the other stream (a row resumed after an interruption: its last part "
        "only); the budget is fixed by the step counts, not by these times. A finished row's "
        f"figures are kept in {RECORDS}/ROW.json, and the tables are written from these records."
        + (
            f" The rows {', '.join(kept)} were recorded from this page after their run folders "
            "were lost: their per-image scores and held-out curves are not kept; their paired "
            "differences are those computed when both runs were at hand (pairs with a row run "
            "again since are against its earlier run), and their curves are in "
            f"[{Path(LEGACY_CURVE).name}]({Path(LEGACY_CURVE).relative_to('docs')})."
            if kept
            else ""
        ),
        "",
        "| run | steps (VQ-VAE + last stage) | paired bits/dim | test bits/dim | codes used "
        f"| FD-FMNIST ({FD_DRAWS} x {FD_SAMPLES} samples) | train time (s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in done:
        m = recs[r.name]["metrics"]
        vqvae, steps = r.steps()
        lines.append(
            f"| {r.name} | {vqvae} + {steps} | {recs[r.name]['paired_bits_mean']:.3f} "
            f"| {m['test_bits_per_dim']:.3f} ± {m['test_bits_per_dim_stderr'] or math.nan:.3f} "
            f"| {m['codes_used']} | {_fd(recs[r.name])} | {m['train_seconds']:.0f} |"
        )
    lines.append("")
    lines += _patch_table(recs, done)
    by_budget: dict[tuple[str, str, int], list[float]] = {}
    for a, b in _comparisons(recs):
        paired = _paired(recs, a, b)
        if paired is None:
            continue
        lines.append(
            f"Paired difference, {a.name} minus {b.name}, same images: "
            f"{paired[0]:+.3f} ± {paired[1]:.3f} bits/dim."
        )
        lines.append("")
        kind = (a.prior, "pixelcnn" if b.prior == "pixelcnn" else b.prior, a.budget)
        by_budget.setdefault(kind, []).append(paired[0])
    for (first, second, budget), diffs in by_budget.items():
        if len(diffs) > 1:
            mean = sum(diffs) / len(diffs)
            sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
            lines.append(
                f"Over {len(diffs)} seeds at {budget} s, {first} minus {second}: "
                f"{', '.join(f'{d:+.3f}' for d in diffs)}; mean {mean:+.3f}, s.d. {sd:.3f} "
                "bits/dim."
            )
            lines.append("")
    if any(recs[r.name]["heldout"] for r in done):
        lines += [f"![held-out bound against training]({Path(CURVE).relative_to('docs')})", ""]
    return "\n".join(lines)


COLOURS = {
    "end-to-end": "tab:blue",
    "end-to-end-warm1000": "tab:purple",
    "end-to-end-cold": "tab:gray",
    "two-stage": "tab:orange",
    "pixelcnn": "tab:green",
    "end-to-end-unet48": "tab:cyan",
    "two-stage-unet48": "tab:red",
    "end-to-end-slowcodes": "tab:brown",
    "end-to-end-slowercodes": "tab:olive",
    "end-to-end-restart": "tab:pink",
}
"""The curve figure's colour of each prior; the line style says the seed."""

SEED_STYLES = {0: "-", 1: "--", 2: ":"}


def curve(recs: dict[str, dict], path: Path) -> None:
    """Held-out bits/dim against the budget spent (steps times the measured step costs: the
    seconds of one quiet core) and against SVI steps, both stages counted, one line per run
    whose record keeps its curve: its colour the prior, its style the seed."""
    from matplotlib.figure import Figure

    if not any(record.get("heldout") for record in recs.values()):
        return
    fig = Figure(figsize=(11, 4.6))
    by_time, by_step = fig.subplots(1, 2, sharey=True)
    for r in ROWS:
        held = recs.get(r.name, {}).get("heldout")
        if not held:
            continue
        vqvae = r.steps()[0]
        steps = [vqvae + step for step, _ in held]
        secs = [vqvae * STEP_SECONDS["vqvae"] + step * r.step_seconds() for step, _ in held]
        bits = [b for _, b in held]
        style = dict(color=COLOURS[r.prior], ls=SEED_STYLES.get(r.seed, "-."), marker="o", ms=3)
        by_time.plot(secs, bits, label=r.name, **style)
        by_step.plot(steps, bits, label=r.name, **style)
    by_time.set_xlabel("budget spent (s of one core at the measured step costs, both stages)")
    by_step.set_xlabel("SVI steps (both stages)")
    by_time.set_ylabel(f"held-out bits/dim (first {HELDOUT_ITEMS} test images, EMA)")
    for ax in (by_time, by_step):
        ax.grid(alpha=0.3)
    by_step.legend(fontsize=7, ncol=2)
    fig.suptitle(
        "Fashion-MNIST: the held-out bound along training (its last stage); "
        "colour: prior, line: seed (solid 0, dashed 1, dotted 2)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def write_docs(out: Path, results: Path, items: int, commit: bool) -> None:
    """Record every row scored in ``out`` (its run folder is the authority: a record of an
    earlier run of the row is replaced), then write the tables and the figure from the
    records."""
    for r in ROWS:
        if scored(out / r.name):
            save_record(Path(RECORDS), record_from_run(out / r.name, r))
    recs = load_records(Path(RECORDS))
    write_section(results, SECTION, tables(recs, out, items))
    curve(recs, Path(CURVE))
    if commit:
        subprocess.run(["git", "add", str(results), CURVE, RECORDS], check=False)
        subprocess.run(
            [
                "git",
                "commit",
                "-q",
                "-m",
                "docs/results.md: claims rows (benchmarks/claims.py)",
                "--",
                str(results),
                CURVE,
                RECORDS,
            ],
            check=False,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/claims", help="folder of the runs")
    parser.add_argument("--results", default="docs/results.md", help="Markdown file to update")
    parser.add_argument("--items", type=int, default=500, help="test images paired")
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--no-commit", action="store_true")
    parser.add_argument(
        "--rows", nargs="+", metavar="NAME", help="run only these rows (default: every row)"
    )
    parser.add_argument("--score", metavar="RUN", help="(internal) score one run's images")
    parser.add_argument(
        "--write-docs", action="store_true", help="only rewrite the tables of the finished rows"
    )
    args = parser.parse_args()
    if args.score:
        score_run(Path(args.score), args.items)
        return
    if args.write_docs:
        write_docs(Path(args.out), Path(args.results), args.items, not args.no_commit)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    order = RUN_ORDER + [r for r in ROWS if r not in RUN_ORDER]
    if args.rows:
        unknown = sorted(set(args.rows) - {r.name for r in ROWS})
        if unknown:
            parser.error(f"unknown rows {', '.join(unknown)}; the rows: {ROWS_NAMED}")
        order = [r for r in order if r.name in args.rows]
    todo = [r for r in order if not finished(out / r.name)]
    lock, failures = threading.Lock(), []

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                row = todo.pop(0)
            print(f"{row.name}: started", flush=True)
            try:
                run_row(row, args)
            except RuntimeError as err:
                failures.append(str(err))
                print(err, flush=True)
                continue
            with lock:
                write_docs(out, Path(args.results), args.items, not args.no_commit)
            print(f"{row.name}: done", flush=True)

    threads = [threading.Thread(target=worker) for _ in range(args.streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit("\n".join(failures))


if __name__ == "__main__":
    main()
