"""The forecasting protocol: folds, landmark splits, standardisation, survival landmarks, metrics, result I/O."""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import KFold
from typer.testing import CliRunner

from vpatient.benchmarks.cli import benchmark_app
from vpatient.benchmarks.forecast import (
    PREDICTION_COLUMNS,
    ForecastBenchmarkResult,
    run_forecast_benchmark,
)
from vpatient.data.meds import write_meds
from vpatient.data.pbc import load_pbc2
from vpatient.data.timeline import observations_frame
from vpatient.evaluate.methods import METHODS, PEERS, default_methods
from vpatient.evaluate.metrics import coverage, harrell_c, ipcw_brier, kaplan_meier, mae
from vpatient.evaluate.protocol import (
    Standardiser,
    eligible_records,
    forecast_folds,
    forecast_variables,
    landmark_split,
    sort_subject_ids,
    survival_setup,
)
from vpatient.schemas import PatientRecord


@pytest.fixture(scope="module")
def pbc():
    return load_pbc2()


def _record(**overrides) -> PatientRecord:
    data = {
        "subject_id": "7",
        "static": {"age": 50.0, "sex": 0.0},
        "observations": [
            {"time": t, "variable": "bilirubin", "value": v}
            for t, v in [(0.0, 1.0), (1.0, 2.0), (2.0, 4.0), (3.0, 8.0), (4.0, 16.0)]
        ],
        "events": [{"time": 4.5, "kind": "death"}],
        "end_of_followup": 4.5,
    } | overrides
    return PatientRecord.model_validate(data)


# --------------------------------------------------------------------------- folds


