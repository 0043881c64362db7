"""Prediction tasks (MEDS label tables) and `vpatient predict`, scored by meds-evaluation."""

from __future__ import annotations

import re
import sys
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest
from meds_evaluation.evaluate import evaluate_binary_classification
from meds_evaluation.schema import PredictionSchema

from vpatient.data.fhir.coding import RELATIVE_EPOCH
from vpatient.datasets import load_dataset
from vpatient.errors import ConfigError, DataFormatError, DatasetNotFoundError, RecordValidationError
from vpatient.predict import PREDICTION_COLUMNS, predict, prediction_table, write_predictions
from vpatient.schemas import Event, PatientRecord
from vpatient.tasks import (
    Task,
    TaskSpec,
    from_timestamps,
    load_task,
    make_labels,
    make_task,
    read_labels,
    read_task,
    to_timestamps,
    write_task,
)
from vpatient.virtual_patient import VirtualPatientModel

YEAR = timedelta(days=365.25)


def _record(sid: str, visits: list[float], end: float, events: list[tuple[float, str]] = (), **extra) -> PatientRecord:
    observations = [{"time": t, "variable": "bilirubin", "value": 1.0 + t} for t in visits]
    return PatientRecord.model_validate(
        {
            "subject_id": sid,
            "observations": observations,
            "events": [{"time": t, "kind": k} for t, k in events],
            "end_of_followup": end,
            **extra,
        }
    )


# --------------------------------------------------------------------------- labels


def test_labels_follow_the_window_the_censoring_and_the_event(config):
    records = [
        # death at 3.5: rows at 0 and 1 are negative, 1.5 positive at the window's closed edge, 2 and 3 positive
        _record("1", [0.0, 1.0, 1.5, 2.0, 3.0], 3.5, [(3.5, "death")]),
        # no event, followed to 3: t=1 is negative (followed exactly to t + window), t=2 is censored (no row)
        _record("2", [0.0, 1.0, 2.0], 3.0),
        # death at a visit time: the row at 0 is positive, and nothing from the death on
        _record("3", [0.0, 1.0, 2.0], 2.0, [(1.0, "death")]),
        # another event kind ends follow-up before any window closes: every outcome unknown
        _record("4", [0.0, 0.5], 1.0, [(1.0, "transplant")]),
    ]
    labels = make_labels(records, config, "death", 2.0)
    assert list(labels.columns) == ["subject_id", "prediction_time", "boolean_value"]
    assert labels["subject_id"].dtype == np.int64 and labels["prediction_time"].dtype == "datetime64[us]"
    got = [(int(s), (t - pd.Timestamp(RELATIVE_EPOCH)) / YEAR, bool(v)) for s, t, v in labels.itertuples(index=False)]
    expected = [
        (1, 0.0, False),
        (1, 1.0, False),
        (1, 1.5, True),
        (1, 2.0, True),
        (1, 3.0, True),
        (2, 0.0, False),
        (2, 1.0, False),
        (3, 0.0, True),
    ]
    assert [(s, v) for s, _, v in got] == [(s, v) for s, _, v in expected]
    np.testing.assert_allclose([t for _, t, _ in got], [t for _, t, _ in expected], atol=1e-9)
    # a longer window on the same records: subject 2's t=1 is now censored, and subject 4's visits stay unknown
    longer = make_labels(records, config, "death", 2.5)
    assert [(int(s), bool(v)) for s, _, v in longer.itertuples(index=False)] == [
        (1, False), (1, True), (1, True), (1, True), (1, True), (2, False), (3, True),
    ]  # fmt: skip


def test_prediction_times_use_the_index_time_and_map_back_exactly(config):
    index = datetime(2011, 3, 4, 5, 6, 7)
    record = _record("7", [0.0, 1.0 / 3.0, 2.123456789], 5.0, index_time=index)
    labels = make_labels([record], config, "death", 2.0)
    assert labels["prediction_time"].iloc[0] == pd.Timestamp(index)
    stamps = to_timestamps(record, record.visit_times(), config.time_unit)
    # a visit's stamp maps back to the visit's own time exactly, so a cut there keeps what happened at it
    assert from_timestamps(record, stamps, config.time_unit).tolist() == record.visit_times()


