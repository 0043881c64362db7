"""Standard MEDS: what vpatient writes passes the ``meds`` package's schemas, round trips stay lossless, the
numeric-time extension is opt-in, ``vpatient validate`` reports departures, and other tools' MEDS reads."""

from __future__ import annotations

import dataclasses
import json
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import meds
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from vpatient.cli import app
from vpatient.data.meds import MEDS_VERSION, iter_meds, meds_schema_problems, read_layout, read_meds, write_meds
from vpatient.data.meds.codes import MICROS_PER_DAY, NUMERIC_TIME_EXTENSION, MedsLayout
from vpatient.data.synthetic import synthetic_cohort
from vpatient.datasets import load_pbc2
from vpatient.errors import DataFormatError, RecordValidationError
from vpatient.schemas import RELATIVE_EPOCH, DatasetConfig, Event, Observation, PatientRecord, TimeUnit, TreatmentExposure
from vpatient.validation import validate_path
from vpatient.version import __version__

#: How far a relative time may move when a tool drops ``time_f64`` and only the microsecond timestamp is
#: left: half a microsecond (rounding), plus a twentieth for the float product t * microseconds-per-unit.
#: In years: 1.7e-14 (measured on PBC: at most 1.6e-14).
TIME_TOLERANCE_YEARS = 0.55 / (MICROS_PER_DAY * TimeUnit.YEARS.days)


@pytest.fixture(scope="module")
def pbc():
    return load_pbc2()


@pytest.fixture(scope="module")
def imaging():
    """Synthetic subjects with CT embeddings and str ids ("syn00000"), a third in each split."""
    cohort = synthetic_cohort(n=12, seed=0, imaging_dim=3)
    splits = [meds.train_split, meds.tuning_split, meds.held_out_split]
    return dataclasses.replace(
        cohort, records=[r.model_copy(update={"split": splits[i % 3]}) for i, r in enumerate(cohort.records)]
    )


def _shards(root: Path) -> list[Path]:
    return sorted((root / meds.data_subdirectory).rglob("*.parquet"))


def _assert_standard(root: Path) -> dict:
    """Every file of ``root`` passes its ``meds`` schema; returns dataset.json."""
    for shard in _shards(root):
        meds.DataSchema.validate(pq.read_table(shard))
    meds.CodeMetadataSchema.validate(pq.read_table(root / meds.code_metadata_filepath))
    if (root / meds.subject_splits_filepath).exists():
        meds.SubjectSplitSchema.validate(pq.read_table(root / meds.subject_splits_filepath))
    dataset = json.loads((root / meds.dataset_metadata_filepath).read_text())
    meds.DatasetMetadataSchema.validate(dataset)
    assert meds_schema_problems(root) == []
    return dataset


def _same(back: list[PatientRecord], records: list[PatientRecord], config: DatasetConfig) -> None:
    want = {r.subject_id: r.in_canonical_order(config) for r in records}
    assert {r.subject_id: r for r in back} == want  # floats compare exactly


# --------------------------------------------------------------------------- vpatient writes standard MEDS


def test_pbc_is_standard_meds_and_round_trips_bit_for_bit(pbc, tmp_path):
    out = write_meds(pbc.records, pbc.config, tmp_path / "pbc")
    dataset = _assert_standard(out)
    assert dataset["etl_name"] == "vpatient" and dataset["etl_version"] == __version__
    assert dataset["meds_version"] == MEDS_VERSION == meds.__version__ and dataset["dataset_name"] == "pbc2"
    assert dataset["dataset_version"] and datetime.fromisoformat(dataset["created_at"]).tzinfo is not None
    assert dataset["other_extension_columns"] == ["numeric_value_f64", "time_f64"]
    assert dataset["raw_source_id_columns"] == []
    assert read_layout(out) == MedsLayout(relative=True, time_unit=pbc.config.time_unit)
    data = pd.read_parquet(out / "data")
    birth = data[data["code"] == meds.birth_code].iloc[0]
    age = pbc.records[0].static["age"]
    assert abs((RELATIVE_EPOCH - birth["time"].to_pydatetime()) / timedelta(days=365.25) - age) < 1e-9
    back = read_meds(out)
    assert all(r.index_time is None for r in back)
    _same(back, pbc.records, pbc.config)