def test_subject_ids_sort_numerically_when_integer_like():
    assert sort_subject_ids(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert sort_subject_ids(["b", "10", "a", "2"]) == ["10", "2", "a", "b"]


def test_folds_are_deterministic_and_match_sklearn_kfold_on_sorted_ids(pbc):
    folds = forecast_folds(pbc, n_folds=5, seed=0)
    again = forecast_folds(pbc, n_folds=5, seed=0)
    assert [f.test_ids for f in folds] == [f.test_ids for f in again]
    ids = np.array(sorted((r.subject_id for r in pbc.records if len(r.visit_times()) >= 2), key=int))
    assert len(ids) == 285
    for fold, (train, test) in zip(folds, KFold(5, shuffle=True, random_state=0).split(ids), strict=True):
        assert fold.test_ids == list(ids[test])
        assert fold.train_ids == list(ids[train])
    assert sorted((sid for f in folds for sid in f.test_ids), key=int) == list(ids)
    assert forecast_folds(pbc, 5, seed=1)[0].test_ids != folds[0].test_ids


def test_forecast_variables_drop_the_mostly_missing_cholesterol(pbc):
    used, dropped = forecast_variables(eligible_records(pbc.records), pbc.config, max_missing=0.3)
    assert used == ["bilirubin", "albumin", "alkaline_phosphatase", "sgot", "prothrombin", "platelets"]
    assert list(dropped) == ["cholesterol"] and 0.4 < dropped["cholesterol"] < 0.45
    assert "cholesterol" in forecast_variables(eligible_records(pbc.records), pbc.config, max_missing=0.5)[0]


# --------------------------------------------------------------------------- landmark split


def test_landmark_split_observes_ceil_half_of_the_visits():
    history, targets = landmark_split(_record())
    assert history.visit_times() == [0.0, 1.0, 2.0]  # ceil(5/2) = 3
    assert history.end_of_followup == 2.0 and history.events == []
    assert [o.time for o in targets] == [3.0, 4.0]
    history, targets = landmark_split(_record(observations=_record().observations[:4]))
    assert history.visit_times() == [0.0, 1.0] and [o.time for o in targets] == [2.0, 3.0]


def test_landmark_split_never_leaks_later_values(pbc):
    for record in pbc.records:
        visits = record.visit_times()
        if len(visits) < 2:
            continue
        history, targets = landmark_split(record)
        s = history.end_of_followup
        assert len(history.visit_times()) == math.ceil(len(visits) / 2)
        assert s == history.visit_times()[-1]
        assert all(o.time <= s for o in history.observations)
        assert all(e.time <= s for e in history.events)
        assert all(o.time > s for o in targets)
        assert len(history.observations) + len(targets) == len(record.observations)


# --------------------------------------------------------------------------- standardiser


def test_standardiser_is_fitted_on_the_training_fold_only(pbc):
    fold = forecast_folds(pbc, 5, 0)[0]
    scaler = Standardiser.fit(fold.train, pbc.config, ["bilirubin", "albumin"])
    train = observations_frame(fold.train, pbc.config)
    bili = train.loc[train["variable"] == "bilirubin", "value"]
    assert scaler.mean["bilirubin"] == pytest.approx(bili.mean())
    assert scaler.std["bilirubin"] == pytest.approx(bili.std(ddof=1))
    everyone = observations_frame(fold.train + fold.test, pbc.config)
    assert scaler.mean["bilirubin"] != pytest.approx(everyone.loc[everyone["variable"] == "bilirubin", "value"].mean())
    frame = pd.DataFrame(
        {
            "variable": ["bilirubin"],
            "observed": [scaler.mean["bilirubin"] + 2 * scaler.std["bilirubin"]],
            "q95": [scaler.mean["bilirubin"]],
        }
    )
    out = scaler.transform(frame, ["observed", "q95"])
    assert out["observed"].iloc[0] == pytest.approx(2.0) and out["q95"].iloc[0] == pytest.approx(0.0)


# --------------------------------------------------------------------------- survival landmarks


def test_survival_setup_keeps_subjects_in_follow_up_and_censors_other_events():
    dead = _record(subject_id="1")
    transplanted = _record(subject_id="2", events=[{"time": 4.5, "kind": "transplant"}])
    gone = _record(subject_id="3", observations=_record().observations[:2], events=[], end_of_followup=1.5)
    setup = survival_setup([dead, transplanted, gone], landmark=2.0, event="death")
    assert setup.subject_ids == ["1", "2"]
    np.testing.assert_allclose(setup.time, [2.5, 2.5])
    np.testing.assert_array_equal(setup.event, [1, 0])
    assert all(h.end_of_followup == 2.0 and max(o.time for o in h.observations) <= 2.0 for h in setup.histories)


# --------------------------------------------------------------------------- metrics


def test_mae_and_coverage_on_hand_computed_cases():
    assert mae([1.0, 2.0, 3.0], [1.5, 2.0, 1.0]) == pytest.approx((0.5 + 0 + 2) / 3)
    assert coverage([0.0, 1.0, 2.0, 3.0], [0.0, 0.5, 2.5, 0.0], [1.0, 0.9, 3.0, 3.0]) == pytest.approx(0.5)
    assert math.isnan(mae([], []))


def test_harrell_c_on_hand_computed_cases():
    # comparable pairs (earlier event first): (0,1), (0,2), (1,2); risk orders all correctly
    assert harrell_c([1, 2, 3], [1, 1, 0], [3.0, 2.0, 1.0]) == pytest.approx(1.0)
    # one discordant pair of three: (1,2) ranked wrong
    assert harrell_c([1, 2, 3], [1, 1, 0], [3.0, 1.0, 2.0]) == pytest.approx(2 / 3)
    # with horizon 2.5 the third subject's event at 4 is censored at 2.5: pairs (0,1), (0,2), (1,2)
    assert harrell_c([1, 2, 4], [1, 1, 1], [1.0, 3.0, 2.0], horizon=2.5) == pytest.approx(1 / 3)
    # tied risk counts one half
    assert harrell_c([1, 2], [1, 0], [1.0, 1.0]) == pytest.approx(0.5)


def test_kaplan_meier_and_its_left_limit():
    km = kaplan_meier(np.array([1.0, 2.0, 2.0, 3.0, 4.0]), np.array([1, 1, 0, 0, 1]))
    np.testing.assert_allclose(km.times, [1.0, 2.0, 4.0])
    np.testing.assert_allclose(km(np.array([0.5, 1.0, 2.0, 3.5, 4.0])), [1.0, 0.8, 0.6, 0.6, 0.0])
    np.testing.assert_allclose(km(np.array([1.0, 2.0, 4.0]), left=True), [1.0, 0.8, 0.6])


def test_ipcw_brier_on_a_hand_computed_case():
    # censoring distribution (reverse KM): censorings at 2 (3 at risk) and 4 (1 at risk)
    g = kaplan_meier(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0, 1, 0, 1]))
    assert float(g(2.8)) == pytest.approx(2 / 3)
    time, event, risk = np.array([1.0, 2.5, 3.0, 5.0]), np.array([1, 1, 0, 0]), np.array([0.8, 0.6, 0.3, 0.1])
    expected = (0.2**2 / 1.0 + 0.4**2 / (2 / 3) + 0.3**2 / (2 / 3) + 0.1**2 / (2 / 3)) / 4
    assert ipcw_brier(time, event, risk, 2.8, g) == pytest.approx(expected)
    # a subject censored before the horizon contributes nothing; without censoring it is the plain Brier score
    no_censoring = kaplan_meier(np.array([1.0]), np.array([0]))
    assert ipcw_brier(np.array([0.5, 3.0]), np.array([1, 0]), np.array([0.9, 0.2]), 2.0, no_censoring) == pytest.approx(
        (0.01 + 0.04) / 2
    )
    assert ipcw_brier(
        np.array([0.5, 3.0, 1.0]), np.array([1, 0, 0]), np.array([0.9, 0.2, 0.5]), 2.0, no_censoring
    ) == pytest.approx((0.01 + 0.04) / 3)


