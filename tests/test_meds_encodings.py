"""MEDS encodings other than vpatient's own: ``PREFIX//VALUE`` statics and per-visit treatments."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from vpatient.data.meds import iter_meds, read_meds, write_meds
from vpatient.errors import ConfigError, RecordValidationError
from vpatient.schemas import DatasetConfig, TreatmentExposure
from vpatient.validation import validate_path

CONFIG = {
    "name": "encoded",
    "variables": [
        {"name": "sex", "codes": ["SEX"], "kind": "static", "encoding": "code_suffix", "categories": {"F": 0, "M": 1}},
        {"name": "educ", "codes": ["EDUC"], "kind": "static", "encoding": "code_suffix"},
        {"name": "bili", "codes": ["LAB//BILI"], "kind": "continuous"},
        {"name": "drug_a", "codes": ["DRUG_A"], "kind": "treatment", "encoding": "per_visit_indicator"},
        {"name": "drug_b", "codes": ["DRUG_B"], "kind": "treatment", "encoding": "per_visit_dose", "plausible_range": [0, 20]},
        {"name": "death", "codes": ["MEDS_DEATH"], "kind": "event"},
    ],
}


@pytest.fixture()
def cfg() -> DatasetConfig:
    return DatasetConfig.model_validate(CONFIG)


def _row(sid: int, time: float | None, code: str, value: float | None = None) -> dict:
    return {"subject_id": sid, "time": time, "code": code, "numeric_value": value}


def _rows() -> list[dict]:
    """Two subjects: sex and education as code suffixes, drug A as a visit indicator, drug B as a visit dose."""
    visits = [0.0, 0.5, 1.0, 1.5, 2.0]
    rows = [_row(1, None, "SEX//F"), _row(1, None, "EDUC//3"), _row(2, None, "SEX//M"), _row(2, None, "EDUC//1")]
    for t, a, b in zip(visits, [0, 1, 1, 0, 1], [5, 5, 10, 0, 0], strict=True):
        rows += [_row(1, t, "LAB//BILI", 1.0 + t), _row(1, t, "DRUG_A", a), _row(1, t, "DRUG_B", b)]
    for t, a in zip(visits[:3], [1, 1, 0], strict=True):
        rows += [_row(2, t, "LAB//BILI", 2.0), _row(2, t, "DRUG_A", a)]
    rows.append(_row(2, 1.2, "MEDS_DEATH"))
    return rows


def _meds_dir(rows: list[dict], path: Path) -> Path:
    """A MEDS directory of ``rows`` (one shard, grouped by subject as MEDS shards are), as another tool would write it."""
    (path / "data").mkdir(parents=True)
    frame = pd.DataFrame(rows).astype({"subject_id": "int64", "time": "float64", "numeric_value": "float64"})
    frame = frame.sort_values("subject_id", kind="stable")
    frame.to_parquet(path / "data" / "0.parquet", index=False)
    return path


def test_encodings_read_into_statics_and_exposure_runs(cfg, tmp_path):
    one, two = read_meds(_meds_dir(_rows(), tmp_path / "meds"), cfg)  # unknown_codes=error: SEX//F is not unknown
    assert one.static == {"sex": 0.0, "educ": 3.0} and two.static == {"sex": 1.0, "educ": 1.0}
    assert one.treatments == [
        TreatmentExposure(treatment="drug_b", start=0.0, stop=1.0, dose=5.0),
        TreatmentExposure(treatment="drug_a", start=0.5, stop=1.5, dose=1.0),  # 1, 1, then 0 at 1.5
        TreatmentExposure(treatment="drug_b", start=1.0, stop=1.5, dose=10.0),  # a new dose starts a new run
        TreatmentExposure(treatment="drug_a", start=2.0, stop=None, dose=1.0),  # given at the last visit: still open
    ]
    assert two.treatments == [TreatmentExposure(treatment="drug_a", start=0.0, stop=1.0, dose=1.0)]
    assert one.end_of_followup == 2.0 and two.end_of_followup == 1.2
    assert [o.value for o in one.observations] == [1.0, 1.5, 2.0, 2.5, 3.0]


def test_timestamped_static_rows_at_birth_are_read(cfg, tmp_path):
    rows = [
        {"subject_id": 7, "time": datetime(1950, 3, 1), "code": "SEX//M", "numeric_value": None},
        {"subject_id": 7, "time": datetime(2000, 1, 1), "code": "DRUG_B", "numeric_value": 2.5},
        {"subject_id": 7, "time": datetime(2001, 1, 1), "code": "DRUG_B", "numeric_value": 0.0},
    ]
    path = tmp_path / "stamped.parquet"
    pd.DataFrame(rows).to_parquet(path, index=False)
    (record,) = read_meds(path, cfg)
    assert record.static == {"sex": 1.0}
    assert record.treatments == [TreatmentExposure(treatment="drug_b", start=0.0, stop=366 / 365.25, dose=2.5)]
    assert record.end_of_followup == 366 / 365.25  # the birth row does not anchor follow-up


def test_round_trip_through_vpatients_own_encoding(cfg, tmp_path):
    source = _meds_dir(_rows(), tmp_path / "source")
    first = read_meds(source, cfg)
    assert list(iter_meds(source, cfg, batch_size=4)) == first  # per-visit rows of a subject span batches
    out = write_meds(first, cfg, tmp_path / "written")
    written = pd.read_parquet(out / "data")
    assert {"DRUG_A//START", "DRUG_A//STOP", "DRUG_B//START", "SEX"} <= set(written["code"])
    assert not written["code"].isin(["DRUG_A", "DRUG_B", "SEX//F"]).any()
    assert read_meds(out, cfg) == first
    assert read_meds(out) == first  # with the config stored beside the data
    codes = pd.read_parquet(out / "metadata" / "codes.parquet")["code"]
    assert {"SEX//F", "SEX//M", "DRUG_A", "DRUG_B"} <= set(codes)


@pytest.mark.parametrize(
    ("rows", "field", "value", "words"),
    [
        (
            [_row(3, None, "SEX//X")],
            "static.sex",
            "X",
            "'SEX//X' at no time (static row): 'X' is not a level of sex (one of F, M",
        ),
        ([_row(3, None, "EDUC//high")], "static.educ", "high", "'high' is not a level of educ (a number expected)"),
        ([_row(3, 1.0, "DRUG_A", 2.0)], "treatments.drug_a", 2.0, "'DRUG_A' at time 1: 0 or 1 (per-visit indicator)"),
        ([_row(3, 1.0, "DRUG_B", -1.0)], "treatments.drug_b", -1.0, "a finite dose >= 0"),
        ([_row(3, 1.0, "DRUG_B", 1.0), _row(3, 1.0, "DRUG_B", 2.0)], "treatments.drug_b", [1.0, 2.0], "2 different values"),
        ([_row(3, 1.0, "DRUG_B", None)], "treatments.drug_b", None, "no value"),
        ([_row(3, 1.0, "DRUG_B", 25.0)], "treatments[0].dose", 25.0, "allowed dose range [0, 20]"),
    ],
)
def test_bad_encoded_rows_are_validation_problems(cfg, tmp_path, rows, field, value, words):
    path = _meds_dir([_row(3, None, "SEX//F"), _row(3, 0.0, "LAB//BILI", 1.0), *rows], tmp_path / "meds")
    report = validate_path(path, cfg)
    (problem,) = report.errors  # float times and values are not standard MEDS: warned, not errors
    assert (problem.subject_id, problem.field, problem.value) == ("3", field, value)
    assert words in str(problem)
    with pytest.raises(RecordValidationError, match="subject 3"):
        read_meds(path, cfg)


def test_validate_command_reports_an_undeclared_level(cfg, tmp_path):
    path = _meds_dir(
        [*_rows(), _row(2, None, "EDUC//3"), _row(5, None, "SEX//U"), _row(5, 0.0, "LAB//BILI", 1.0)], tmp_path / "meds"
    )
    config = tmp_path / "config.json"
    cfg.save(config)
    result = subprocess.run(
        [sys.executable, "-m", "vpatient.cli", "validate", str(path), "--config", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "subject 5: static.sex = 'U': row with code 'SEX//U'" in result.stdout
    assert "subject 2: static.educ = 3.0: given twice (code 'EDUC//3'), first as 1.0" in result.stdout
    assert "unknown code" not in result.stdout
    assert "INVALID (2 errors" in result.stdout


@pytest.mark.parametrize(
    ("kind", "encoding", "allowed"),
    [
        ("continuous", "code_suffix", "static"),
        ("static", "per_visit_dose", "treatment"),
        ("event", "per_visit_indicator", "treatment"),
    ],
)
def test_an_encoding_is_refused_for_other_kinds(tmp_path, kind, encoding, allowed):
    path = tmp_path / "config.json"
    path.write_text(
        f'{{"name": "x", "variables": [{{"name": "v", "codes": ["V"], "kind": "{kind}", "encoding": "{encoding}"}}]}}'
    )
    with pytest.raises(ConfigError, match=f"variable 'v': encoding '{encoding}' applies only to {allowed} variables"):
        DatasetConfig.load(path)