def test_labels_refuse_an_unknown_event_and_ids_that_are_not_integers(config):
    with pytest.raises(ConfigError, match="event 'stroke' is not an event variable of config 'tiny'"):
        make_labels([_record("1", [0.0], 1.0)], config, "stroke", 1.0)
    with pytest.raises(DataFormatError, match=r"int64 subject_id; 1 id\(s\) are not 64-bit integers written plainly.*'p1'"):
        make_labels([_record("p1", [0.0], 3.0)], config, "death", 1.0)


def test_a_task_folder_round_trips_and_bad_folders_are_named(tmp_path, config):
    task = make_task([_record("1", [0.0, 1.0], 4.0, [(2.5, "death")])], config, "death", 2.0, "death_2y")
    write_task(task, tmp_path / "task")
    back = read_task(tmp_path / "task")
    assert back.spec == task.spec
    pd.testing.assert_frame_equal(back.labels, task.labels)
    assert back.labels["boolean_value"].tolist() == [False, True]

    with pytest.raises(DatasetNotFoundError, match="no task 'nowhere'"):
        load_task("nowhere")
    (tmp_path / "task" / "task.json").write_text('{"name": "x", "event": "death", "window": -1, "time_unit": "years"}')
    with pytest.raises(DataFormatError, match=r"task.json: not a task spec: window: Input should be greater than 0"):
        read_task(tmp_path / "task")
    write_task(task, tmp_path / "task")
    pq.write_table(
        pq.read_table(tmp_path / "task" / "labels.parquet").drop(["boolean_value"]), tmp_path / "task" / "labels.parquet"
    )
    with pytest.raises(DataFormatError, match=r"labels\.parquet: no boolean_value column"):
        read_task(tmp_path / "task")
    pq.write_table(
        pq.read_table(tmp_path / "task" / "labels.parquet").drop(["prediction_time"]), tmp_path / "task" / "labels.parquet"
    )
    with pytest.raises(DataFormatError, match=r"labels\.parquet: not a MEDS label table"):
        read_task(tmp_path / "task")


def test_label_rows_without_a_label_or_a_time_are_refused(tmp_path):
    """A label table written from pandas (nanosecond times, so meds' schema casts it and checks no nulls) with a
    row whose boolean_value or prediction_time is null: that row asks nothing, and is refused, not predicted."""
    times = pd.to_datetime(["2020-01-01", "2020-06-01", "2021-01-01"])
    labels = pd.DataFrame({"subject_id": [1, 1, 2], "prediction_time": times, "boolean_value": [True, None, False]})
    labels.to_parquet(tmp_path / "labels.parquet")
    with pytest.raises(DataFormatError, match=r"labels\.parquet: 1 label row\(s\) have no boolean_value \(rows 1\)"):
        read_labels(tmp_path / "labels.parquet")
    labels = labels.assign(boolean_value=[True, False, False], prediction_time=[times[0], pd.NaT, times[2]])
    labels.to_parquet(tmp_path / "labels.parquet")
    with pytest.raises(DataFormatError, match=r"1 label row\(s\) have no prediction_time \(rows 1\)"):
        read_labels(tmp_path / "labels.parquet")


def test_the_embedded_pbc_task_is_what_make_labels_makes():
    cohort = load_dataset("pbc2")
    task = load_task("pbc2-death_2y")
    assert (task.spec.name, task.spec.event, task.spec.window, task.spec.time_unit.value) == ("death_2y", "death", 2.0, "years")
    pd.testing.assert_frame_equal(task.labels, make_labels(cohort.records, cohort.config, "death", 2.0))
    assert (len(task.labels), task.n_positive, task.labels["subject_id"].nunique()) == (1754, 265, 311)


