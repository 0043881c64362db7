"""Boundary validation: every documented error names the subject, the field and the value."""

from __future__ import annotations

import copy
import json
import math

import pytest

from vpatient.errors import ConfigError, RecordValidationError
from vpatient.schemas import (
    DatasetConfig,
    PatientRecord,
    PlausibilityWarning,
    TreatmentPlan,
    parse_plan,
    parse_record,
    parse_records,
)


def refuse(data: dict, config: DatasetConfig | None) -> str:
    with pytest.raises(RecordValidationError) as info:
        parse_record(data, config)
    return str(info.value)


def test_valid_record_round_trips_through_json(config, record_data):
    record = parse_record(record_data, config)
    again = PatientRecord.model_validate_json(record.model_dump_json(), context={"config": config})
    assert again == record
    assert record.visit_times() == [0.0, 0.5, 1.0]


@pytest.mark.parametrize(
    ("mutate", "field", "value_text", "words"),
    [
        (lambda d: d["observations"][1].update(value=math.inf), "observations[1].value", "inf", "not a finite number"),
        (lambda d: d["observations"][1].update(value=math.nan), "observations[1].value", "nan", "not a finite number"),
        (lambda d: d["static"].update(age=math.nan), "static.age", "nan", "not a finite number"),
        (
            lambda d: d["observations"][0].update(value=99.0),
            "observations[0].value",
            "99.0",
            "outside the plausible range [0.05, 60] mg/dl",
        ),
        (lambda d: d["observations"][0].update(value=-1.0), "observations[0].value", "-1.0", "log-transformed: must be > 0"),
        (lambda d: d["observations"][2].update(value=0.5), "observations[2].value", "0.5", "binary"),
        (lambda d: d["observations"][3].update(value=7), "observations[3].value", "7.0", "ordinal"),
        (lambda d: d["observations"][0].update(time=-0.5), "observations[0].time", "-0.5", "negative time"),
        (lambda d: d["observations"][0].update(time=0.5), "observations[1].time", "0.0", "out of order (previous entry at 0.5)"),
        (lambda d: d["imaging"][0].update(embedding=[1.0, 2.0]), "imaging[0].embedding", "[1.0, 2.0]", "dimension 4, got 2"),
        (lambda d: d["treatments"][0].update(stop=-1.0), "treatments[0].stop", "-1.0", "stops before it starts"),
        (
            lambda d: d["treatments"].append({"treatment": "drug", "start": 1.0, "dose": 1.0}),
            "treatments[1].start",
            "1.0",
            "overlaps treatments[0] of drug",
        ),
        (lambda d: d["treatments"][0].update(dose=5.0), "treatments[0].dose", "5.0", "allowed dose range [0, 2]"),
        (lambda d: d["treatments"][0].update(treatment="aspirin"), "treatments[0].treatment", "'aspirin'", "unknown treatment"),
        (lambda d: d["events"][0].update(time=4.0), "events[0].time", "4.0", "after end of follow-up (3)"),
        (lambda d: d["observations"][0].update(variable="bogus"), "observations", "'bogus'", "not a known observed variable"),
        (lambda d: d["events"][0].update(kind="stroke"), "events", "'stroke'", "not a known event variable"),
        (lambda d: d.update(end_of_followup="soon"), "end_of_followup", "'soon'", "valid number"),
        (lambda d: d.update(extra_field=1), "extra_field", "1", "Extra inputs are not permitted"),
    ],
)
def test_each_error_names_subject_field_and_value(config, record_data, mutate, field, value_text, words):
    data = copy.deepcopy(record_data)
    mutate(data)
    message = refuse(data, config)
    line = next((ln for ln in message.splitlines() if field in ln), None)
    assert line is not None, message
    assert "subject p1" in line
    assert f"= {value_text}" in line
    assert words in line


def test_all_problems_reported_at_once(config, record_data):
    data = copy.deepcopy(record_data)
    data["observations"][0]["value"] = math.inf
    data["imaging"][0]["embedding"] = [0.0]
    data["events"][0]["time"] = 10.0
    with pytest.raises(RecordValidationError) as info:
        parse_record(data, config)
    assert len(info.value.problems) == 3


def test_unknown_variables_listed_once_with_counts(config, record_data):
    data = copy.deepcopy(record_data)
    for obs in data["observations"]:
        obs["variable"] = "mystery"
    message = refuse(data, config)
    assert message.count("mystery") == 1
    assert "(5 entries)" in message


def test_out_of_range_warns_when_the_spec_says_so(config, record_data):
    data = copy.deepcopy(record_data)
    data["observations"][1]["value"] = 9.5  # albumin: out_of_range = warn
    collected = []
    record = parse_record(data, config, warnings_out=collected)
    assert record.observations[1].value == 9.5
    assert len(collected) == 1 and collected[0].severity == "warning"
    assert "observations[1].value" in str(collected[0])
    with pytest.warns(PlausibilityWarning, match="albumin"):
        PatientRecord.model_validate(data, context={"config": config})


