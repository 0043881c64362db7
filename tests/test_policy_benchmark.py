"""A tiny end-to-end run of ``vpatient benchmark test-selection`` (vpatient.benchmarks.next_test_selection)."""

from __future__ import annotations

import json

import pytest

from vpatient.benchmarks.next_test_selection import (
    METHODS,
    NextTestSelectionSettings,
    TestSelectionBenchmarkResult,
    _outcome,
    curve_area,
    run_test_selection_benchmark,
)
from vpatient.benchmarks.registry import BENCHMARKS
from vpatient.data.synthetic import synthetic_cohort
from vpatient.schemas import Event, Observation, PatientRecord
from vpatient.train import TrainSettings


@pytest.fixture(scope="module")
def result() -> TestSelectionBenchmarkResult:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cohort = synthetic_cohort(n=40, seed=3)
        settings = NextTestSelectionSettings(
            seed=1,
            datasets=("synthetic",),
            synthetic_folds=2,
            n_samples=32,
            n_random=4,
            n_train_patients=4,
            max_patients_per_fold=8,
            latency_patients=0,
            truth_patients=2,
            truth_samples=200,
            truth_model_samples=32,
            train_settings=TrainSettings(epochs=2),
            cache_dir=None,
            progress=False,
        )
        return run_test_selection_benchmark(settings, cohorts={"synthetic": cohort})
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_structure(result: TestSelectionBenchmarkResult) -> None:
    assert result.benchmark == "test-selection"
    assert BENCHMARKS["test-selection"] is TestSelectionBenchmarkResult
    (curve,) = result.curves
    assert curve.data == "synthetic" and curve.target == "risk:progression:2"
    assert curve.n_patients >= 1
    assert set(curve.curves) == set(METHODS) == set(curve.areas)
    assert all(len(c) == len(curve.steps) for c in curve.curves.values())
    assert len(curve.fixed_orders) == 2 and all(sorted(o) == sorted(curve.tests) for o in curve.fixed_orders)
    assert sum(curve.eig_first_choice.values()) == curve.n_patients
    assert {c.name for c in result.targets} >= {"synthetic: EIG closes the random-oracle area gap"}
    assert result.truth is not None and result.truth.n_patients >= 1
    assert set(result.truth.per_test) == set(curve.tests)
    (cal,) = result.calibration
    assert cal.n_pairs == sum(b.n for b in cal.bins) > 0


@pytest.mark.slow
def test_curve_invariants(result: TestSelectionBenchmarkResult) -> None:
    (curve,) = result.curves
    c = curve.curves
    start = {m: c[m][0] for m in METHODS}
    end = {m: c[m][-1] for m in METHODS}
    # nothing revealed: every policy has the same error; everything revealed: the same again
    assert max(start.values()) - min(start.values()) < 1e-9
    assert max(end.values()) - min(end.values()) < 1e-9
    # the oracle's first pick is the best single test of each patient
    for m in METHODS:
        assert c["oracle"][1] <= c[m][1] + 1e-9
    assert curve.areas["oracle"] <= curve.areas["random"] + 1e-9


@pytest.mark.slow
def test_round_trip_and_files(result: TestSelectionBenchmarkResult, tmp_path) -> None:
    again = TestSelectionBenchmarkResult.model_validate_json(result.model_dump_json())
    assert again == result
    paths = result.write(tmp_path)
    assert [p.name for p in paths] == ["test-selection.json", "test-selection.md", "test-selection.png"]
    assert json.loads(paths[0].read_text())["benchmark"] == "test-selection"
    text = paths[1].read_text()
    assert "# Test-selection benchmark" in text and "| step | eig | random | fixed | oracle |" in text
    assert paths[2].stat().st_size > 0


def test_outcome_and_area() -> None:
    from vpatient.data.pbc import pbc2_config
    from vpatient.policy import Target

    target = Target.parse("risk:death:3", pbc2_config())
    obs = [Observation(time=0.0, variable="x", value=1.0)]
    died = PatientRecord(subject_id="a", observations=obs, events=[Event(time=4.0, kind="death")], end_of_followup=4.0)
    alive = PatientRecord(subject_id="b", observations=obs, end_of_followup=9.0)
    lost = PatientRecord(subject_id="c", observations=obs, end_of_followup=3.0)
    assert _outcome(died, 2.0, target) == 1
    assert _outcome(died, 0.5, target) == 0  # died at 4, after the horizon 0.5 + 3
    assert _outcome(alive, 2.0, target) == 0
    assert _outcome(lost, 2.0, target) is None
    assert _outcome(died, 4.0, target) is None  # the event before the landmark
    assert curve_area([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert curve_area([2.0, 0.0]) == pytest.approx(1.0)