def test_labels_of_a_meds_copy_are_the_labels_of_the_records(tmp_path):
    """A label table made from PBC's records joins the MEDS data vpatient writes of them (one calendar convention)."""
    from vpatient.data.meds import read_meds, write_meds

    cohort = load_dataset("pbc2")
    records = cohort.records[:6]
    copy = read_meds(write_meds(records, cohort.config, tmp_path / "meds"), cohort.config)
    pd.testing.assert_frame_equal(
        make_labels(copy, cohort.config, "death", 2.0), make_labels(records, cohort.config, "death", 2.0)
    )


# --------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def pbc():
    return load_dataset("pbc2")


@pytest.fixture(scope="module")
def model(untrained_model_dir) -> VirtualPatientModel:
    vpm = VirtualPatientModel.load(untrained_model_dir)
    vpm.refine_steps = 3  # the amortised posterior and a few refinement steps: the test is of the plumbing, not the fit
    return vpm


def _small_task(pbc, ids=("1", "2", "5", "6")) -> tuple[list[PatientRecord], Task]:
    records = [pbc.subject(s) for s in ids]
    return records, make_task(records, pbc.config, "death", 2.0, "death_2y")


def test_predictions_are_meds_evaluation_input(pbc, model, tmp_path):
    records, task = _small_task(pbc)
    predictions = predict(model, records, task, n_samples=8, seed=3)
    assert list(predictions.columns) == PREDICTION_COLUMNS
    pd.testing.assert_frame_equal(predictions[task.labels.columns], task.labels)
    p = predictions["predicted_boolean_probability"].to_numpy()
    assert ((p >= 0) & (p <= 1)).all() and np.unique(p).size > 1
    assert (predictions["predicted_boolean_value"] == (p >= 0.5)).all()
    PredictionSchema.validate(prediction_table(predictions))
    path = write_predictions(predictions, tmp_path / "preds.parquet")
    scores = evaluate_binary_classification(pl.read_parquet(path), samples_per_subject=2, resampling_seed=0)
    auroc = scores["samples_equally_weighted"]["roc_auc_score"]
    assert 0.0 <= auroc <= 1.0
    # the same seed gives the same numbers
    again = predict(model, records, task, n_samples=8, seed=3)
    pd.testing.assert_frame_equal(again, predictions)


def test_predict_sees_only_the_data_up_to_the_prediction_time(pbc, model):
    records, task = _small_task(pbc, ids=("2",))
    cut = task.labels.iloc[:2]  # subject 2's first two visits
    last = from_timestamps(records[0], cut["prediction_time"].to_numpy(), pbc.config.time_unit).max()
    original = records[0]
    # later data changed wholesale: later labs tenfold, an extra visit, a death soon after, follow-up ending there
    later = [o.model_copy(update={"value": o.value * 10}) if o.time > last else o for o in original.observations]
    extra = original.observations[0].model_copy(update={"time": last + 0.01})
    changed = original.model_copy(
        update={
            "observations": [*later, extra],
            "events": [Event(time=last + 0.02, kind="death")],
            "end_of_followup": last + 0.02,
        }
    )
    task_cut = Task(task.spec, cut)
    before = predict(model, [original], task_cut, n_samples=8)
    after = predict(model, [changed], task_cut, n_samples=8)
    pd.testing.assert_frame_equal(before, after)
    # and the data before the prediction time do count: the same row with higher earlier bilirubin is another answer
    earlier = [o.model_copy(update={"value": o.value * 10}) if o.variable == "bilirubin" else o for o in original.observations]
    sicker = predict(model, [original.model_copy(update={"observations": earlier})], task_cut, n_samples=8)
    assert not np.allclose(sicker["predicted_boolean_probability"], before["predicted_boolean_probability"])


