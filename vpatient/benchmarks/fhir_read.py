"""``vpatient benchmark fhir-read``: reading a large FHIR Bulk Data export, its time and peak memory.

For each size, synthetic subjects (:func:`~vpatient.data.synthetic.synthetic_stream`, chunk by
chunk) are written as FHIR Bulk Data NDJSON (one file per resource type) by one child process,
and read back by :func:`~vpatient.data.fhir.iter_fhir` in another, which counts what it reads.
Each child reports its own peak resident memory (``getrusage``), so the figures are the
reader's and the writer's alone. Streaming works when the reader's peak does not grow with the
cohort: the result compares the largest size's peak with the smallest's.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from vpatient.benchmarks.base import StrictModel, VersionedBenchmarkResult, targets_table
from vpatient.tables import markdown_table

__all__ = ["FhirReadResult", "run_fhir_read_benchmark"]

#: Reading streams when the peak memory at the largest size is at most this multiple of the smallest's
#: (the bound issue 15 sets for streamed training, applied here to reading).
MEMORY_GROWTH_BOUND = 1.5


class FhirReadRow(StrictModel):
    patients: int
    resources: int = Field(description="FHIR resources written (lines of NDJSON).")
    ndjson_gb: float = Field(description="Size of the NDJSON files.")
    write_seconds: float
    write_peak_rss_gb: float
    read_seconds: float
    read_patients_per_second: float
    read_peak_rss_gb: float
    observations_read: int = Field(description="Observations in the records read back (equal to those written).")
    observations_written: int


class FhirReadResult(VersionedBenchmarkResult):
    """Time and peak memory of writing and reading synthetic cohorts as FHIR Bulk Data NDJSON."""

    benchmark: Literal["fhir-read"] = "fhir-read"
    seed: int
    chunk_size: int
    rows: list[FhirReadRow]
    memory_growth: float = Field(description="Reader's peak RSS at the largest size over that at the smallest.")

    def to_markdown(self) -> str:
        import pandas as pd

        table = pd.DataFrame([r.model_dump() for r in self.rows]).set_index("patients")
        table.columns = [
            "resources",
            "NDJSON GB",
            "write s",
            "write peak GB",
            "read s",
            "read patients/s",
            "read peak GB",
            "observations read",
            "observations written",
        ]
        sizes = [r.patients for r in self.rows]
        lines = [
            "# Reading FHIR Bulk Data NDJSON",
            "",
            f"vpatient {self.vpatient_version}, seed {self.seed}; synthetic subjects generated in chunks of {self.chunk_size:,}, "
            "written as one NDJSON file per resource type, read back by `iter_fhir` in a fresh process per step "
            "(peak RSS is each process's own).",
            "",
            markdown_table(table),
            "",
            targets_table(
                [
                    (
                        f"reader's peak RSS at {max(sizes):,} over {min(sizes):,} patients",
                        self.memory_growth,
                        f"≤ {MEMORY_GROWTH_BOUND:g}",
                        self.memory_growth <= MEMORY_GROWTH_BOUND,
                    ),
                    (
                        "every observation written is read back",
                        float(all(r.observations_read == r.observations_written for r in self.rows)),
                        "1 (yes)",
                        all(r.observations_read == r.observations_written for r in self.rows),
                    ),
                ]
            ),
        ]
        return "\n".join(lines) + "\n"


def _child(args: list[str]) -> dict:
    """Run one step of this module in a fresh process; its JSON report."""
    done = subprocess.run([sys.executable, "-m", "vpatient.benchmarks.fhir_read", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fhir-read step {args[0]} failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_fhir_read_benchmark(
    sizes: tuple[int, ...] = (10_000, 100_000), seed: int = 0, chunk_size: int = 5_000, work_dir: Path | None = None
) -> FhirReadResult:
    """Write and read each size in fresh processes; the scratch data is removed afterwards."""
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="vpatient-fhir-read-", dir=work_dir))
    try:
        for n in sizes:
            out = scratch / f"n{n}"
            wrote = _child(["write", str(n), str(seed), str(chunk_size), str(out)])
            read = _child(["read", str(out)])
            rows.append(
                FhirReadRow(
                    patients=n,
                    resources=wrote["resources"],
                    ndjson_gb=wrote["bytes"] / 1e9,
                    write_seconds=wrote["seconds"],
                    write_peak_rss_gb=wrote["peak_gb"],
                    read_seconds=read["seconds"],
                    read_patients_per_second=read["patients"] / read["seconds"],
                    read_peak_rss_gb=read["peak_gb"],
                    observations_read=read["observations"],
                    observations_written=wrote["observations"],
                )
            )
            shutil.rmtree(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    by_size = sorted(rows, key=lambda r: r.patients)
    growth = by_size[-1].read_peak_rss_gb / by_size[0].read_peak_rss_gb
    return FhirReadResult(seed=seed, chunk_size=chunk_size, rows=rows, memory_growth=growth)


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB on Linux


def _write_step(n: int, seed: int, chunk_size: int, out: Path) -> dict:
    from vpatient.data.fhir import write_fhir
    from vpatient.data.synthetic import synthetic_config, synthetic_stream

    observations = 0

    def counted():
        nonlocal observations
        for record in synthetic_stream(n, seed, chunk_size):
            observations += len(record.observations)
            yield record

    t0 = time.perf_counter()
    write_fhir(counted(), synthetic_config(), out, layout="ndjson")
    seconds = time.perf_counter() - t0
    files = list(out.glob("*.ndjson"))
    resources = 0
    for f in files:
        with f.open("rb") as lines:
            resources += sum(1 for _ in lines)
    size = sum(f.stat().st_size for f in files)
    return {"seconds": seconds, "peak_gb": _peak_gb(), "resources": resources, "bytes": size, "observations": observations}


def _read_step(path: Path) -> dict:
    from vpatient.data.fhir import iter_fhir
    from vpatient.data.synthetic import synthetic_config

    t0 = time.perf_counter()
    patients = observations = 0
    for record in iter_fhir(path, synthetic_config()):
        patients += 1
        observations += len(record.observations)
    return {"seconds": time.perf_counter() - t0, "peak_gb": _peak_gb(), "patients": patients, "observations": observations}


if __name__ == "__main__":  # one step, in a fresh process (see _child)
    step, *rest = sys.argv[1:]
    if step == "write":
        report = _write_step(int(rest[0]), int(rest[1]), int(rest[2]), Path(rest[3]))
    else:
        report = _read_step(Path(rest[0]))
    print(json.dumps(report))