def test_synthetic_with_imaging_str_ids_and_splits(imaging, tmp_path):
    out = write_meds(imaging.records, imaging.config, tmp_path / "syn", subjects_per_shard=2)
    dataset = _assert_standard(out)
    assert dataset["raw_source_id_columns"] == ["source_subject_id"]
    data = pd.read_parquet(out / "data")
    assert data["subject_id"].dtype == np.int64
    assert sorted(data["source_subject_id"].unique()) == sorted(r.subject_id for r in imaging.records)
    splits = pq.read_table(out / meds.subject_splits_filepath).to_pandas()
    assert sorted(splits["subject_id"]) == list(range(12))  # numbered 0.. in id order, as the data are
    back = read_meds(out)
    _same(back, imaging.records, imaging.config)
    assert [r.split for r in back] == [r.split for r in sorted(imaging.records, key=lambda r: r.subject_id)]
    assert back[0].imaging and len(back[0].imaging[0].embedding) == 3
    streamed = sorted(iter_meds(out, batch_size=50), key=lambda r: r.subject_id)  # shard by shard
    assert streamed == back  # streaming maps ids and splits back too
    alone = _shards(out)[0]  # a shard on its own carries its layout: ids, times and values come back exact
    assert read_layout(alone) == read_layout(out)
    in_shard = set(pq.read_table(alone, columns=["source_subject_id"])["source_subject_id"].to_pylist())
    want = [r.model_copy(update={"split": None}) for r in back if r.subject_id in in_shard]
    assert read_meds(alone, imaging.config) == want == list(iter_meds(alone, imaging.config, batch_size=9))


def test_calendar_records_keep_timestamps_and_no_time_extension(tmp_path, config, record_data):
    record = PatientRecord.model_validate({**record_data, "index_time": datetime(2015, 6, 1, 8, 30)}, context={"config": config})
    out = write_meds([record], config, tmp_path / "stamped")
    dataset = _assert_standard(out)
    assert dataset["other_extension_columns"] == ["numeric_value_f64"] and dataset["vpatient"]["relative_time"] is False
    (back,) = read_meds(out, config)
    assert back.index_time == datetime(2015, 6, 1, 8, 30)
    assert back.observations == record.in_canonical_order(config).observations  # these times are whole microseconds


def test_dropping_the_extension_columns_leaves_values_to_float32_and_times_to_the_microsecond(pbc, tmp_path):
    """What another tool keeps if it drops vpatient's columns: the measured round-trip error and its tolerance."""
    out = write_meds(pbc.records, pbc.config, tmp_path / "pbc")
    for shard in _shards(out):
        table = pq.read_table(shard)
        pq.write_table(table.drop_columns(["numeric_value_f64", "time_f64"]), shard)
    back = {r.subject_id: r for r in read_meds(out)}
    worst_time, worst_value = 0.0, 0.0
    for record in pbc.records:
        got = back[record.subject_id]
        want = record.in_canonical_order(pbc.config)
        times = np.array([o.time for o in got.observations]) - [o.time for o in want.observations]
        values = np.array([o.value for o in got.observations]) - [float(np.float32(o.value)) for o in want.observations]
        worst_time = max(worst_time, float(np.abs(times).max(initial=0.0)), abs(got.end_of_followup - want.end_of_followup))
        worst_value = max(worst_value, float(np.abs(values).max(initial=0.0)))
    assert 0 < worst_time <= TIME_TOLERANCE_YEARS
    assert worst_value == 0.0  # numeric_value is each value's float32, read exactly


def test_values_beyond_float32_survive(config, record_data, tmp_path):
    embedding = [1e39, -1e300, 1e-300, 0.1]  # float32: inf, -inf, 0, 0.1 rounded
    data = {**record_data, "imaging": [{"time": 0.5, "modality": "ct", "embedding": embedding}]}
    record = PatientRecord.model_validate(data, context={"config": config})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings either
        out = write_meds([record], config, tmp_path / "big")
        (back,) = read_meds(out, config)
    assert back.imaging[0].embedding == embedding


def test_a_value_another_tool_changed_is_read_as_changed(pbc, tmp_path):
    out = write_meds(pbc.records[:3], pbc.config, tmp_path / "pbc")
    (shard,) = _shards(out)
    frame = pq.read_table(shard).to_pandas()
    row = frame.index[(frame["code"] == "LAB//BILIRUBIN") & frame["numeric_value_f64"].notna()][0]
    old = frame.loc[row, "numeric_value_f64"]
    frame.loc[row, "numeric_value"] = 9.5  # the float64 beside it is stale now
    pq.write_table(pa.Table.from_pandas(frame, schema=pq.read_schema(shard), preserve_index=False), shard)
    record = {r.subject_id: r for r in read_meds(out)}[str(frame.loc[row, "subject_id"])]
    bilirubin = [o.value for o in record.observations if o.variable == "bilirubin"]
    assert 9.5 in bilirubin and old not in bilirubin


# --------------------------------------------------------------------------- the numeric-time extension