def test_rows_that_cannot_be_predicted_are_refused_together(pbc, model):
    records, task = _small_task(pbc, ids=("1", "2"))
    labels = task.labels.copy()
    labels.loc[0, "subject_id"] = 999_999
    labels.loc[1, "prediction_time"] = pd.Timestamp(RELATIVE_EPOCH) - pd.Timedelta(days=30)
    late = labels.index[-1]
    labels.loc[late, "prediction_time"] = pd.Timestamp(RELATIVE_EPOCH) + 40 * pd.Timedelta(days=365.25)
    with pytest.raises(RecordValidationError) as caught:
        predict(model, records, Task(task.spec, labels), n_samples=8)
    text = str(caught.value)
    assert text.startswith("task death_2y: label rows that cannot be predicted from the data: 3 error(s)")
    assert "subject 999999: subject_id = 999999: not in the data (1 label row(s))" in text
    assert "before the subject's index" in text
    assert "after the subject's follow-up ends" in text
    # subject 1 died at 1.09 years: a row at its death is no longer at risk
    death = pd.Timestamp(RELATIVE_EPOCH) + pd.Timedelta(days=365.25 * records[0].events[0].time)
    at_death = pd.DataFrame({"subject_id": [1], "prediction_time": [death.as_unit("us")], "boolean_value": [True]})
    with pytest.raises(RecordValidationError, match="at or after the subject's death"):
        predict(model, records, Task(task.spec, at_death), n_samples=8)


def test_labels_and_predictions_take_ids_as_the_meds_export_writes_them(pbc, model):
    """vpatient's MEDS export numbers ids such as 002 afresh (0, 1, ...), so a label of 002 as subject 2 would name
    another subject there: such ids make no labels, and a label of subject 2 does not answer for record 002."""
    for sid in ("002", "+5"):
        with pytest.raises(DataFormatError, match=re.escape(f"without sign or leading zeros (e.g. '{sid}')")):
            make_labels([_record(sid, [0.0], 3.0)], pbc.config, "death", 1.0)
    records, task = _small_task(pbc, ids=("2",))
    renamed = records[0].model_copy(update={"subject_id": "002"})
    with pytest.raises(RecordValidationError, match=r"subject_id = 2: not in the data"):
        predict(model, [renamed], task, n_samples=2)


def test_a_task_the_model_cannot_answer_is_refused(pbc, model):
    records, task = _small_task(pbc, ids=("2",))
    other_event = Task(TaskSpec(name="stroke_1y", event="stroke", window=1.0, time_unit="years"), task.labels)
    with pytest.raises(ConfigError, match="the model does not predict event 'stroke'; the events it predicts: death, transplant"):
        predict(model, records, other_event)
    in_days = Task(TaskSpec.model_validate({**task.spec.model_dump(), "time_unit": "days"}), task.labels)
    with pytest.raises(ConfigError, match="its window is in days but the model's time unit is years"):
        predict(model, records, in_days)


# --------------------------------------------------------------------------- command line


