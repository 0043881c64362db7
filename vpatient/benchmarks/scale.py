"""``vpatient benchmark scale``: training and simulation at the sizes hospitals and trials need, in one run.

Four measurements, each by its own module, run one after another in this process and
its children (so that no two compete for the cores):

1. training throughput and peak memory at growing synthetic cohorts, streamed from MEDS
   shards (:mod:`vpatient.benchmarks.scale_training`);
2. one process against two data-parallel processes at the same global batch: their loss
   curves and throughput (:mod:`vpatient.benchmarks.scale_distributed`);
3. the simulation rollout against the fastest torchdiffeq configuration of the same
   accuracy, and its FLOP rate as a share of the machine's matmul rate
   (:mod:`vpatient.benchmarks.scale_rollout`);
4. a million-patient virtual cohort end to end, as ``vpatient simulate cohort`` runs it
   (:mod:`vpatient.benchmarks.scale_cohort`).

The rollout's ratio is the top-level ``speedup``, the cohort's wall time ``cohort_seconds``.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field

from vpatient.benchmarks.base import VersionedBenchmarkResult, targets_table
from vpatient.benchmarks.scale_cohort import CohortScale
from vpatient.benchmarks.scale_distributed import DistributedScale
from vpatient.benchmarks.scale_rollout import RolloutScale
from vpatient.benchmarks.scale_training import TrainingScale

__all__ = ["ScalePart", "ScaleResult", "run_scale_benchmark"]

#: The issue's targets (issue 15).
TARGET_RSS_RATIO, TARGET_THROUGHPUT_BAND = 1.5, 0.2
TARGET_SPEEDUP, TARGET_FLOP_SHARE = 5.0, 0.30
TARGET_COHORT_SECONDS, TARGET_COHORT_GB = 60.0, 2.0
TARGET_CURVE_DIFFERENCE = 1e-3  # "within noise": far below the epoch-to-epoch change of the loss


class ScalePart(StrEnum):
    """The benchmark's four measurements (module docstring)."""

    TRAINING = "training"
    DISTRIBUTED = "distributed"
    ROLLOUT = "rollout"
    COHORT = "cohort"