# --------------------------------------------------------------------------- result and CLI


@pytest.fixture(scope="module")
def small_run(pbc):
    subset = pbc.__class__(name="pbc-subset", records=pbc.records[:120], config=pbc.config)
    methods = {k: METHODS[k] for k in ("mean-only", "locf", "last-bilirubin")}
    return run_forecast_benchmark(subset, methods, n_folds=2, seed=0, landmarks=[1.0], windows=[3.0], progress=False)


def test_result_round_trips_through_json(small_run):
    result, predictions = small_run
    again = ForecastBenchmarkResult.model_validate_json(result.model_dump_json())
    assert again == result
    assert again.model_dump() == ForecastBenchmarkResult.model_validate(json.loads(result.model_dump_json())).model_dump()
    assert list(predictions.columns) == PREDICTION_COLUMNS
    assert {f.method for f in result.forecast} == {"mean-only", "locf"}
    assert {s.method for s in result.survival} == {"last-bilirubin"}
    with pytest.raises(ValueError, match="extra"):
        ForecastBenchmarkResult.model_validate(json.loads(result.model_dump_json()) | {"surprise": 1})
    from vpatient.schema_export import rendered_files

    schema = json.loads(rendered_files()["ForecastBenchmarkResult.schema.json"])
    assert schema["title"] == "ForecastBenchmarkResult" and "forecast" in schema["properties"]


def test_metrics_recompute_from_the_predictions_table(small_run):
    result, predictions = small_run
    locf = next(f for f in result.forecast if f.method == "locf")
    rows = predictions[predictions["method"] == "locf"]
    per_fold = [mae(r["observed"], r["mean"]) for _, r in rows.groupby("fold")]
    assert locf.mae_folds == pytest.approx(per_fold)
    assert locf.mae_mean == pytest.approx(np.mean(per_fold))


def test_cli_forecast_writes_json_markdown_and_predictions(pbc, tmp_path):
    data = write_meds(pbc.records[:90], pbc.config, tmp_path / "pbcsub")
    json_out, parquet = tmp_path / "out" / "r.json", tmp_path / "out" / "p.parquet"
    result = CliRunner().invoke(
        benchmark_app,
        [
            "forecast",
            "--data",
            str(data),
            "--folds",
            "2",
            "--seed",
            "0",
            "--json",
            str(json_out),
            "--predictions",
            str(parquet),
            "--out-dir",
            str(tmp_path / "results"),
            "--no-progress",
            "--methods",
            "mean-only,locf,lmm,landmark-cox,last-bilirubin",
        ],
    )
    assert result.exit_code == 0, result.output
    saved = ForecastBenchmarkResult.model_validate_json(json_out.read_text())
    assert saved.data == "pbcsub" and saved.settings.n_folds == 2 and saved.settings.landmarks == [1.0, 3.0, 5.0]
    assert saved.methods == ["mean-only", "locf", "lmm", "landmark-cox", "last-bilirubin"]
    markdown = (tmp_path / "results" / "forecast-pbcsub.md").read_text()
    assert "| lmm |" in markdown and "Harrell's C" in markdown
    table = pd.read_parquet(parquet)
    assert list(table.columns) == PREDICTION_COLUMNS
    assert set(table["method"]) == {"mean-only", "locf", "lmm"} and set(table["fold"]) == {0, 1}
    assert (table["q05"] <= table["mean"]).all() and (table["mean"] <= table["q95"]).all()


def test_cli_rejects_unknown_methods(tmp_path):
    result = CliRunner().invoke(
        benchmark_app, ["forecast", "--data", "pbc2", "--methods", "locf,oracle", "--out-dir", str(tmp_path)]
    )
    assert result.exit_code != 0 and "oracle" in result.output


def test_the_world_model_runs_by_default_beside_its_peers():
    from vpatient.benchmarks.cli import benchmark_forecast

    assert inspect.signature(benchmark_forecast).parameters["methods"].default is None  # every method that applies
    assert default_methods()[0] == "vpatient" and set(PEERS) <= set(default_methods())