def _vp(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the command line in this process as the console script runs it: (exit code, stdout, stderr)."""
    from vpatient.cli import run

    monkeypatch.setattr(sys, "argv", ["vpatient", *args])
    with pytest.raises(SystemExit) as done:
        run()
    out = capsys.readouterr()
    return int(done.value.code or 0), out.out, out.err


def test_task_make_and_predict_end_to_end(tmp_path, pbc, untrained_model_dir, monkeypatch, capsys):
    from vpatient.data.meds import write_meds

    data = write_meds([pbc.subject(s) for s in ("1", "2", "5")], pbc.config, tmp_path / "meds")
    task = tmp_path / "task"
    code, out, err = _vp(
        monkeypatch,
        capsys,
        "task",
        "make",
        "--data",
        str(data),
        "--event",
        "death",
        "--window",
        "2",
        "--name",
        "death_2y",
        "--out",
        str(task),
    )
    assert code == 0, err
    assert "task death_2y: death within 2 years; 15 label rows of 3 subjects, 2 positive" in out
    preds = tmp_path / "preds.parquet"
    args = ["predict", "--model", str(untrained_model_dir), "--data", str(data), "--n-samples", "4", "--no-progress"]
    code, out, err = _vp(monkeypatch, capsys, *args, "--task", str(task), "--out", str(preds))
    assert code == 0, err
    predictions = pl.read_parquet(preds)
    assert predictions.columns == PREDICTION_COLUMNS
    assert len(predictions) == 15
    scores = evaluate_binary_classification(predictions, samples_per_subject=1)
    assert 0.0 <= scores["samples_equally_weighted"]["roc_auc_score"] <= 1.0

    # the embedded PBC task's subjects are not all in this three-subject dataset: a message, nothing written
    code, out, err = _vp(monkeypatch, capsys, *args, "--task", "pbc2-death_2y", "--out", str(tmp_path / "y.parquet"))
    assert code == 1 and "subject 3: subject_id = 3: not in the data" in err and "Traceback" not in err
    assert not (tmp_path / "y.parquet").exists()


# --------------------------------------------------------------------------- the meds-eval benchmark


def test_meds_eval_benchmark_scores_both_methods_on_the_same_rows(pbc, tmp_path):
    from vpatient.benchmarks.meds_eval import (
        COX,
        VPATIENT,
        MedsEvalSettings,
        landmark_risks,
        meds_scores,
        run_meds_eval_benchmark,
    )
    from vpatient.benchmarks.registry import load_result
    from vpatient.data.cohort import Cohort
    from vpatient.evaluate.baselines import LandmarkCox
    from vpatient.predict import label_histories
    from vpatient.train import TrainSettings

    cohort = Cohort(name="pbc-small", records=pbc.records[:24], config=pbc.config)
    full = make_task(cohort.records, cohort.config, "death", 2.0, "death_2y")
    task = Task(full.spec, full.labels.groupby("subject_id").head(2).reset_index(drop=True))  # two visits each: fast
    settings = MedsEvalSettings(
        n_folds=2, n_samples=4, n_bootstrap=5, cache_dir=None, train_settings=TrainSettings(epochs=2), progress=False
    )
    result, predictions = run_meds_eval_benchmark(cohort, task, settings)
    assert (result.n_rows, result.n_positive, result.n_subjects) == (len(task.labels), task.n_positive, 24)
    for method in (VPATIENT, COX):
        frame = predictions[method]
        pd.testing.assert_frame_equal(frame[task.labels.columns], task.labels)  # the same label rows, in order
        assert frame["predicted_boolean_probability"].notna().all()
        scored = next(m for m in result.methods if m.method == method)
        expected = meds_scores(frame, result.samples_per_subject, result.seed)
        assert scored.samples_equally_weighted["roc_auc_score"].value == expected["samples_equally_weighted"]["roc_auc_score"]
        interval = scored.samples_equally_weighted["roc_auc_score"]
        assert 0.0 <= interval.low <= interval.high <= 1.0
    auroc = {m.method: m.samples_equally_weighted["roc_auc_score"].value for m in result.methods}
    assert result.auroc_difference.value == pytest.approx(auroc[VPATIENT] - auroc[COX])

    # the Cox column is LandmarkCox's risk at each row's own landmark (here: every row of one fold, one model)
    histories, times = label_histories(cohort.records, task.labels, cohort.config.time_unit, "death")
    cox = LandmarkCox().fit(cohort.records, cohort.config, 0)
    risks = landmark_risks(cox, histories, times, 2.0, "death")
    first = times == times[0]
    direct = cox.risk([h for h, f in zip(histories, first, strict=True) if f], float(times[0]), [2.0], "death")
    np.testing.assert_allclose(risks[first], direct["risk"].to_numpy())

    paths = result.write(tmp_path, predictions=predictions)
    assert {p.name for p in paths} == {
        "meds-eval-pbc-small-death_2y.json", "meds-eval-pbc-small-death_2y.md",
        "meds-eval-pbc-small-death_2y-vpatient.parquet", "meds-eval-pbc-small-death_2y-landmark-cox.parquet",
    }  # fmt: skip
    assert load_result(tmp_path / "meds-eval-pbc-small-death_2y.json") == result
    assert "AUROC difference vpatient - landmark-cox" in (tmp_path / "meds-eval-pbc-small-death_2y.md").read_text()
    PredictionSchema.validate(pq.read_table(tmp_path / "meds-eval-pbc-small-death_2y-vpatient.parquet"))