def test_history_may_precede_the_index(config, record_data):
    assert parse_record(record_data, config).history[0].time == -2.0


def test_without_config_only_intrinsic_checks_run(record_data):
    data = copy.deepcopy(record_data)
    data["observations"][0]["variable"] = "anything"
    assert parse_record(data).observations[0].variable == "anything"


def test_duplicate_subject_ids_refused(config, record_data):
    with pytest.raises(RecordValidationError, match=r"subject p1: subject_id = 'p1': duplicate subject id \(2 records\)"):
        parse_records([record_data, record_data], config)


def test_parse_records_collects_problems_of_every_subject(config, record_data):
    a = copy.deepcopy(record_data)
    b = copy.deepcopy(record_data) | {"subject_id": "p2"}
    a["observations"][0]["value"] = math.inf
    b["events"][0]["time"] = 9.0
    with pytest.raises(RecordValidationError) as info:
        parse_records([a, b], config)
    assert {p.subject_id for p in info.value.problems} == {"p1", "p2"}


def test_numeric_subject_ids_become_strings(config, record_data):
    assert parse_record(record_data | {"subject_id": 17}, config).subject_id == "17"


def test_plan_validation(config):
    plan = parse_plan({"name": "double", "exposures": [{"treatment": "drug", "start": 1, "dose": 2}]}, config)
    assert isinstance(plan, TreatmentPlan)
    for exposure, words in [
        ({"treatment": "drug", "start": 1, "stop": 0.5}, "exposures[0].stop = 0.5: stops before it starts"),
        ({"treatment": "drug", "start": 1, "dose": 3}, "exposures[0].dose = 3.0: outside the allowed dose range [0, 2] of drug"),
        ({"treatment": "aspirin", "start": 1}, "exposures[0].treatment = 'aspirin': unknown treatment (known: drug)"),
        ({"treatment": "drug", "start": -1}, "exposures[0].start = -1.0: must be a finite, non-negative time"),
    ]:
        with pytest.raises(RecordValidationError) as info:
            parse_plan({"name": "bad", "exposures": [exposure]}, config)
        assert words in str(info.value)
        assert "plan 'bad'" in str(info.value)


def test_plan_check_against_a_config_reports_as_parsing_does(config):
    """A plan built in Python without a config is checked against one with the same errors as parse_plan."""
    plan = TreatmentPlan(name="double", exposures=[{"treatment": "drug", "start": 1, "dose": 2}])
    assert plan.check(config) is plan
    for exposure in [{"treatment": "drug", "start": 1, "dose": 3}, {"treatment": "aspirin", "start": 1}]:
        unchecked = TreatmentPlan(name="bad", exposures=[exposure])  # no config: nothing to refuse yet
        with pytest.raises(RecordValidationError) as parsed:
            parse_plan(unchecked.model_dump(mode="json"), config)
        with pytest.raises(RecordValidationError) as checked:
            unchecked.check(config)
        assert str(checked.value) == str(parsed.value)
        assert checked.value.problems == parsed.value.problems


def test_plan_json_text(config):
    text = json.dumps({"name": "stop", "exposures": []})
    assert parse_plan(text, config).name == "stop"
    with pytest.raises(RecordValidationError, match="Invalid JSON"):
        parse_plan("{not json", config)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda c: c["variables"].append(dict(c["variables"][2])), "declared 2 times"),
        (lambda c: c["variables"][3].update(codes=["LAB//BILI"]), "is read by both"),
        (lambda c: c["tests"][0]["variables"].append("nothing"), "measures unknown variable"),
        (lambda c: c["variables"][2].update(test="nowhere"), "unknown test"),
        (lambda c: c["variables"][6].pop("dimension"), "'dimension' is required"),
        (lambda c: c["variables"][5].update(levels=[3, 1]), "ordinal variables need 'levels'"),
        (lambda c: c["variables"][2].update(plausible_range=[5, 1]), "low < high"),
    ],
)
def test_inconsistent_configs_are_refused(config, tmp_path, change, words):
    data = config.model_dump(mode="json")
    change(data)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=words):
        DatasetConfig.load(path)


def test_config_yaml_and_json_round_trip(config, tmp_path):
    for name in ("c.json", "c.yaml"):
        config.save(tmp_path / name)
        assert DatasetConfig.load(tmp_path / name) == config


def test_config_load_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        DatasetConfig.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.yaml"
    bad.write_text("variables: [unclosed")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        DatasetConfig.load(bad)