class ScaleResult(VersionedBenchmarkResult):
    """Training and simulation at scale, with the issue's targets; a part left out of the run is null."""

    benchmark: Literal["scale"] = "scale"
    seed: int
    model: str = Field(description="The checkpoint the rollout and the cohort ran (training runs train their own).")
    cpu_count: int
    machine: str
    speedup: float | None = Field(description="The rollout against the fastest torchdiffeq configuration of the same accuracy.")
    cohort_seconds: float | None = Field(description="Wall seconds of the million-patient cohort, end to end.")
    training: TrainingScale | None
    distributed: DistributedScale | None
    rollout: RolloutScale | None
    cohort: CohortScale | None

    def targets(self) -> list[tuple[str, float | None, str, bool]]:
        """(name, value, goal, met) of every target a part of this run measured."""
        rows: list[tuple[str, float | None, str, bool]] = []
        if self.training is not None and self.training.rss_ratio is not None:
            t = self.training
            rows.append(
                ("training peak RSS, 10^5 / 10^4 patients", t.rss_ratio, f"<= {TARGET_RSS_RATIO:g}", bool(t.rss_target_met))
            )
            rows.append(
                (
                    "training throughput, 10^5 / 10^4 patients",
                    t.throughput_ratio,
                    f"within {TARGET_THROUGHPUT_BAND:.0%} of 1",
                    bool(t.throughput_target_met),
                )
            )
        if self.distributed is not None:
            d = self.distributed.max_relative_difference
            rows.append(
                ("2 processes vs 1: largest loss difference", d, f"<= {TARGET_CURVE_DIFFERENCE:g}", d <= TARGET_CURVE_DIFFERENCE)
            )
        if self.rollout is not None:
            r = self.rollout
            rows.append((f"rollout vs {r.peer}", r.speedup, f">= {TARGET_SPEEDUP:g}x", r.speedup >= TARGET_SPEEDUP))
            rows.append(
                (
                    "rollout FLOP rate / matmul rate",
                    r.flop_share,
                    f">= {TARGET_FLOP_SHARE:.0%}",
                    r.flop_share >= TARGET_FLOP_SHARE,
                )
            )
        if self.cohort is not None:
            c = self.cohort
            rows.append(
                (
                    f"{c.patients:,}-patient cohort, seconds",
                    c.seconds,
                    f"<= {TARGET_COHORT_SECONDS:g}",
                    c.seconds <= TARGET_COHORT_SECONDS,
                )
            )
            rows.append(("its peak RSS, GB", c.peak_rss_gb, f"< {TARGET_COHORT_GB:g}", c.peak_rss_gb < TARGET_COHORT_GB))
        return rows

    def to_markdown(self) -> str:
        lines = [
            "# Scale: training and simulation at size",
            "",
            f"vpatient {self.vpatient_version}, seed {self.seed}, on {self.machine} ({self.cpu_count} cores); "
            f"rollout and cohort of `{self.model}`.",
            "",
            targets_table(self.targets()),
            "",
        ]
        if self.training is not None:
            lines += ["## Training, streamed from MEDS shards (one process)", ""]
            lines += [
                f"- {r.patients:,} patients ({r.train_patients:,} trained on): {r.throughput:,.0f} patients/s per epoch "
                f"({r.seconds_per_epoch:.1f} s per epoch, {r.setup_seconds:.1f} s set-up), peak RSS {r.peak_rss_gb:.2f} GB"
                for r in self.training.rows
            ]
            lines.append("")
        if self.distributed is not None:
            d = self.distributed
            lines += [
                f"## Data-parallel training: 1 process against 2 (gloo), global batch {d.batch_size}, {d.epochs} epochs on {d.data}",
                "",
                f"- largest relative difference between the loss curves: {d.max_relative_difference:.2g}",
                f"- patients per second: {d.single.patients_per_second:,.0f} (1 process, {d.single.threads_per_process} threads) "
                f"against {d.data_parallel.patients_per_second:,.0f} (2 processes, {d.data_parallel.threads_per_process} each): "
                f"{d.throughput_ratio:.2f}x",
                "",
            ]
        if self.rollout is not None:
            r = self.rollout
            lines += [
                f"## Rollout: {r.patients:,} patients, {r.years:g} time units, {r.threads} thread(s) for every solver",
                "",
                f"- vpatient: {r.vpatient_seconds:.2f} s, largest deviation {r.vpatient_max_deviation:.2g}; "
                f"the peer {r.peer}: {r.peer_seconds:.2f} s; speed-up {r.speedup:.1f}x",
                f"- FLOP rate {r.kernel_gflops:.1f} GFLOP/s against matmul's {r.matmul_gflops:.1f}: {r.flop_share:.0%}",
                "",
                "| solver | setting | seconds | largest deviation | within 1e-3 |",
                "|---|---|---:|---:|---|",
                *(
                    f"| {p.method} | {p.setting} | {p.seconds:.2f} | {p.max_deviation:.2g} | {'yes' if p.accurate else 'no'} |"
                    for p in r.peers
                ),
                "",
            ]
        if self.cohort is not None:
            c = self.cohort
            s = c.stages
            lines += [
                f"## A {c.patients:,}-patient virtual cohort, end to end",
                "",
                f"- {c.seconds:.0f} s ({c.patients / c.seconds:,.0f} patients/s), {c.meds_rows:,} MEDS rows, peak RSS "
                f"{c.peak_rss_gb:.2f} GB; {c.workers} worker(s) of {c.torch_threads_per_worker} thread(s), chunks of {c.chunk_size:,}",
                f"- busy seconds (summed over workers): drawing {s.drawing:.0f}, rollout {s.rollout:.0f}, "
                f"measurement {s.measurement:.0f}, writing {s.writing:.0f}",
                "",
            ]
        return "\n".join(lines)


def run_scale_benchmark(
    model_dir: Path,
    *,
    parts: Sequence[ScalePart] = tuple(ScalePart),
    seed: int = 0,
    sizes: Sequence[int] = (1_000, 10_000, 100_000),
    training_epochs: int = 1,
    distributed_data: str = "synthetic",
    distributed_epochs: int = 5,
    rollout_patients: int = 20_000,
    cohort_patients: int = 1_000_000,
    workdir: Path | None = None,
    progress: bool = True,
) -> ScaleResult:
    """Run the chosen parts one after another (module docstring)."""
    from vpatient.benchmarks.scale_cohort import measure_cohort
    from vpatient.benchmarks.scale_distributed import measure_distributed
    from vpatient.benchmarks.scale_rollout import measure_rollout
    from vpatient.benchmarks.scale_training import measure_training

    chosen = set(parts)
    training = (
        measure_training(sizes, seed=seed, epochs=training_epochs, workdir=workdir, progress=progress)
        if ScalePart.TRAINING in chosen
        else None
    )
    distributed = (
        measure_distributed(distributed_data, seed=seed, epochs=distributed_epochs, progress=progress)
        if ScalePart.DISTRIBUTED in chosen
        else None
    )
    rollout = (
        measure_rollout(model_dir, patients=rollout_patients, seed=seed, threads=os.cpu_count() or 1, progress=progress)
        if ScalePart.ROLLOUT in chosen
        else None
    )
    cohort = (
        measure_cohort(model_dir, patients=cohort_patients, seed=seed, progress=progress) if ScalePart.COHORT in chosen else None
    )
    return ScaleResult(
        seed=seed,
        model=str(model_dir),
        cpu_count=os.cpu_count() or 0,
        machine=f"{platform.machine()} {platform.system()}",
        speedup=rollout.speedup if rollout is not None else None,
        cohort_seconds=cohort.seconds if cohort is not None else None,
        training=training,
        distributed=distributed,
        rollout=rollout,
        cohort=cohort,
    )
