"""Virtual cohorts at scale: the same cohort on any number of worker processes, the shards written straight
from numpy columns, and the scale benchmark's cohort piece."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpatient.benchmarks.scale_cohort import measure_cohort
from vpatient.data.meds import read_meds
from vpatient.errors import VPatientError
from vpatient.simulation import Simulator
from vpatient.simulation.engine import AUTO_MIN_PATIENTS, Engine, auto_engine, chunks
from vpatient.simulation.virtual_cohort import STAGES


def _files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*.parquet"))}


def test_a_cohort_is_the_same_whatever_runs_its_chunks(untrained_simulator_dir, tmp_path):
    sim = Simulator.load(untrained_simulator_dir)
    runs = {
        name: sim.cohort(
            300, seed=4, years=3.0, out=tmp_path / name, chunk_size=100, progress=False, engine=engine, n_workers=workers
        )
        for name, engine, workers in (("local", "local", 1), ("one", "processes", 1), ("two", "processes", 2))
    }
    shards = {name: _files(run.out_dir / "meds") | _files(run.out_dir / "events") for name, run in runs.items()}
    assert len(shards["local"]) == 1 + 3 + 3  # codes.parquet, then a MEDS shard and an events part per chunk
    assert shards["one"] == shards["local"] and shards["two"] == shards["local"]  # byte for byte
    assert runs["two"].n_rows == runs["local"].n_rows > 300
    assert set(runs["two"].stage_seconds) == set(STAGES) and all(s >= 0 for s in runs["two"].stage_seconds.values())
    with pytest.raises(VPatientError, match="checkpoint directory"):
        Simulator(sim.model, sim.population).cohort(20, out=tmp_path / "no-dir", engine="processes", progress=False)


def test_auto_starts_worker_processes_only_for_large_cohorts_of_a_saved_model():
    big, small = chunks(AUTO_MIN_PATIENTS, 5_000, 0), chunks(AUTO_MIN_PATIENTS - 1, 5_000, 0)
    assert auto_engine(big, 2, "models/pbc") == Engine.PROCESSES
    assert auto_engine(small, 2, "models/pbc") == Engine.LOCAL
    assert auto_engine(big, 1, "models/pbc") == Engine.LOCAL
    assert auto_engine(chunks(AUTO_MIN_PATIENTS, AUTO_MIN_PATIENTS, 0), 2, "models/pbc") == Engine.LOCAL  # one chunk
    assert auto_engine(big, 2, object()) == Engine.LOCAL  # a model object: nothing for workers to load


def test_measure_cohort_runs_the_command_and_reports_its_time_memory_and_stages(untrained_simulator_dir):
    result = measure_cohort(untrained_simulator_dir, patients=240, seed=1, progress=False, chunk_size=80, engine="processes")
    assert result.patients == 240 and result.chunk_size == 80 and result.workers == 2
    assert result.meds_rows > 240 and result.seconds > 0 and result.patients_per_second == pytest.approx(240 / result.seconds)
    assert 0.05 < result.peak_pss_gb <= result.peak_rss_gb < 8  # the command and its workers, counted from /proc
    assert result.stages.rollout > 0 and result.stages.measurement > 0 and result.stages.writing > 0
    assert 0 < result.stage_cpu.rollout and sum(result.stage_cpu.model_dump().values()) < result.cpu_seconds
    with pytest.raises(VPatientError, match=r"population\.json"):
        measure_cohort(untrained_simulator_dir.parent, patients=10, seed=0, progress=False)


def test_a_cohort_written_by_workers_reads_back(untrained_simulator_dir, tmp_path):
    sim = Simulator.load(untrained_simulator_dir)
    result = sim.cohort(120, seed=2, years=2.0, out=tmp_path / "c", chunk_size=40, engine="processes", progress=False)
    records = read_meds(result.meds_dir)
    assert len(records) == 120 and all(r.end_of_followup <= 2.0 + 1e-9 for r in records)
