"""The simulation benchmarks (pbc-trial, cohort-fidelity) end to end on a tiny synthetic cohort, and their parts."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from vpatient.benchmarks.cohort_fidelity import (
    MAX_AUC,
    CohortFidelityBenchmarkResult,
    CohortFidelitySettings,
    classifier_auc,
    correlation_gap,
    patient_features,
    run_cohort_fidelity_benchmark,
    wasserstein_by_bin,
)
from vpatient.benchmarks.pbc_trial import (
    PbcTrialBenchmarkResult,
    PbcTrialSettings,
    StepOrLinearCurve,
    integrated_abs_difference,
    pooled_trial,
    run_pbc_trial_benchmark,
    trial_arms,
)
from vpatient.data.cohort import Cohort
from vpatient.data.synthetic import synthetic_cohort
from vpatient.evaluate import fold_models
from vpatient.evaluate.fold_models import TrainingRun, full_model, trained_model
from vpatient.evaluate.protocol import forecast_folds, held_out_records
from vpatient.schemas import PatientRecord, VariableKind
from vpatient.simulation import Simulator
from vpatient.train import TrainSettings
from vpatient.virtual_patient import VirtualPatientModel

TINY = TrainSettings(epochs=2)
SINGLE_VISIT = 3  # records cut to their first visit, so no fold of the protocol holds them


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    """60 synthetic patients; a few cut to one visit (follow-up kept), as PBC has patients seen once."""
    base = synthetic_cohort(n=60, seed=5, imaging_dim=4)
    records = []
    for i, r in enumerate(base.records):
        if i < SINGLE_VISIT:
            first = r.visit_times()[0]
            r = r.model_copy(
                update={
                    "observations": [o for o in r.observations if o.time == first],
                    "imaging": [s for s in r.imaging if s.time == first],
                }
            )
        records.append(r)
    return Cohort(name=base.name, records=records, config=base.config)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def trial_result(cohort, cache) -> PbcTrialBenchmarkResult:
    settings = PbcTrialSettings(
        seed=0,
        n_folds=2,
        years=4.0,
        draws_per_record=2,
        check_times=(1.0, 2.0, 3.0),
        horizon=3.5,
        train_settings=TINY,
        cache_dir=cache,
        progress=False,
    )
    return run_pbc_trial_benchmark(cohort, settings)


@pytest.fixture(scope="module")
def fidelity_result(cohort, cache, trial_result) -> CohortFidelityBenchmarkResult:
    # after trial_result: the fold models come from the shared cache
    settings = CohortFidelitySettings(
        seed=0, n_folds=2, cv_repeats=1, min_deaths=1, train_settings=TINY, cache_dir=cache, progress=False
    )
    return run_cohort_fidelity_benchmark(cohort, settings)


# --------------------------------------------------------------------------- curves


def test_integrated_difference_is_exact_for_steps_and_lines():
    step = StepOrLinearCurve(np.array([0.0, 1.0, 2.5]), np.array([1.0, 0.8, 0.5]), step=True)
    line = StepOrLinearCurve(np.array([0.0, 2.0]), np.array([1.0, 0.0]), step=False)
    flat = StepOrLinearCurve(np.array([0.0]), np.array([0.5]), step=True)
    assert integrated_abs_difference(step, step, 10.0) == 0.0
    assert integrated_abs_difference(line, line, 10.0) == 0.0
    # |1 - t/2 - 0.5| over [0, 2]: two triangles of area 1/4 (the sign change inside a piece)
    assert integrated_abs_difference(line, flat, 2.0) == pytest.approx(0.5, abs=1e-12)
    # steps against 1: 0.2 on [1, 2.5), 0.5 on [2.5, 4]
    one = StepOrLinearCurve(np.array([0.0]), np.array([1.0]), step=True)
    assert integrated_abs_difference(step, one, 4.0) == pytest.approx(0.2 * 1.5 + 0.5 * 1.5, abs=1e-12)
    assert integrated_abs_difference(one, step, 4.0) == integrated_abs_difference(step, one, 4.0)
    # a step curve is 1 before its first time
    late = StepOrLinearCurve(np.array([1.0]), np.array([0.0]), step=True)
    assert integrated_abs_difference(late, one, 3.0) == pytest.approx(2.0, abs=1e-12)


# --------------------------------------------------------------------------- fold models


@pytest.mark.slow
def test_trained_models_are_cached_by_their_subjects(cohort, tmp_path, monkeypatch):
    records = cohort.records[:20]
    run = TrainingRun(0, tmp_path, TrainSettings(epochs=1))
    first = trained_model(records, cohort.config, "t", run)
    calls = []
    monkeypatch.setattr(VirtualPatientModel, "fit", classmethod(lambda *a, **k: calls.append(1)))
    again = trained_model(records, cohort.config, "t", run)
    assert not calls, "the second call must load the cached model, not train"
    for a, b in zip(first.network.state_dict().values(), again.network.state_dict().values(), strict=True):
        assert np.array_equal(a.numpy(), b.numpy())
    a = fold_models.model_dir(records, cohort.config, "t", run)
    b = fold_models.model_dir(cohort.records[1:21], cohort.config, "t", run)
    c = fold_models.model_dir(records, cohort.config, "t", replace(run, seed=1))
    assert a.is_dir() and a.name.startswith("t-seed0-v")
    assert len({a, b, c}) == 3  # other subjects or another seed: another model


def test_held_out_sets_partition_the_cohort(cohort):
    splits = held_out_records(cohort, 2, 0)
    held = [r.subject_id for _, test in splits for r in test]
    assert sorted(held) == sorted(cohort.subject_ids())  # every patient held out exactly once
    for fold, (train, test) in zip(forecast_folds(cohort, 2, 0), splits, strict=True):
        assert [r.subject_id for r in train] == fold.train_ids  # the protocol's training patients, unchanged
        assert set(fold.test_ids) <= {r.subject_id for r in test}
        assert not {r.subject_id for r in train} & {r.subject_id for r in test}
    single = {r.subject_id for r in cohort.records if len(r.visit_times()) < 2}
    assert len(single) >= SINGLE_VISIT and single <= set(held)


# --------------------------------------------------------------------------- pbc-trial


@pytest.mark.slow
def test_pooled_trial_of_one_group_is_the_simulators_trial(cohort, cache, trial_result):
    model = full_model(cohort, TrainingRun(0, cache, TINY))
    _, arms = trial_arms(cohort)
    direct = Simulator(model).trial(
        arms, seed=3, years=3.0, event="death", population=cohort.records[:15], draws_per_record=2, progress=False
    )
    pooled = pooled_trial([(model, cohort.records[:15])], arms, 3.0, "death", 3, 2)
    pd.testing.assert_frame_equal(direct.kaplan_meier, pooled.kaplan_meier)
    pd.testing.assert_frame_equal(direct.model_survival, pooled.model_survival)
    pd.testing.assert_frame_equal(direct.hazard_ratios, pooled.hazard_ratios)


@pytest.mark.slow
def test_pbc_trial_result_is_consistent(trial_result, cohort, tmp_path):
    r = trial_result
    assert r.benchmark == "pbc-trial" and list(r.arms) == ["placebo", "drug"]
    assert r.n_patients == len(cohort.records)
    assert sum(o.n for o in r.observed) == len(cohort.records)
    for check in (r.in_sample, r.cross_validated):
        assert check.n_patients == len(cohort.records)  # out of sample too: every patient, held out once
        assert check.n_simulated == len(cohort.records) * r.draws_per_record
        assert len(check.survival) == 2 * len(r.check_times)
        assert check.checks_total == len(check.survival) + 1
        assert check.checks_passed == sum(s.inside for s in check.survival) + check.hazard_ratio.inside
        for s in check.survival:
            assert s.observed_lower <= s.observed <= s.observed_upper
            assert 0.0 <= s.model_mean <= 1.0 and 0.0 <= s.simulated_km <= 1.0
            assert s.inside == (s.observed_lower <= s.model_mean <= s.observed_upper)
        hr = check.hazard_ratio
        assert hr.observed.lower <= hr.observed.hazard_ratio <= hr.observed.upper
        assert hr.inside == (hr.observed.lower <= hr.simulated.hazard_ratio <= hr.observed.upper)
        assert {d.arm for d in check.distance} == set(r.arms)
        assert all(0.0 <= d.model_mean <= r.horizon for d in check.distance)
    # the curves of the figure: the observed one against itself is 0, and the stored distances recompute
    curves = {(c.setting, c.arm, c.source): c for c in r.curves}
    obs = curves[("observed", "placebo", "observed Kaplan-Meier")]
    obs_curve = StepOrLinearCurve(np.array(obs.time), np.array(obs.survival), step=True)
    assert integrated_abs_difference(obs_curve, obs_curve, r.horizon) == 0.0
    mean = curves[("in-sample", "placebo", "model mean")]
    recomputed = integrated_abs_difference(
        StepOrLinearCurve(np.array(mean.time), np.array(mean.survival), False), obs_curve, r.horizon
    )
    assert recomputed == pytest.approx(r.in_sample.distance[0].model_mean, abs=1e-3)  # curves are stored to 5 decimals
    # JSON round trip, files, markdown
    assert PbcTrialBenchmarkResult.model_validate_json(r.model_dump_json()) == r
    paths = r.write(tmp_path)
    assert [p.name for p in paths] == ["pbc-trial.json", "pbc-trial.md", "pbc-trial.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    md = paths[1].read_text()
    assert f"in-sample {r.in_sample.checks_passed} of {r.in_sample.checks_total}" in md
    assert md.count("| pass |") + md.count("| miss |") == 2 * r.in_sample.checks_total


# --------------------------------------------------------------------------- cohort-fidelity


def test_patient_features_slopes_baselines_and_counts(config, record_data):
    record = PatientRecord.model_validate(record_data)
    x = patient_features([record], config)
    row = x.iloc[0]
    assert row["slope:bilirubin"] == pytest.approx(math.log(2.0) - math.log(1.2))  # log scale, 1 year apart
    assert row["baseline:bilirubin"] == pytest.approx(math.log(1.2))
    assert math.isnan(row["slope:albumin"])  # one time only
    assert row["baseline:stage"] == 2 and row["baseline:ascites"] == 0
    assert row["visits"] == len(record.visit_times()) and row["follow-up"] == 3.0
    assert row["event:death"] == 1 and row["event:transplant"] == 0
    assert row["dose at 0:drug"] == 1.0 and row["static:age"] == 61.5


@pytest.mark.slow
def test_classifier_auc_is_unbiased_and_has_power():
    cohort = synthetic_cohort(n=240, seed=9, imaging_dim=4)
    x = patient_features(cohort.records, cohort.config)
    order = np.random.default_rng(0).permutation(len(x))
    a, b = x.iloc[order[:120]].reset_index(drop=True), x.iloc[order[120:]].reset_index(drop=True)
    null = classifier_auc(a, b, seed=0, n_repeats=2)
    assert abs(null - 0.5) < 0.12, null  # real vs real: nothing to find
    shifted = b.assign(**{"baseline:bilirubin": b["baseline:bilirubin"] + 2.0})
    assert classifier_auc(a, shifted, seed=0, n_repeats=1) > 0.9  # a real difference is found


def test_distribution_distances_vanish_for_identical_data():
    frame = pd.DataFrame({"variable": ["v"] * 6, "time": [0.0, 0.5, 2.0, 2.0, 4.0, 7.0], "value": [0.0, 1.0, 2.0, 3.0, 1.0, 5.0]})
    w = wasserstein_by_bin(frame, frame, ["v", "missing"], ((0, 1), (1, 3), (3, 5), (5, math.inf)))
    assert w["v"] == {"0-1": 0.0, "1-3": 0.0, "3-5": 0.0, "5+": 0.0}
    assert w["missing"]["0-1"] is None
    shifted = frame.assign(value=frame["value"] + 1.5)
    assert wasserstein_by_bin(frame, shifted, ["v"], ((0, 1),))["v"]["0-1"] == pytest.approx(1.5)
    table = pd.DataFrame(np.random.default_rng(0).normal(size=(50, 3)), columns=list("abc"))
    assert correlation_gap(table, table) == 0.0


@pytest.mark.slow
def test_cohort_fidelity_result_is_consistent(fidelity_result, cohort, tmp_path):
    r = fidelity_result
    assert r.benchmark == "cohort-fidelity" and len(r.folds) == 2
    assert sum(f.n_test for f in r.folds) == len(cohort.records)
    for f in r.folds:
        assert f.n_train + f.n_test == len(cohort.records)
        assert f.n_virtual == round(r.virtual_multiple * f.n_train)
        assert 0.0 <= f.auc <= 1.0 and 0.0 <= f.auc_real_vs_real <= 1.0
        assert f.mae_real > 0 and f.mae_virtual > 0
        assert set(f.wasserstein) == set(cohort.config.names(VariableKind.CONTINUOUS, VariableKind.BINARY, VariableKind.ORDINAL))
        assert all(set(bins) == set(r.year_bins) for bins in f.wasserstein.values())
        assert len(f.cells) == len(r.landmarks) * len(r.windows)
    by_name = {t.name: t for t in r.targets}
    auc = by_name["(a) AUC real vs virtual"]
    assert auc.value == pytest.approx(np.mean([f.auc for f in r.folds]))
    assert auc.passed == (auc.value <= MAX_AUC)
    assert len(r.features) == len(patient_features(cohort.records[:1], cohort.config).columns)
    assert sorted(g.feature for g in r.feature_gaps) == sorted(r.features)
    assert 0.0 <= r.auc_pooled <= 1.0 and r.n_pooled == len(cohort.records)
    assert CohortFidelityBenchmarkResult.model_validate_json(r.model_dump_json()) == r
    paths = r.write(tmp_path)
    assert [p.name for p in paths] == ["cohort-fidelity.json", "cohort-fidelity.md", "cohort-fidelity.png"]
    md = paths[1].read_text()
    assert md.count("| pass |") + md.count("| miss |") == len(r.targets)