def test_numeric_time_extension_only_when_asked(imaging, tmp_path):
    out = write_meds(imaging.records, imaging.config, tmp_path / "ext", standard=False)
    schema = pq.read_schema(_shards(out)[0])
    assert (schema.field("subject_id").type, schema.field("time").type, schema.field("numeric_value").type) == (
        pa.string(),
        pa.float64(),
        pa.float64(),
    )
    dataset = json.loads((out / meds.dataset_metadata_filepath).read_text())
    assert dataset["vpatient"]["layout"] == NUMERIC_TIME_EXTENSION and dataset["other_extension_columns"] == []
    _same(read_meds(out), imaging.records, imaging.config)
    report = validate_path(out, None)
    assert report.ok and report.warnings  # departs from MEDS by design: warned, still loads
    assert any(p.field == "numeric_value" and "expects type float, found double" in p.message for p in report.warnings)


def test_directories_written_before_standard_meds_still_load(pbc, tmp_path):
    out = write_meds(pbc.records[:20], pbc.config, tmp_path / "old", standard=False)
    old = {"dataset_name": "pbc2", "dataset_version": "", "etl_name": "vpatient", "etl_version": "0.1.0"}
    (out / meds.dataset_metadata_filepath).write_text(json.dumps({**old, "meds_version": "0.3.3", "extension_columns": []}))
    assert read_layout(out) is None
    _same(read_meds(out), pbc.records[:20], pbc.config)
    report = validate_path(out, None)
    assert report.ok and {p.field for p in report.warnings} >= {"time", "numeric_value"}


def test_cli_export_writes_standard_meds_unless_the_extension_is_asked_for(tmp_path):
    runner = CliRunner()
    standard = runner.invoke(app, ["datasets", "export", "synthetic", str(tmp_path / "s"), "--n", "6"])
    assert standard.exit_code == 0, standard.output
    assert "as standard MEDS" in standard.output
    _assert_standard(tmp_path / "s")
    extended = ["datasets", "export", "synthetic", str(tmp_path / "x"), "--n", "6", "--meds-extension", "numeric-time"]
    result = runner.invoke(app, extended)
    assert result.exit_code == 0 and "not standard MEDS" in result.output
    layout = read_layout(tmp_path / "x")
    assert layout is not None and not layout.standard and layout.relative
    wrong = runner.invoke(app, ["datasets", "export", "synthetic", str(tmp_path / "y"), "--meds-extension", "floaty"])
    assert wrong.exit_code == 2 and "numeric-time" in wrong.output and not (tmp_path / "y").exists()


# --------------------------------------------------------------------------- validate


def test_validate_names_file_column_and_types_of_non_standard_meds(config, tmp_path):
    root = tmp_path / "foreign"
    (root / "data").mkdir(parents=True)
    frame = pd.DataFrame(
        {
            "subject_id": ["a1", "a1", "a1"],
            "time": [-60.0, 0.0, 2.0],
            "code": ["MEDS_BIRTH", "LAB//BILI", "VPATIENT_END_OF_FOLLOWUP"],
            "numeric_value": [None, 1.0, None],
        }
    )
    frame.to_parquet(root / "data" / "0.parquet", index=False)
    (root / "metadata").mkdir()
    (root / meds.dataset_metadata_filepath).write_text(json.dumps({"dataset_name": 7}))
    config_path = tmp_path / "config.json"
    config.save(config_path)
    report = validate_path(root, config_path)
    assert report.ok  # vpatient reads it; other MEDS tools may not, hence the warnings
    shard = str(root / "data" / "0.parquet")
    found = {(p.owner, p.field): p.message for p in report.warnings}
    assert found[(shard, "subject_id")] == "meds.DataSchema expects type int64, found string"
    assert found[(shard, "time")] == "meds.DataSchema expects type timestamp[us], found double"
    assert found[(shard, "numeric_value")] == "meds.DataSchema expects type float, found double"
    dataset_problem = found[(str(root / meds.dataset_metadata_filepath), "dataset_name")]
    assert "does not fit meds.DatasetMetadataSchema" in dataset_problem and "7 is not of type 'string'" in dataset_problem
    result = CliRunner().invoke(app, ["validate", str(root), "--config", str(config_path)])
    assert result.exit_code == 0 and "Traceback" not in result.output
    assert f"warning: {shard}: numeric_value = 'double': meds.DataSchema expects type float, found double" in result.output


