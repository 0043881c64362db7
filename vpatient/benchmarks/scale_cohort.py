"""The scale benchmark's cohort piece: a million virtual patients written as MEDS, end to end, as a user runs it.

``vpatient simulate cohort`` runs in a child process (its default engine: worker processes
for a cohort this large); what is measured is its wall time from start to exit, the
peak of the memory of the child and its workers together (sampled from ``/proc`` every
0.2 s: the sum of their resident sets, which counts pages they share once per process,
and the sum of their proportional sets, which counts them once), the MEDS rows written
the CPU time of the command and its workers, and the busy and CPU seconds of each stage,
which the cohort records in ``simulation.json``. On a machine shared with other work the
wall time says more about the neighbours than about vpatient; the CPU time does not.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
from pydantic import Field

from vpatient.benchmarks.base import StrictModel
from vpatient.errors import VPatientError

__all__ = ["CohortScale", "CohortStages", "measure_cohort"]

#: The issue's targets for the million-patient cohort on the 2-core reference machine.
TARGET_SECONDS, TARGET_PEAK_GB = 60.0, 2.0


class CohortStages(StrictModel):
    """Seconds of each stage of the cohort's chunks, summed over chunks and workers (so over cores, not wall time)."""

    drawing: float = Field(description="Drawing the virtual patients (and loading the model on a worker's first chunk).")
    rollout: float = Field(description="Rolling them out (sampling.realise: the ODE solve, its dense output, the events).")
    measurement: float = Field(description="Measuring them into MEDS rows (sampling.observe_columns).")
    writing: float = Field(description="Writing the MEDS shard and the events table of each chunk.")


class CohortScale(StrictModel):
    """A virtual cohort written end to end by ``vpatient simulate cohort`` in a child process."""

    patients: int = Field(description="Virtual patients simulated.")
    seed: int
    years: float = Field(description="Follow-up simulated, in the model's time unit (its default horizon unless given).")
    chunk_size: int = Field(description="Patients per chunk (one MEDS shard each).")
    engine: str = Field(description="The engine asked for (auto: worker processes for cohorts this large).")
    workers: int = Field(description="Worker processes asked for (at most one per core is started).")
    torch_threads_per_worker: int = Field(description="Torch threads of each worker process.")
    cpu_count: int = Field(description="Cores of the machine.")
    seconds: float = Field(description="Wall time of the command, from start (interpreter start-up included) to exit.")
    patients_per_second: float
    peak_rss_gb: float = Field(
        description="Peak of the summed resident memory of the command and its workers (GB = 2^30 bytes); pages the "
        "forked workers share with it count once per process, so this overstates what they hold together."
    )
    peak_pss_gb: float = Field(description="Peak of their summed proportional set size: shared pages counted once.")
    meds_rows: int = Field(description="Rows in the MEDS shards written.")
    cpu_seconds: float = Field(
        description="CPU time (user + system) of the command and its workers: on a machine shared with other work, "
        "cpu_seconds / min(workers, cores) is about the wall time the command would take on that many idle cores."
    )
    stages: CohortStages = Field(description="Where the time went: busy (wall) seconds of each stage, summed over workers.")
    stage_cpu: CohortStages = Field(description="Where the CPU went: CPU seconds of each stage, summed over workers.")


def measure_cohort(
    model_dir: str | Path,
    *,
    patients: int = 1_000_000,
    seed: int,
    progress: bool,
    chunk_size: int | None = None,
    engine: str = "auto",
    workers: int = 2,
    years: float | None = None,
) -> CohortScale:
    """Write a ``patients``-patient cohort of the model in ``model_dir`` with the CLI and measure it (module docstring).

    ``chunk_size`` and ``years`` default to the command's own defaults (5,000 patients; the model's horizon).
    """
    model_dir = Path(model_dir)
    if not (model_dir / "population.json").is_file():
        raise VPatientError(
            f"{model_dir} has no population.json; train it with `vpatient train` or run `vpatient simulate cohort` once"
        )
    with tempfile.TemporaryDirectory(prefix="vpatient-scale-cohort-") as tmp:
        out = Path(tmp) / "cohort"
        command = [
            sys.executable, "-m", "vpatient", "simulate", "cohort", "--model", str(model_dir), "--n", str(patients),
            "--out", str(out), "--seed", str(seed), "--engine", engine, "--workers", str(workers),
            "--progress" if progress else "--no-progress",
            *(["--chunk-size", str(chunk_size)] if chunk_size is not None else []),
            *(["--years", str(years)] if years is not None else []),
        ]  # fmt: skip
        before = _children_cpu()
        t0 = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=None if progress else subprocess.PIPE, text=True)
        sampler = _PeakMemory(child.pid)
        sampler.start()
        try:
            stdout, stderr = child.communicate()
        finally:
            if child.poll() is None:  # interrupted: stop the cohort (its workers exit with it)
                child.kill()
                child.wait()
            sampler.stop()
        seconds = time.perf_counter() - t0
        cpu = _children_cpu() - before  # the child waited for its workers, so their time is in its children's
        if child.returncode != 0:
            raise VPatientError(f"the cohort failed (exit {child.returncode}): {(stderr or stdout or '')[-2000:]}")
        manifest = json.loads((out / "simulation.json").read_text())
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in (out / "meds" / "data").glob("*.parquet"))
    if rows != manifest["n_rows"]:
        raise VPatientError(f"the shards hold {rows:,} rows, the cohort reported {manifest['n_rows']:,}")
    return CohortScale(
        patients=patients,
        seed=seed,
        years=float(manifest["years"]),
        chunk_size=int(manifest["chunk_size"]),
        engine=engine,
        workers=workers,
        torch_threads_per_worker=1,
        cpu_count=os.cpu_count() or 1,
        seconds=seconds,
        patients_per_second=patients / seconds,
        peak_rss_gb=sampler.peak_rss / 1024**3,
        peak_pss_gb=sampler.peak_pss / 1024**3,
        meds_rows=rows,
        cpu_seconds=cpu,
        stages=CohortStages(**manifest["stage_seconds"]),
        stage_cpu=CohortStages(**manifest["stage_cpu_seconds"]),
    )


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished (waited-for) children and their own children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class _PeakMemory(threading.Thread):
    """Samples the summed RSS and PSS of a process and its descendants until stopped (Linux /proc)."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_pss = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def sample(self) -> None:
        rss = pss = 0
        for pid in _tree(self.pid):
            rss += _proc_kb(f"/proc/{pid}/status", "VmRSS:")
            pss += _proc_kb(f"/proc/{pid}/smaps_rollup", "Pss:")
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss * 1024), max(self.peak_pss, pss * 1024)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants alive now."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as file:
                    todo.extend(int(child) for child in file.read().split())
        except OSError:  # gone meanwhile
            continue
    return found


def _proc_kb(path: str, key: str) -> int:
    """The kB figure on the line starting with ``key`` of a /proc file (0 when the process is gone)."""
    try:
        with open(path) as file:
            for line in file:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0
