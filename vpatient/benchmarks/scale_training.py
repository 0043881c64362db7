"""Streamed training at scale: seconds per epoch, throughput and peak memory at 10^3, 10^4 and 10^5 synthetic patients.

Each size is exported with the streamed export (``vpatient datasets export synthetic
--n N --stream``: shards of 2,000 subjects) and trained in a child process, one model
(``vpatient train --data DIR --members 1 --epochs E --stream``), whose own peak RSS
(``os.wait4``) and training history (``training.json``: seconds in the epochs, patients
trained on) are read back. Setup (parsing the shards into the cache, fitting the scalers
and, after training, the population model and the checkpoint) is reported apart from the
epochs. The issue's targets: peak RSS at the largest size at most 1.5x that at the size
before it, and throughput there within 20% of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from vpatient.benchmarks.base import StrictModel

__all__ = ["TrainingScale", "TrainingScaleRow", "measure_training"]

#: subjects per shard of the exported cohorts (the export's own, vpatient.cli.STREAM_SHARD)
SHARD_SUBJECTS = 2000
#: the issue's targets
RSS_RATIO_TARGET, THROUGHPUT_TOLERANCE = 1.5, 0.2


class TrainingScaleRow(StrictModel):
    """One cohort size, trained streamed in a child process."""

    patients: int = Field(description="Synthetic patients exported (training and validation together).")
    train_patients: int = Field(description="Patients trained on per epoch (the rest are held out for validation).")
    epochs: int = Field(description="Epochs run.")
    seconds_per_epoch: float = Field(description="Wall seconds per epoch (training steps and the validation pass).")
    throughput: float = Field(description="Training patients per second per epoch: train_patients / seconds_per_epoch.")
    setup_seconds: float = Field(
        description="The child's wall seconds outside the epochs: start-up, parsing the shards into the cache, "
        "scalers, the population model and writing the checkpoint."
    )
    export_seconds: float = Field(description="Seconds the streamed export of the cohort took.")
    peak_rss_gb: float = Field(description="Peak resident memory of the training child process, GB (2^30 bytes).")


class TrainingScale(StrictModel):
    """Streamed training throughput and memory across cohort sizes, and the issue's two ratios."""

    seed: int = Field(description="Seed of the cohorts and of training.")
    rows: list[TrainingScaleRow] = Field(description="One row per cohort size, smallest first.")
    rss_ratio: float | None = Field(
        description="Peak RSS at the largest size over that at the size before it (target at most 1.5); None with one size."
    )
    throughput_ratio: float | None = Field(
        description="Throughput at the largest size over that at the size before it (target within 0.8-1.2); None with one size."
    )
    rss_target_met: bool | None = Field(description="rss_ratio <= 1.5.")
    throughput_target_met: bool | None = Field(description="|throughput_ratio - 1| <= 0.2.")

    def to_markdown(self) -> str:
        lines = [
            "| patients | trained | epochs | s/epoch | patients/s | setup s | export s | peak RSS GB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.patients:,} | {r.train_patients:,} | {r.epochs} | {r.seconds_per_epoch:.1f} | {r.throughput:.0f} "
                f"| {r.setup_seconds:.1f} | {r.export_seconds:.1f} | {r.peak_rss_gb:.2f} |"
            )
        if self.rss_ratio is not None and self.throughput_ratio is not None:
            lines.append(
                f"\nPeak RSS ratio {self.rss_ratio:.2f} (target <= {RSS_RATIO_TARGET}); "
                f"throughput ratio {self.throughput_ratio:.2f} (target within {THROUGHPUT_TOLERANCE:.0%})."
            )
        return "\n".join(lines) + "\n"


def measure_training(
    sizes: Sequence[int] = (1_000, 10_000, 100_000),
    *,
    seed: int = 0,
    epochs: int = 1,
    workdir: str | Path | None = None,
    progress: bool = False,
    threads: int = 1,
) -> TrainingScale:
    """Export and train each of ``sizes`` (module docstring); ``workdir`` keeps the cohorts and models (default: a temporary folder)."""
    from vpatient.data.meds.stream_write import write_meds_stream
    from vpatient.data.synthetic import synthetic_config, synthetic_stream

    rows = []
    with tempfile.TemporaryDirectory(prefix="vpatient-scale-training-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        for n in sorted(sizes):
            data, model = root / f"synthetic-{n}", root / f"model-{n}"
            started = time.perf_counter()
            if not data.exists():
                records = synthetic_stream(n, seed, chunk_size=1000)
                write_meds_stream(records, synthetic_config(), data, subjects_per_shard=SHARD_SUBJECTS)
            export_seconds = time.perf_counter() - started
            command = [
                sys.executable, "-m", "vpatient", "train", "--data", str(data), "--out", str(model), "--stream",
                "--members", "1", "--epochs", str(epochs), "--seed", str(seed), "--threads", str(threads),
                "--progress" if progress else "--no-progress",
            ]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            started = time.perf_counter()
            child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            output = child.stdout.read() if child.stdout is not None else b""
            _, status, usage = os.wait4(child.pid, 0)
            child.returncode = os.waitstatus_to_exitcode(status)
            wall = time.perf_counter() - started
            if child.returncode != 0:
                tail = output.decode(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(f"training {n} patients failed (exit {child.returncode}): " + " | ".join(tail))
            history = json.loads((model / "training.json").read_text())
            done = len(history["train_loss"])
            per_epoch = history["seconds"] / done
            rows.append(
                TrainingScaleRow(
                    patients=n,
                    train_patients=history["n_train"],
                    epochs=done,
                    seconds_per_epoch=per_epoch,
                    throughput=history["n_train"] / per_epoch,
                    setup_seconds=wall - history["seconds"],
                    export_seconds=export_seconds,
                    peak_rss_gb=usage.ru_maxrss
                    / 1024**2,  # ru_maxrss is in KiB on Linux; GB = 2^30 bytes, as the other benchmarks
                )
            )
    rss = throughput = None
    if len(rows) > 1:
        rss = rows[-1].peak_rss_gb / rows[-2].peak_rss_gb
        throughput = rows[-1].throughput / rows[-2].throughput
    return TrainingScale(
        seed=seed,
        rows=rows,
        rss_ratio=rss,
        throughput_ratio=throughput,
        rss_target_met=None if rss is None else rss <= RSS_RATIO_TARGET,
        throughput_target_met=None if throughput is None else abs(throughput - 1) <= THROUGHPUT_TOLERANCE,
    )