def test_a_standard_directory_changed_since_is_invalid(pbc, tmp_path):
    out = write_meds(pbc.records[:4], pbc.config, tmp_path / "pbc")
    (shard,) = _shards(out)
    table = pq.read_table(shard)
    pq.write_table(table.set_column(3, "numeric_value", table["numeric_value"].cast(pa.float64())), shard)
    report = validate_path(out, None)
    (problem,) = report.errors
    assert (problem.owner, problem.field, problem.value) == (str(shard), "numeric_value", "double")


# --------------------------------------------------------------------------- MEDS written by other tools


CLINIC = DatasetConfig.model_validate(
    {
        "name": "clinic",
        "time_unit": "days",
        "variables": [
            {"name": "age", "codes": ["MEDS_BIRTH"], "kind": "static"},
            {"name": "sex", "codes": ["GENDER"], "kind": "static", "categories": {"F": 0, "M": 1}},
            {"name": "creatinine", "codes": ["LOINC/2160-0"], "kind": "continuous", "unit": "mg/dL"},
            {"name": "hba1c", "codes": ["LOINC/4548-4"], "kind": "continuous", "unit": "%"},
            {
                "name": "metformin",
                "codes": ["RXNORM/6809"],
                "kind": "treatment",
                "encoding": "per_visit_dose",
                "plausible_range": [0, 3000],
            },
            {"name": "death", "codes": ["MEDS_DEATH"], "kind": "event"},
        ],
    }
)


def _other_tools_meds(root: Path, extra_columns: bool) -> Path:
    """A MEDS dataset as another ETL writes it: tables aligned with the ``meds`` schemas, no vpatient metadata."""
    day = datetime(2021, 3, 1, 9, 0)
    rows = [  # (subject, time, code, value, text, unit)
        (101, None, "GENDER", None, "F", None),
        (101, datetime(1960, 5, 17), meds.birth_code, None, None, None),
        (101, day, "LOINC/2160-0", 1.1, None, "mg/dL"),
        (101, day, "LOINC/4548-4", 7.5, None, "%"),
        (101, day, "RXNORM/6809", 500.0, None, "mg"),
        (101, day + timedelta(days=90), "LOINC/2160-0", 1.25, None, "mg/dL"),
        (101, day + timedelta(days=90), "RXNORM/6809", 0.0, None, "mg"),
        (101, day + timedelta(days=200), meds.death_code, None, None, None),
        (205, None, "GENDER", None, "M", None),
        (205, datetime(1971, 1, 2), meds.birth_code, None, None, None),
        (205, day + timedelta(days=3), "LOINC/2160-0", 0.9, None, "mg/dL"),
        (205, day + timedelta(days=33), "LOINC/4548-4", 6.25, None, "%"),
    ]
    names = ["subject_id", "time", "code", "numeric_value", "text_value", "unit"]
    columns = {name: [row[i] for row in rows] for i, name in enumerate(names)}
    if not extra_columns:
        del columns["unit"]
    else:
        columns["site_id"] = ["north" if row[0] == 101 else "south" for row in rows]
    data = meds.DataSchema.align(pa.Table.from_pydict(columns))
    (root / meds.data_subdirectory).mkdir(parents=True)
    pq.write_table(data, root / meds.data_subdirectory / "0.parquet")
    (root / "metadata").mkdir()
    codes = {
        "code": ["LOINC/2160-0", "LOINC/4548-4", "RXNORM/6809", "GENDER", meds.birth_code, meds.death_code],
        "description": ["Creatinine", "HbA1c", "metformin", "gender", "birth", "death"],
        "parent_codes": [["LOINC/LP14355-9"], None, None, None, None, None],
    }
    pq.write_table(meds.CodeMetadataSchema.align(pa.Table.from_pydict(codes)), root / meds.code_metadata_filepath)
    splits = {"subject_id": [101, 205], "split": [meds.train_split, meds.held_out_split]}
    pq.write_table(meds.SubjectSplitSchema.align(pa.Table.from_pydict(splits)), root / meds.subject_splits_filepath)
    dataset = {
        "dataset_name": "clinic",
        "dataset_version": "2024.1",
        "etl_name": "clinic_etl",
        "etl_version": "3.2",
        "meds_version": meds.__version__,
        "created_at": datetime(2024, 5, 1, tzinfo=UTC).isoformat(),
        "code_modifier_columns": ["unit"] if extra_columns else [],
        "site_id_columns": ["site_id"] if extra_columns else [],
    }
    meds.DatasetMetadataSchema.validate(dataset)
    (root / meds.dataset_metadata_filepath).write_text(json.dumps(dataset))
    return root


