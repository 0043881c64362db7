"""MEDS reading and writing: lossless round trips, streaming, and problems reported in one pass."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vpatient.data.meds import (
    HELD_OUT_SPLIT,
    MEDS_BIRTH,
    MEDS_DEATH,
    START_SUFFIX,
    STOP_SUFFIX,
    TRAIN_SPLIT,
    TUNING_SPLIT,
    OutputExistsError,
    frame_to_records,
    iter_meds,
    load_config_for,
    read_meds,
    records_to_frame,
    write_meds,
)
from vpatient.errors import DataFormatError, Problem, RecordValidationError
from vpatient.schemas import DatasetConfig, PatientRecord, parse_record


@pytest.fixture()
def cfg(config: DatasetConfig) -> DatasetConfig:
    """The shared config with every variable kind (tests/conftest.py)."""
    return config


def _record(sid: int, rng: np.random.Generator, index_time: datetime | None = None, split: str | None = None) -> dict:
    """A record with every modality; values drawn so that float round trips are really tested."""
    record = {
        "subject_id": str(sid),
        "index_time": index_time,
        "split": split,
        "static": {"age": float(rng.uniform(30, 80)), "sex": float(sid % 2)},
        "observations": [
            {"time": 0.0, "variable": "bilirubin", "value": float(rng.lognormal())},
            {"time": 0.0, "variable": "ascites", "value": 1.0},
            {"time": 0.0, "variable": "stage", "value": 2.0},
            {"time": 1 / 3, "variable": "bilirubin", "value": float(rng.lognormal())},
            {"time": 1 / 3, "variable": "bilirubin", "value": float(rng.lognormal())},  # a repeat at one time
        ],
        "imaging": [{"time": 0.7, "modality": "ct", "embedding": rng.normal(size=4).tolist()}],
        "history": [{"time": -2.25, "code": "diabetes"}],
        "treatments": [
            {"treatment": "drug", "start": 0.0, "stop": 1.0, "dose": 0.5},
            {"treatment": "drug", "start": 1.0, "stop": None, "dose": 1.5},  # a dose change at one time
        ],
        "events": [{"time": 2.5, "kind": "transplant"}] + ([{"time": 3.1, "kind": "death"}] if sid % 2 else []),
        "end_of_followup": 3.1 if sid % 2 else 4.0 + float(rng.uniform()),
    }
    return record


def _records(cfg: DatasetConfig, n: int = 6, timestamps: bool = False, splits: bool = False) -> list[PatientRecord]:
    rng = np.random.default_rng(0)
    names = [TRAIN_SPLIT, TUNING_SPLIT, HELD_OUT_SPLIT]
    out = []
    for sid in range(1, n + 1):
        index_time = datetime(2001, 1, 1) + pd.Timedelta(days=37 * sid) if timestamps else None
        out.append(parse_record(_record(sid, rng, index_time, names[sid % 3] if splits else None), cfg))
    return out


def _canonical(records: list[PatientRecord], cfg: DatasetConfig) -> list[PatientRecord]:
    return sorted((r.in_canonical_order(cfg) for r in records), key=lambda r: int(r.subject_id))


def _row(sid: object, time: object, code: str, value: float | None = None, text: str | None = None) -> dict:
    return {"subject_id": sid, "time": time, "code": code, "numeric_value": value, "text_value": text}


def _base_rows(sid: object, end: float = 2.0) -> list[dict]:
    """Rows of a minimal valid subject (born 60 years before the index)."""
    return [
        _row(sid, -60.0, MEDS_BIRTH),
        _row(sid, None, "SEX", text="female"),
        _row(sid, 0.0, "LAB//BILI", 1.0),
        _row(sid, end, "VPATIENT_END_OF_FOLLOWUP"),
    ]


def _with(cfg: DatasetConfig, **changes: object) -> DatasetConfig:
    return DatasetConfig.model_validate({**cfg.model_dump(), **changes})


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows).astype({"time": "float64", "numeric_value": "float64"})


# --------------------------------------------------------------------------- round trips


def test_round_trip_numeric_times_is_bit_exact(cfg, tmp_path):
    records = _records(cfg, splits=True)
    out = write_meds(records, cfg, tmp_path / "meds")
    back = read_meds(out, cfg)
    assert back == _canonical(records, cfg)  # floats compare exactly
    assert [r.split for r in back] == [r.split for r in _canonical(records, cfg)]


def test_reader_emits_canonical_order_for_shuffled_rows(cfg):
    # Two values of one variable at one time keep their file order (nothing else orders
    # them), so a shuffled file is only comparable without such repeats.
    records = [r.model_copy(update={"observations": r.observations[:4]}) for r in _records(cfg)]
    frame = records_to_frame(records, cfg).sample(frac=1.0, random_state=1)
    back = frame_to_records(frame, cfg)
    assert back == _canonical(records, cfg)
    assert all(r == r.in_canonical_order(cfg) for r in back)


def test_timestamps_round_trip_to_identical_meds(cfg, tmp_path):
    records = _records(cfg, timestamps=True)
    first = write_meds(records, cfg, tmp_path / "a")
    back = read_meds(first, cfg)
    assert [r.index_time for r in back] == [r.index_time for r in records]
    for got, want in zip(back, _canonical(records, cfg), strict=True):
        assert got.end_of_followup == pytest.approx(want.end_of_followup, abs=1e-12)
        assert [o.time for o in got.observations] == pytest.approx([o.time for o in want.observations], abs=1e-12)
        assert got.static["age"] == pytest.approx(want.static["age"], abs=1e-12)
    second = write_meds(back, cfg, tmp_path / "b")
    meds_a, meds_b = pd.read_parquet(first / "data"), pd.read_parquet(second / "data")
    assert meds_a["time"].dtype == np.dtype("datetime64[us]")
    pd.testing.assert_frame_equal(meds_a, meds_b)


def test_birth_row_holds_age_at_index(cfg):
    records = _records(cfg, n=1)
    frame = records_to_frame(records, cfg)
    birth = frame[frame["code"] == MEDS_BIRTH]
    assert birth["time"].tolist() == [-records[0].static["age"]]
    assert math.isnan(birth["numeric_value"].iat[0])


def test_written_directory_is_self_describing(cfg, tmp_path):
    out = write_meds(_records(cfg, splits=True), cfg, tmp_path / "meds")
    assert sorted(p.relative_to(out).as_posix() for p in (out / "data").rglob("*.parquet")) == [
        "data/held_out/0.parquet",
        "data/train/0.parquet",
        "data/tuning/0.parquet",
    ]
    dataset = json.loads((out / "metadata" / "dataset.json").read_text())
    assert dataset["etl_name"] == "vpatient" and dataset["dataset_name"] == cfg.name and dataset["meds_version"]
    codes = pd.read_parquet(out / "metadata" / "codes.parquet")
    assert {"code", "description", "parent_codes"} <= set(codes.columns)
    assert {"IMG//CT//3", "RX//DRUG" + START_SUFFIX, "RX//DRUG" + STOP_SUFFIX, MEDS_DEATH} <= set(codes["code"])
    splits = pd.read_parquet(out / "metadata" / "subject_splits.parquet")
    assert splits["subject_id"].dtype == np.int64 and set(splits["split"]) == {TRAIN_SPLIT, TUNING_SPLIT, HELD_OUT_SPLIT}
    assert load_config_for(out) == cfg
    assert read_meds(out) == read_meds(out, cfg)  # the stored config is used when none is given


def test_no_splits_writes_flat_shards(cfg, tmp_path):
    out = write_meds(_records(cfg), cfg, tmp_path / "meds", subjects_per_shard=4)
    assert sorted(p.name for p in (out / "data").iterdir()) == ["0.parquet", "1.parquet"]
    assert not (out / "metadata" / "subject_splits.parquet").exists()
    assert load_config_for(tmp_path) is None


# --------------------------------------------------------------------------- sources


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_reads_single_files(cfg, tmp_path, suffix):
    records = _records(cfg)
    frame = records_to_frame(records, cfg)
    path = tmp_path / f"cohort.{suffix}"
    frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path, index=False)
    back = read_meds(path, cfg)
    if suffix == "parquet":
        assert back == _canonical(records, cfg)
    else:  # CSV stores floats as decimal text: equal to rounding, structure identical
        for got, want in zip(back, _canonical(records, cfg), strict=True):
            assert got.model_dump(exclude={"observations", "imaging", "static", "end_of_followup"}) == want.model_dump(
                exclude={"observations", "imaging", "static", "end_of_followup"}
            )
            assert [o.value for o in got.observations] == pytest.approx([o.value for o in want.observations])


def test_reads_csv_timestamps_and_string_ids(cfg, tmp_path):
    path = tmp_path / "stamped.csv"
    path.write_text(
        "subject_id,time,code,numeric_value,text_value\n"
        "a7,,SEX,,male\n"
        "a7,1950-07-02,MEDS_BIRTH,,\n"
        "a7,2000-07-02 00:00:00,LAB//BILI,1.5,\n"
        "a7,2001-07-02 06:00:00,LAB//BILI,1.7,\n"
    )
    (record,) = read_meds(path, cfg)
    assert record.subject_id == "a7" and record.index_time == datetime(2000, 7, 2)
    assert record.static == {"age": pytest.approx(50.0, abs=0.01), "sex": 1.0}
    assert [o.time for o in record.observations] == [0.0, 1.0]  # 365.25 days = one year
    assert record.end_of_followup == 1.0  # the last timed row, with no end-of-follow-up row


def test_missing_required_column_is_named(cfg, tmp_path):
    path = tmp_path / "bad.csv"
    _frame(_base_rows(1)).drop(columns=["numeric_value"]).to_csv(path, index=False)
    with pytest.raises(DataFormatError, match="numeric_value"):
        read_meds(path, cfg)
    with pytest.raises(DataFormatError, match="numeric_value"):
        next(iter_meds(path, cfg))


# --------------------------------------------------------------------------- streaming


def test_iter_meds_equals_read_meds_with_subjects_spanning_batches(cfg, tmp_path):
    records = _records(cfg, n=7, splits=True)
    out = write_meds(records, cfg, tmp_path / "meds", subjects_per_shard=2)
    streamed = list(iter_meds(out, cfg, batch_size=5))  # ~25 rows a subject: every subject spans batches
    assert sorted(streamed, key=lambda r: int(r.subject_id)) == read_meds(out, cfg)
    single = tmp_path / "one.parquet"
    records_to_frame(records, cfg).to_parquet(single, index=False)
    csv = tmp_path / "one.csv"
    records_to_frame(records, cfg).to_csv(csv, index=False)
    assert list(iter_meds(single, cfg, batch_size=3)) == read_meds(single, cfg)
    assert list(iter_meds(csv, cfg, batch_size=4)) == read_meds(csv, cfg)


def test_iter_meds_refuses_non_contiguous_subject(cfg, tmp_path):
    path = tmp_path / "shuffled.parquet"
    _frame(_base_rows(1) + _base_rows(2) + [_row(1, 1.0, "LAB//BILI", 2.0)]).to_parquet(path)
    with pytest.raises(DataFormatError, match=r"subject '1'.*not contiguous.*read_meds"):
        list(iter_meds(path, cfg, batch_size=2))
    assert [r.subject_id for r in read_meds(path, cfg)] == ["1", "2"]


# --------------------------------------------------------------------------- problems


def test_unknown_codes_are_reported_once_with_counts(cfg):
    rows = _base_rows(1) + _base_rows(2)
    rows += [
        _row(1, 0.5, "LAB//XYZ", 1.0),
        _row(1, 0.6, "LAB//XYZ", 1.0),
        _row(2, 0.5, "LAB//XYZ", 2.0),
        _row(2, 0.5, "ODD", 1.0),
    ]
    with pytest.raises(RecordValidationError) as caught:
        frame_to_records(_frame(rows), cfg)
    unknown = [p for p in caught.value.problems if p.field == "code"]
    assert [(p.subject_id, p.value) for p in unknown] == [(None, "LAB//XYZ"), (None, "ODD")]
    assert "'LAB//XYZ': unknown code: 3 rows in 2 subjects (subjects 1, 2)" in str(caught.value)
    assert "'ODD': unknown code: 1 row in 1 subject (subject 2)" in str(caught.value)

    warned: list[Problem] = []
    records = frame_to_records(_frame(rows), _with(cfg, unknown_codes="warn"), warnings_out=warned)
    assert len(records) == 2 and [p.value for p in warned] == ["LAB//XYZ", "ODD"]
    assert len(frame_to_records(_frame(rows), _with(cfg, unknown_codes="ignore"))) == 2


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ([_row(5, 1.0, "LAB//BILI", None)], "observations.bilirubin", "'LAB//BILI' at time 1"),
        ([_row(5, 1.0, f"IMG//CT//{j}", 0.1) for j in range(3)], "imaging.ct", "dimension 4"),
        ([_row(5, 1.0, f"IMG//CT//{j}", 0.1) for j in range(5)], "imaging.ct", "beyond the dimension"),
        ([_row(5, 1.0, "RX//DRUG" + STOP_SUFFIX)], "treatments.drug", "no open START"),
        ([_row(5, None, "SEX", text="other")], "static.sex", "not a category"),
        ([_row(5, 1.0, "LAB//BILI", -1.0)], "observations[1].value", "log-transformed"),
    ],
)
def test_bad_rows_name_subject_and_field(cfg, extra, field, words):
    with pytest.raises(RecordValidationError) as caught:
        frame_to_records(_frame(_base_rows(5) + extra), cfg)
    (problem,) = caught.value.problems
    assert problem.subject_id == "5" and problem.field == field
    assert "subject 5" in str(caught.value) and field in str(caught.value) and words in str(caught.value)


def test_problems_of_all_subjects_in_one_error(cfg, tmp_path):
    rows = _base_rows(1) + _base_rows(2) + _base_rows(3)
    rows += [_row(1, 1.0, "LAB//BILI", None), _row(3, 1.0, "RX//DRUG" + STOP_SUFFIX), _row(3, 1.5, "STAGE", 7.0)]
    path = tmp_path / "bad.parquet"
    _frame(rows).to_parquet(path)
    with pytest.raises(RecordValidationError) as caught:
        read_meds(path, cfg)
    assert [(p.subject_id, p.field) for p in caught.value.problems] == [
        ("1", "observations.bilirubin"),
        ("3", "treatments.drug"),
        ("3", "observations[1].value"),
    ]


def test_index_code_marks_time_zero(cfg):
    cfg = _with(cfg, index_code="ENROL")
    paris = pd.Timestamp("2020-01-01 01:00", tz="Europe/Paris")  # midnight UTC
    rows = [
        _row("1", paris - pd.Timedelta(days=3), "ICD//E11"),
        _row("1", paris, "ENROL"),
        _row("1", paris + pd.Timedelta(days=365.25), "LAB//BILI", 1.0),
        _row("2", paris, "LAB//BILI", 1.0),  # no ENROL row
        _row("3", None, "SEX", text="male"),  # no timed row at all
    ]
    with pytest.raises(RecordValidationError) as caught:
        frame_to_records(pd.DataFrame(rows), cfg)
    assert [(p.subject_id, p.field) for p in caught.value.problems] == [("2", "index_time"), ("3", "end_of_followup")]
    (record,) = frame_to_records(pd.DataFrame(rows[:3]), cfg)
    assert record.index_time == datetime(2020, 1, 1)  # time zones become naive UTC
    assert record.history[0].time == pytest.approx(-3 / 365.25) and record.observations[0].time == 1.0


def test_iter_meds_reports_unknown_codes(cfg, tmp_path):
    path = tmp_path / "unknown.parquet"
    _frame([*_base_rows(1), _row(1, 0.5, "ODD"), *_base_rows(2), _row(2, 0.5, "ODD")]).to_parquet(path)
    with pytest.raises(RecordValidationError, match=r"'ODD'.*1 row in 1 subject"):
        list(iter_meds(path, cfg, batch_size=2))
    warned: list[Problem] = []
    assert len(list(iter_meds(path, _with(cfg, unknown_codes="warn"), batch_size=2, warnings_out=warned))) == 2
    assert [p.value for p in warned] == ["ODD"] and "2 rows in 2 subjects" in warned[0].message


def test_write_refuses_to_overwrite(cfg, tmp_path):
    out = write_meds(_records(cfg, n=2), cfg, tmp_path / "meds")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        write_meds(_records(cfg, n=3), cfg, out)
    assert len(read_meds(out, cfg)) == 2
    write_meds(_records(cfg, n=3), cfg, out, overwrite=True)
    assert len(read_meds(out, cfg)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meds"]  # no temporary folders left behind


def test_failed_write_leaves_nothing(cfg, tmp_path):
    records = _records(cfg, n=2, timestamps=True) + _records(cfg, n=3)[2:]  # calendar and relative times mixed
    with pytest.raises(DataFormatError, match="mix"):
        write_meds(records, cfg, tmp_path / "meds")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- shipped cohorts


def _cohort_round_trip(cohort, tmp_path: Path) -> None:
    out = write_meds(cohort.records, cohort.config, tmp_path / "meds")
    back = {r.subject_id: r for r in read_meds(out, cohort.config)}
    want = {r.subject_id: r.in_canonical_order(cohort.config) for r in cohort.records}
    assert back.keys() == want.keys()
    for sid, record in want.items():
        assert back[sid] == record, sid


def test_pbc2_round_trip(tmp_path):
    datasets = pytest.importorskip("vpatient.datasets")
    if not hasattr(datasets, "load_pbc2"):
        pytest.skip("vpatient.datasets.load_pbc2 not available")
    _cohort_round_trip(datasets.load_pbc2(), tmp_path)


def test_synthetic_round_trip(tmp_path):
    synthetic = pytest.importorskip("vpatient.data.synthetic")
    if not hasattr(synthetic, "synthetic_cohort"):
        pytest.skip("vpatient.data.synthetic.synthetic_cohort not available")
    _cohort_round_trip(synthetic.synthetic_cohort(n=30, seed=0), tmp_path)