@pytest.mark.parametrize("extra_columns", [False, True], ids=["core", "with-unit-and-site"])
def test_reads_meds_written_by_another_tool(tmp_path, extra_columns):
    root = _other_tools_meds(tmp_path / "clinic", extra_columns)
    assert meds_schema_problems(root) == [] and read_layout(root) is None
    one, two = read_meds(root, CLINIC)
    assert (one.subject_id, one.split, two.subject_id, two.split) == ("101", "train", "205", "held_out")
    assert one.index_time == datetime(2021, 3, 1, 9, 0)  # the first timed row that is not birth
    assert one.static == {"sex": 0.0, "age": (datetime(2021, 3, 1, 9, 0) - datetime(1960, 5, 17)) / timedelta(days=1)}
    # numeric_value is float32 in MEDS: vpatient reads each value as the file holds it
    assert one.observations == [
        Observation(time=0.0, variable="creatinine", value=float(np.float32(1.1))),
        Observation(time=0.0, variable="hba1c", value=7.5),
        Observation(time=90.0, variable="creatinine", value=1.25),
    ]
    assert one.treatments == [TreatmentExposure(treatment="metformin", start=0.0, stop=90.0, dose=500.0)]
    assert one.events == [Event(time=200.0, kind="death")] and one.end_of_followup == 200.0
    assert two.index_time == datetime(2021, 3, 4, 9, 0) and two.end_of_followup == 30.0 and two.events == []
    assert validate_path(root, CLINIC).ok


def test_values_in_another_unit_are_converted_by_the_unit_column(tmp_path):
    """Another tool's creatinine in mg/L and g/L is read in the config's mg/dL, as FHIR is; a unit of another
    dimension (umol/L) is refused naming the code and both units, not read as if in mg/dL."""
    root = _other_tools_meds(tmp_path / "clinic", extra_columns=True)
    shard = root / meds.data_subdirectory / "0.parquet"
    table = pq.read_table(shard)
    creatinine = pc.equal(table["code"], "LOINC/2160-0").to_pylist()
    units = [
        "mg/L" if hit and i < 5 else ("g/L" if hit else u)
        for i, (hit, u) in enumerate(zip(creatinine, table["unit"].to_pylist(), strict=True))
    ]
    values = [
        v * (10 if u == "mg/L" else 1e-2 if u == "g/L" else 1) if v is not None else None
        for v, u in zip(table["numeric_value"].to_pylist(), units, strict=True)
    ]
    table = table.set_column(table.schema.get_field_index("unit"), "unit", pa.array(units, pa.string()))
    table = table.set_column(table.schema.get_field_index("numeric_value"), "numeric_value", pa.array(values, pa.float32()))
    pq.write_table(table, shard)
    one, two = read_meds(root, CLINIC)
    assert [o.value for o in one.observations if o.variable == "creatinine"] == pytest.approx([1.1, 1.25], rel=1e-6)
    assert [o.value for o in two.observations if o.variable == "creatinine"] == pytest.approx([0.9], rel=1e-6)
    assert [o.value for o in one.observations if o.variable == "hba1c"] == [7.5]  # "%" is the config's unit: kept

    blank = table.set_column(table.schema.get_field_index("unit"), "unit", pa.array(["" if u == "g/L" else u for u in units]))
    pq.write_table(blank, shard)  # an empty unit is no unit: the value is taken as in the variable's unit
    assert read_meds(root, CLINIC)[1].observations[0].value == pytest.approx(0.009, rel=1e-6)

    table = table.set_column(
        table.schema.get_field_index("unit"), "unit", pa.array([u if u != "mg/L" else "umol/L" for u in units])
    )
    pq.write_table(table, shard)
    with pytest.raises(RecordValidationError) as caught:
        read_meds(root, CLINIC)
    (problem,) = caught.value.problems
    assert problem.field == "observations.creatinine" and problem.value == "umol/L"
    assert "'LOINC/2160-0'" in problem.message and "molar mass" in problem.message


def test_damaged_standard_shards_are_refused_naming_the_file(pbc, tmp_path):
    out = write_meds(pbc.records[:2], pbc.config, tmp_path / "pbc")
    (shard,) = _shards(out)
    table = pq.read_table(shard)
    numbers = table.set_column(1, "time", pa.array(np.arange(len(table), dtype=np.float64)))
    pq.write_table(numbers, shard)
    with pytest.raises(DataFormatError, match=r"0\.parquet: time holds numbers, but metadata/dataset\.json says"):
        read_meds(out)
    far = pa.array(np.full(len(table), -(2**62), dtype=np.int64)).cast(pa.timestamp("us"))
    pq.write_table(table.set_column(1, "time", far), shard)
    with pytest.raises(DataFormatError, match=r"0\.parquet: time .* is outside the years 1 to 9999 \(row 1 \(subject 1\)"):
        read_meds(out)
