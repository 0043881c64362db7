"""FHIR import: each resource type, units, bad input, Bulk Data folders, streaming, and the commands that take data."""

from __future__ import annotations

import json
import math
import random
import tempfile
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vpatient.cli import app
from vpatient.data.fhir import is_fhir, iter_fhir, read_fhir
from vpatient.data.fhir.units import UnitMismatch, canonical_unit, convert
from vpatient.datasets import load_dataset
from vpatient.errors import DataFormatError, Problem, RecordValidationError
from vpatient.schemas import DatasetConfig

LOINC, SNOMED, RXNORM, UCUM = (
    "http://loinc.org",
    "http://snomed.info/sct",
    "http://www.nlm.nih.gov/research/umls/rxnorm",
    "http://unitsofmeasure.org",
)
BIRTH_TIME = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"


@pytest.fixture()
def fhir_config() -> DatasetConfig:
    """A config of standard codes (not PBC's), in days."""
    return DatasetConfig.model_validate(
        {
            "name": "fhir-test",
            "time_unit": "days",
            "variables": [
                {"name": "age", "codes": ["MEDS_BIRTH"], "kind": "static"},
                {"name": "sex", "codes": ["GENDER"], "kind": "static", "categories": {"female": 0, "male": 1}},
                {"name": "smoker", "codes": ["LOINC/72166-2"], "kind": "static", "categories": {"266919005": 0, "77176002": 1}},
                {"name": "bilirubin", "codes": ["LOINC/1975-2"], "kind": "continuous", "unit": "mg/dl", "transform": "log"},
                {"name": "albumin", "codes": ["LOINC/1751-7"], "kind": "continuous", "unit": "g/dL"},
                {"name": "ascites", "codes": ["SNOMED/389026000"], "kind": "binary"},
                {"name": "stage", "codes": ["SNOMED/385356007"], "kind": "ordinal", "levels": [1, 2, 3, 4]},
                {"name": "ct", "codes": ["LOINC/24627-2"], "kind": "imaging_embedding", "dimension": 3},
                {"name": "diabetes", "codes": ["SNOMED/44054006"], "kind": "history"},
                {"name": "drug", "codes": ["RXNORM/860975"], "kind": "treatment", "unit": "mg"},
                {"name": "death", "codes": ["MEDS_DEATH"], "kind": "event"},
                {"name": "transplant", "codes": ["SNOMED/18027006"], "kind": "event"},
            ],
        }
    )


def concept(system: str, code: str) -> dict:
    return {"coding": [{"system": system, "code": code}]}


def qty(value: float, unit: str) -> dict:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def obs(rid: str, sid: str, code: dict, when: str | None, **value) -> dict:
    out = {"resourceType": "Observation", "id": rid, "status": "final", "code": code, "subject": {"reference": f"Patient/{sid}"}}
    if when is not None:
        out["effectiveDateTime"] = when
    return out | value


def patient_resources(sid: str = "p1", shift: int = 0) -> list[dict]:
    """One patient with every resource type the reader takes (``shift``: years added to every date)."""
    y = 2020 + shift

    def at(month: int, day: int = 1, year: int | None = None) -> str:
        return f"{year or y}-{month:02d}-{day:02d}T00:00:00Z"

    ref = {"reference": f"Patient/{sid}"}
    return [
        {
            "resourceType": "Patient",
            "id": sid,
            "gender": "female",
            "birthDate": "1960-05-01",
            "_birthDate": {"extension": [{"url": BIRTH_TIME, "valueDateTime": "1960-05-01T08:30:00+02:00"}]},
            "deceasedDateTime": at(6, 1, y + 1),
        },
        {
            "resourceType": "EpisodeOfCare",
            "id": f"{sid}-eoc",
            "status": "finished",
            "patient": ref,
            "period": {"start": at(1), "end": at(6, 1, y + 1)},
        },
        obs(f"{sid}-o1", sid, concept(LOINC, "1975-2"), at(1), valueQuantity=qty(1.2, "mg/dL")),
        obs(f"{sid}-o2", sid, concept(LOINC, "1975-2"), at(3), valueQuantity=qty(0.015, "g/L")),
        obs(f"{sid}-o3", sid, concept(LOINC, "1751-7"), at(1), valueQuantity={"value": 35, "unit": "g/L"}),
        obs(f"{sid}-o4", sid, concept(SNOMED, "389026000"), at(3), valueBoolean=True),
        obs(f"{sid}-o5", sid, concept(SNOMED, "385356007"), at(3), valueInteger=2),
        obs(f"{sid}-o6", sid, concept(LOINC, "72166-2"), at(1), valueCodeableConcept=concept(SNOMED, "77176002")),
        {"resourceType": "ImagingStudy", "id": f"{sid}-s1", "status": "available", "subject": ref, "started": at(2)},
        obs(
            f"{sid}-o7",
            sid,
            concept(LOINC, "24627-2"),
            at(2),
            partOf=[{"reference": f"ImagingStudy/{sid}-s1"}],
            valueSampledData={"origin": {"value": 0}, "period": 1, "dimensions": 1, "data": "0.5 -1.25 0.003"},
        ),
        {
            "resourceType": "Condition",
            "id": f"{sid}-c1",
            "subject": ref,
            "code": concept(SNOMED, "44054006"),
            "onsetDateTime": f"{y - 5}-01-01",
        },
        {
            "resourceType": "MedicationStatement",
            "id": f"{sid}-m1",
            "status": "completed",
            "subject": ref,
            "medicationCodeableConcept": concept(RXNORM, "860975"),
            "effectivePeriod": {"start": at(1, 15), "end": at(4, 15)},
            "dosage": [{"doseAndRate": [{"doseQuantity": qty(500, "mg")}]}],
        },
        {
            "resourceType": "MedicationRequest",
            "id": f"{sid}-m2",
            "status": "completed",
            "intent": "order",
            "subject": ref,
            "medicationCodeableConcept": concept(RXNORM, "860975"),
            "dosageInstruction": [
                {
                    "timing": {"repeat": {"boundsPeriod": {"start": at(6), "end": at(8)}}},
                    "doseAndRate": [{"doseQuantity": qty(0.25, "g")}],
                }
            ],
        },
        {
            "resourceType": "MedicationAdministration",
            "id": f"{sid}-m3",
            "status": "completed",
            "subject": ref,
            "medicationCodeableConcept": concept(RXNORM, "860975"),
            "effectivePeriod": {"start": at(9), "end": at(9, 2)},
            "dosage": {"dose": qty(100, "mg")},
        },
        {
            "resourceType": "Procedure",
            "id": f"{sid}-x1",
            "status": "completed",
            "subject": ref,
            "code": concept(SNOMED, "18027006"),
            "performedDateTime": at(1, 1, y + 1),
        },
        {"resourceType": "Encounter", "id": f"{sid}-e1", "status": "finished", "class": {"code": "AMB"}, "subject": ref},
    ]


def bundle(resources: list[dict], kind: str = "collection") -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": [{"resource": r} for r in resources]}


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_bulk(folder: Path, resources: list[dict]) -> Path:
    """A Bulk Data export: one NDJSON file per resource type."""
    folder.mkdir()
    by_type: dict[str, list[dict]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    for kind, items in by_type.items():
        (folder / f"{kind}.ndjson").write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
    return folder


def days(a: str, b: str) -> float:
    return (datetime.fromisoformat(a) - datetime.fromisoformat(b)).total_seconds() / 86400


def problems_of(path: Path, config: DatasetConfig) -> list[Problem]:
    with pytest.raises(RecordValidationError) as caught:
        read_fhir(path, config)
    return caught.value.problems


# --------------------------------------------------------------------------- each resource type


def test_every_resource_type_becomes_its_record_part(tmp_path, fhir_config):
    (record,) = read_fhir(write_json(tmp_path / "p1.json", bundle(patient_resources())), fhir_config, [])
    assert record.subject_id == "p1"
    assert record.index_time == datetime(2020, 1, 1)
    assert record.end_of_followup == days("2021-06-01", "2020-01-01")
    # birthTime (06:30 UTC) wins over birthDate; age in days at the index
    assert record.static["age"] == days("2020-01-01", "1960-05-01T06:30:00")
    assert record.static["sex"] == 0.0 and record.static["smoker"] == 1.0
    bili = [(o.time, o.value) for o in record.observations if o.variable == "bilirubin"]
    assert bili[0] == (0.0, 1.2)  # same unit: the value itself, bit for bit
    assert bili[1][0] == days("2020-03-01", "2020-01-01") and bili[1][1] == pytest.approx(1.5)  # 0.015 g/L
    assert [o.value for o in record.observations if o.variable == "albumin"] == [pytest.approx(3.5)]  # 35 g/L, unit text only
    assert [o.value for o in record.observations if o.variable == "ascites"] == [1.0]
    assert [o.value for o in record.observations if o.variable == "stage"] == [2.0]
    (study,) = record.imaging
    assert study.modality == "ct" and study.time == 31.0 and study.embedding == [0.5, -1.25, 0.003]
    assert [(h.code, h.time) for h in record.history] == [("diabetes", days("2015-01-01", "2020-01-01"))]
    exposures = [(e.start, e.stop, e.dose) for e in record.treatments]
    assert exposures == [
        (14.0, days("2020-04-15", "2020-01-01"), 500.0),  # MedicationStatement
        (days("2020-06-01", "2020-01-01"), days("2020-08-01", "2020-01-01"), 250.0),  # MedicationRequest, 0.25 g
        (days("2020-09-01", "2020-01-01"), days("2020-09-02", "2020-01-01"), 100.0),  # MedicationAdministration
    ]
    assert sorted((e.kind, e.time) for e in record.events) == [
        ("death", days("2021-06-01", "2020-01-01")),
        ("transplant", days("2021-01-01", "2020-01-01")),
    ]


def test_panel_components_are_read_by_their_own_codes(tmp_path, fhir_config):
    """A blood-pressure panel: its components' codes are variables; the panel's own code is then no unknown code."""
    variables = [
        *fhir_config.variables,
        {"name": "systolic", "codes": ["LOINC/8480-6"], "kind": "continuous", "unit": "mm[Hg]"},
        {"name": "diastolic", "codes": ["LOINC/8462-4"], "kind": "continuous", "unit": "mmHg"},
    ]
    config = DatasetConfig.model_validate(fhir_config.model_dump() | {"variables": variables})
    panel = obs("bp", "p1", concept(LOINC, "85354-9"), "2020-02-01T00:00:00Z")
    panel["component"] = [
        {"code": concept(LOINC, "8480-6"), "valueQuantity": qty(120.0, "mm[Hg]")},
        {"code": concept(LOINC, "8462-4"), "valueQuantity": {"value": 10.0, "unit": "kPa"}},
    ]
    (record,) = read_fhir(write_json(tmp_path / "b.json", bundle([*patient_resources(), panel])), config, [])
    pressures = {o.variable: (o.time, o.value) for o in record.observations if o.variable in ("systolic", "diastolic")}
    assert pressures == {"systolic": (31.0, 120.0), "diastolic": (31.0, pytest.approx(75.006, abs=1e-3))}  # 10 kPa


def test_relative_time_tag_reads_back_without_index_time(tmp_path, fhir_config):
    resources = patient_resources()
    resources[0]["meta"] = {"tag": [{"system": "urn:vpatient:tag", "code": "relative-time"}]}
    (record,) = read_fhir(write_json(tmp_path / "p.json", bundle(resources)), fhir_config, [])
    assert record.index_time is None
    assert record.observations[0].time == 0.0


def test_an_embedding_without_a_time_takes_its_studys(tmp_path, fhir_config):
    resources = patient_resources()
    del resources[9]["effectiveDateTime"]  # the embedding Observation, partOf ImagingStudy/p1-s1 (started 2020-02-01)
    (record,) = read_fhir(write_bulk(tmp_path / "bulk", resources), fhir_config, [])
    assert [(s.time, s.embedding) for s in record.imaging] == [(31.0, [0.5, -1.25, 0.003])]
    del resources[8]["started"]
    problems = problems_of(write_json(tmp_path / "b.json", bundle(resources)), fhir_config)
    assert [(p.subject_id, p.field, p.value) for p in problems] == [("p1", "Observation.effectiveDateTime", "ImagingStudy/p1-s1")]


def test_ndjson_of_bundles_and_urn_references(tmp_path, fhir_config):
    """A transaction Bundle per NDJSON line, whose references are the entries' fullUrls (as Synthea writes them)."""
    lines = []
    for sid in ("1", "2"):
        resources = patient_resources(sid)
        entries = [
            {"fullUrl": f"urn:uuid:{r['id']}", "resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
            for r in resources
        ]
        text = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        lines.append(text.replace(f'"Patient/{sid}"', f'"urn:uuid:{sid}"'))
    file = tmp_path / "bundles.ndjson"
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records = read_fhir(file, fhir_config, [])
    assert [r.subject_id for r in records] == ["1", "2"]
    assert len(records[1].observations) == len(
        read_fhir(write_json(tmp_path / "b.json", bundle(patient_resources())), fhir_config, [])[0].observations
    )


def test_transaction_entries_without_ids_are_known_by_their_fullurl(tmp_path, fhir_config):
    """A transaction's POST entries often carry no id, only a urn:uuid fullUrl the others refer to: that uuid is the id."""
    uuid = "8c5e3f8a-1b2c-4d5e-8f90-a1b2c3d4e5f6"
    entries = []
    for n, resource in enumerate(json.loads(json.dumps(patient_resources("p1")).replace('"Patient/p1"', f'"urn:uuid:{uuid}"'))):
        del resource["id"]
        url = f"urn:uuid:{uuid}" if n == 0 else f"urn:uuid:00000000-0000-4000-8000-{n:012d}"
        entries.append({"fullUrl": url, "resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}})
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    (record,) = read_fhir(write_json(tmp_path / "t.json", transaction), fhir_config, [])
    (expected,) = read_fhir(write_json(tmp_path / "b.json", bundle(patient_resources("p1"))), fhir_config, [])
    assert record.subject_id == uuid
    assert record.model_copy(update={"subject_id": "p1"}) == expected


def test_a_config_prefix_for_a_standard_system_reads_its_codes(tmp_path, fhir_config):
    """A config spelling LOINC codes LN/... (code_systems LN: http://loinc.org) reads http://loinc.org codings as LN/...,
    as the writer writes them, not as LOINC/... (no variable's code)."""
    data = fhir_config.model_dump()
    for v in data["variables"]:
        v["codes"] = [c.replace("LOINC/", "LN/") for c in v["codes"]]
    own = DatasetConfig.model_validate({**data, "code_systems": {"LN": "http://loinc.org"}})
    (record,) = read_fhir(write_json(tmp_path / "p1.json", bundle(patient_resources())), own, [])
    (expected,) = read_fhir(write_json(tmp_path / "p2.json", bundle(patient_resources())), fhir_config, [])
    assert record == expected


def test_bulk_export_folder_reads_as_the_single_bundle(tmp_path, fhir_config):
    resources = [r for sid in ("3", "10", "2") for r in patient_resources(sid, shift=int(sid))]
    from_bundle = read_fhir(write_json(tmp_path / "all.json", bundle(resources, "searchset")), fhir_config, [])
    from_bulk = read_fhir(write_bulk(tmp_path / "bulk", resources), fhir_config, [], buckets=3)
    assert [r.subject_id for r in from_bulk] == ["2", "3", "10"]  # numeric order, as MEDS
    assert from_bulk == from_bundle


def test_folder_of_bundles_reads_as_one_bundle(tmp_path, fhir_config):
    folder = tmp_path / "bundles"
    folder.mkdir()
    for sid in ("a", "b"):
        write_json(folder / f"{sid}.json", bundle(patient_resources(sid)))
    together = bundle(patient_resources("a") + patient_resources("b"))
    assert read_fhir(folder, fhir_config, []) == read_fhir(write_json(tmp_path / "ab.json", together), fhir_config, [])


def test_streaming_in_worker_processes_equals_reading_all(tmp_path, fhir_config, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the staging buckets go
    resources = [r for i in range(300) for r in patient_resources(f"s{i:03d}", shift=i % 7)]
    folder = write_bulk(tmp_path / "bulk", resources)
    streamed = sorted(iter_fhir(folder, fhir_config, [], buckets=7, workers=2), key=lambda r: r.subject_id)
    assert len(streamed) == 300
    assert streamed == read_fhir(folder, fhir_config, [])
    assert not list(scratch.iterdir())  # the staging folder is gone
    with (folder / "Observation.ndjson").open("a", encoding="utf-8") as handle:
        handle.write("{not json\n")
    with pytest.raises(RecordValidationError, match="malformed JSON"):
        next(iter_fhir(folder, fhir_config, [], buckets=3))
    assert not list(scratch.iterdir())  # ... also after an error


def test_skipped_types_and_unread_patient_fields_are_no_problem(tmp_path, fhir_config, caplog):
    config = fhir_config.model_copy(
        update={"variables": [v for v in fhir_config.variables if v.name not in ("age", "sex", "death")]}
    )
    with caplog.at_level("INFO"):
        (record,) = read_fhir(write_json(tmp_path / "p.json", bundle(patient_resources())), config, [])
    assert "age" not in record.static and not [e for e in record.events if e.kind == "death"]
    assert "Encounter (1)" in caplog.text
    lonely = [
        {"resourceType": "Patient", "id": "p2"},
        {"resourceType": "Encounter", "id": "e2", "status": "finished", "class": {"code": "AMB"}},
    ]
    warned: list[Problem] = []
    (record,) = read_fhir(write_json(tmp_path / "q.json", bundle(patient_resources() + lonely)), config, warned)
    assert record.subject_id == "p1" and ["Patient/p2" in p.message and "left out" in p.message for p in warned] == [True]


# --------------------------------------------------------------------------- units


def test_units_loose_spelling_and_conversions():
    assert canonical_unit("mg/dl") == "mg/dL" and canonical_unit("U/l") == "U/L" and canonical_unit("10^3/ml") == "10*3/mL"
    assert canonical_unit("x10^9/L") == "10*9/L" and canonical_unit("mcg/mL") == "ug/mL" and canonical_unit("{cells}/uL") == "/uL"
    assert convert(0.1 + 0.2, "mg/dl", "mg/dL") == 0.1 + 0.2  # same unit: bit for bit
    assert convert(250.0, "10*9/L", "10*3/uL") == 250.0
    assert convert(2.0, "h", "min") == 120.0 and convert(50.0, "%", "1") == 0.5
    assert convert(1.0, "U/mL", "U/L") == 1000.0 and convert(10.0, "[lb_av]", "kg") == pytest.approx(4.5359237)
    assert convert(3.0, "furlongs", "furlongs") == 3.0  # a unit outside the table is still itself
    with pytest.raises(UnitMismatch, match=r"'umol/L'.*'mg/dL'.*molar mass"):
        convert(17.1, "umol/L", "mg/dL")
    with pytest.raises(UnitMismatch, match="'furlongs' is not a unit"):
        convert(1.0, "furlongs", "m")


# --------------------------------------------------------------------------- bad input


def _about(problems: list[Problem], label: str, field: str) -> Problem:
    """The one problem naming resource ``label`` (Type/id) and ``field``."""
    found = [p for p in problems if p.field == field and label in str(p)]
    assert len(found) == 1, "\n".join(map(str, problems))
    return found[0]


def test_bad_resources_each_named_by_type_id_and_field(tmp_path, fhir_config):
    resources = patient_resources()
    resources[2]["code"] = concept(LOINC, "9999-9")  # unknown code
    resources[3]["valueQuantity"] = qty(17.1, "umol/L")  # unconvertible
    resources[4]["valueQuantity"] = {"value": 3.5}  # no unit
    resources[5]["subject"] = {"reference": "Patient/nobody"}  # missing Patient
    del resources[11]["effectivePeriod"]  # a dose without a period
    resources[11]["effectiveDateTime"] = "2020-01-15T00:00:00Z"
    resources[6]["valueInteger"] = "two"  # the FHIR model refuses it
    resources.append(dict(resources[8]))  # ImagingStudy p1-s1 twice
    problems = problems_of(write_json(tmp_path / "bad.json", bundle(resources)), fhir_config)
    assert len(problems) == 7
    assert _about(problems, "Observation/p1-o1", "Observation.code").value == "LOINC/9999-9"
    assert "molar mass" in _about(problems, "Observation/p1-o2", "Observation.valueQuantity.unit").message
    assert "no unit; albumin is in 'g/dL'" in _about(problems, "Observation/p1-o3", "Observation.valueQuantity.unit").message
    assert "'nobody'" in _about(problems, "Observation/p1-o4", "Observation.subject.reference").message
    assert (
        "without a period" in _about(problems, "MedicationStatement/p1-m1", "MedicationStatement.effectivePeriod.start").message
    )
    assert "not valid FHIR R4B" in _about(problems, "Observation/p1-o5", "Observation.valueInteger").message
    assert "2 times" in _about(problems, "ImagingStudy/p1-s1", "ImagingStudy.id").message
    assert "Traceback" not in "\n".join(map(str, problems))


def test_a_death_without_a_time_is_refused_not_lost(tmp_path, fhir_config):
    """deceasedBoolean true cannot be placed in time; read as alive, the subject would look censored."""
    resources = patient_resources()
    del resources[0]["deceasedDateTime"]
    resources[0]["deceasedBoolean"] = True
    (problem,) = problems_of(write_json(tmp_path / "dead.json", bundle(resources)), fhir_config)
    assert problem.field == "Patient.deceasedBoolean" and "without a time" in problem.message
    resources[0]["deceasedBoolean"] = False  # alive: nothing to say
    (record,) = read_fhir(write_json(tmp_path / "alive.json", bundle(resources)), fhir_config, [])
    assert [e.kind for e in record.events] == ["transplant"]


def test_a_value_with_a_comparator_is_read_with_a_warning(tmp_path, fhir_config):
    """ "<0.1 mg/dL" is a bound, not a measurement: it is read as 0.1, and the user is told which resource."""
    resources = patient_resources()
    resources[2]["valueQuantity"] = qty(0.1, "mg/dL") | {"comparator": "<"}
    warnings: list[Problem] = []
    (record,) = read_fhir(write_json(tmp_path / "lt.json", bundle(resources)), fhir_config, warnings)
    assert next(o.value for o in record.observations if o.variable == "bilirubin") == 0.1
    (warning,) = [w for w in warnings if w.field == "Observation.valueQuantity.comparator"]
    assert warning.severity == "warning" and "Observation/p1-o1" in warning.owner and "a bound (< 0.1)" in warning.message


def test_a_dose_given_as_a_rate_or_range_is_not_lost_silently(tmp_path, fhir_config):
    """Only doseQuantity is read: a dose given as a rate or a range gets the default dose 1, with a warning naming it."""
    resources = patient_resources()
    resources[11]["dosage"] = [{"doseAndRate": [{"rateQuantity": qty(500, "mg")}]}]
    resources[12]["dosageInstruction"][0]["doseAndRate"] = [{"doseRange": {"low": qty(200, "mg"), "high": qty(300, "mg")}}]
    del resources[13]["dosage"]["dose"]
    resources[13]["dosage"]["rateQuantity"] = qty(100, "mg")
    warnings: list[Problem] = []
    (record,) = read_fhir(write_json(tmp_path / "rate.json", bundle(resources)), fhir_config, warnings)
    assert [e.dose for e in record.treatments] == [1.0, 1.0, 1.0]
    assert sorted((w.field, w.owner.split()[0]) for w in warnings if "default dose 1" in w.message) == [
        ("MedicationAdministration.dosage.rateQuantity", "MedicationAdministration/p1-m3"),
        ("MedicationRequest.dosageInstruction[0].doseAndRate[0].doseRange", "MedicationRequest/p1-m2"),
        ("MedicationStatement.dosage[0].doseAndRate[0].rateQuantity", "MedicationStatement/p1-m1"),
    ]


def test_what_did_not_happen_is_not_read(tmp_path, fhir_config):
    """A refuted Condition (it has no status, only verificationStatus), a Procedure or administration not done, and a
    MedicationRequest that only proposes."""
    resources = patient_resources()
    verification = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
    resources[10]["verificationStatus"] = {"coding": [{"system": verification, "code": "refuted"}]}  # diabetes
    resources[14]["status"] = "not-done"  # the transplant
    resources[13]["status"] = "not-done"  # the third exposure
    resources[12]["intent"] = "proposal"  # the second: only suggested
    (record,) = read_fhir(write_json(tmp_path / "p1.json", bundle(resources)), fhir_config, [])
    assert record.history == [] and [e.kind for e in record.events] == ["death"]
    assert [e.dose for e in record.treatments] == [500.0]


def test_an_observation_with_a_data_absent_reason_is_no_value_and_no_problem(tmp_path, fhir_config):
    resources = patient_resources()
    del resources[3]["valueQuantity"]
    resources[3]["dataAbsentReason"] = {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "error"}]
    }
    (record,) = read_fhir(write_json(tmp_path / "p1.json", bundle(resources)), fhir_config, [])
    assert [o.value for o in record.observations if o.variable == "bilirubin"] == [1.2]
    del resources[3]["dataAbsentReason"]  # no value and no reason: refused, as before
    (problem,) = problems_of(write_json(tmp_path / "p2.json", bundle(resources)), fhir_config)
    assert problem.field == "Observation.value[x]" and "no value for bilirubin" in problem.message


def test_unknown_code_policy_warn_keeps_the_rest(tmp_path, fhir_config):
    resources = patient_resources()
    resources[2]["code"] = concept(LOINC, "9999-9")
    warned: list[Problem] = []
    config = fhir_config.model_copy(update={"unknown_codes": "warn"})
    (record,) = read_fhir(write_json(tmp_path / "b.json", bundle(resources)), config, warned)
    assert [p.value for p in warned] == ["LOINC/9999-9"]
    assert len([o for o in record.observations if o.variable == "bilirubin"]) == 1


def test_resources_no_variable_reads_need_no_time_or_period(tmp_path, fhir_config):
    """An export's other resources (unknown codes, a drug by reference) need none of what the config's own do."""
    ref = {"reference": "Patient/p1"}
    other = [
        {"resourceType": "Observation", "id": "x1", "status": "final", "code": concept(LOINC, "8867-4"), "subject": ref},
        {"resourceType": "Condition", "id": "x2", "code": concept(SNOMED, "38341003"), "subject": ref},
        {
            "resourceType": "MedicationRequest",
            "id": "x3",
            "status": "active",
            "intent": "order",
            "subject": ref,
            "medicationCodeableConcept": concept(RXNORM, "197361"),
        },
        {
            "resourceType": "MedicationStatement",
            "id": "x4",
            "status": "active",
            "subject": ref,
            "medicationReference": {"reference": "Medication/m1"},
        },
    ]
    file = write_json(tmp_path / "b.json", bundle(patient_resources() + other))
    ignoring = fhir_config.model_copy(update={"unknown_codes": "ignore"})
    assert read_fhir(file, ignoring, []) == read_fhir(
        write_json(tmp_path / "a.json", bundle(patient_resources())), fhir_config, []
    )
    refused = {p.value: p for p in problems_of(file, fhir_config)}
    assert set(refused) == {"LOINC/8867-4", "SNOMED/38341003", "RXNORM/197361", "(a Medication resource, by medicationReference)"}
    assert "MedicationStatement/x4" in str(refused["(a Medication resource, by medicationReference)"])


def test_malformed_json_names_file_and_line(tmp_path, fhir_config):
    folder = write_bulk(tmp_path / "bulk", patient_resources())
    with (folder / "Observation.ndjson").open("a", encoding="utf-8") as handle:
        handle.write('{"resourceType": "Observation", "id": \n')
    problems = problems_of(folder, fhir_config)
    (bad,) = problems
    assert bad.owner == "Observation.ndjson line 8" and "malformed JSON" in bad.message  # 7 Observations, then the bad line
    broken = tmp_path / "x.json"
    broken.write_text('{"resourceType": "Bundle",\n "type": "collection", "entry": [}', encoding="utf-8")
    assert "line 2" in str(problems_of(broken, fhir_config)[0])


def test_values_out_of_range_are_refused_as_in_meds(tmp_path, fhir_config):
    resources = patient_resources()
    resources[2]["valueQuantity"] = qty(-1.0, "mg/dL")  # bilirubin is log-transformed
    problems = problems_of(write_json(tmp_path / "b.json", bundle(resources)), fhir_config)
    assert any(p.subject_id == "p1" and "log-transformed" in p.message for p in problems)


# --------------------------------------------------------------------------- wiring


def test_detection_by_content(tmp_path, fhir_config):
    assert is_fhir(write_json(tmp_path / "b.json", bundle(patient_resources())))
    assert not is_fhir(write_json(tmp_path / "r.json", {"subject_id": "1", "end_of_followup": 1.0}))
    assert is_fhir(write_bulk(tmp_path / "bulk", patient_resources()))
    with_bom = tmp_path / "bom.json"
    with_bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(bundle(patient_resources())).encode())
    assert is_fhir(with_bom) and len(read_fhir(with_bom, fhir_config, [])) == 1


def test_load_dataset_and_cli_validate_take_fhir(tmp_path, fhir_config):
    folder = write_bulk(tmp_path / "bulk", patient_resources("1") + patient_resources("2", shift=1))
    config_file = tmp_path / "config.json"
    config_file.write_text(fhir_config.model_dump_json(), encoding="utf-8")
    cohort = load_dataset(folder, config_file)
    assert [r.subject_id for r in cohort.records] == ["1", "2"]
    result = CliRunner().invoke(app, ["validate", str(folder), "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    assert "valid (2 subjects, 0 errors" in result.output
    with (folder / "Condition.ndjson").open("a", encoding="utf-8") as handle:
        handle.write(
            json.dumps(
                {
                    "resourceType": "Condition",
                    "id": "c9",
                    "subject": {"reference": "Patient/9"},
                    "code": concept(SNOMED, "44054006"),
                    "onsetDateTime": "2020-01-01",
                }
            )
            + "\n"
        )
    result = CliRunner().invoke(app, ["validate", str(folder), "--config", str(config_file)])
    assert result.exit_code == 1 and "Condition/c9" in result.output and "Traceback" not in result.output


def test_dashboard_upload_of_a_bundle(fhir_config):
    from vpatient.dashboard.session import UploadError, parse_upload

    data = json.dumps(bundle(patient_resources())).encode()
    record = parse_upload("patient.json", data, fhir_config)
    assert record.subject_id == "p1" and math.isclose(record.observations[0].value, 1.2)
    ndjson = "".join(json.dumps(r) + "\n" for r in patient_resources()).encode()
    assert parse_upload("patient.ndjson", ndjson, fhir_config) == record
    two = json.dumps(bundle(patient_resources("a") + patient_resources("b"))).encode()
    with pytest.raises(UploadError, match="holds 2 records"):
        parse_upload("two.json", two, fhir_config)


# --------------------------------------------------------------------------- corrupted input


_ODD_VALUES = [
    None,
    "",
    "x",
    0,
    -1,
    1e308,
    -0.0,
    [],
    {},
    True,
    "2020-13-45",
    "Patient/zzz",
    {"reference": "Patient/p1"},
    [{"code": "1"}],
]


def _corrupt(node: object, rng: random.Random) -> object:
    """``node`` (parsed JSON) with one thing changed somewhere inside: a key dropped, a value replaced, an item doubled."""
    if isinstance(node, dict) and node and rng.random() < 0.7:
        key = rng.choice(sorted(node))
        action = rng.random()
        if action < 0.25:
            return {k: v for k, v in node.items() if k != key}
        if action < 0.5:
            return node | {key: rng.choice(_ODD_VALUES)}
        return node | {key: _corrupt(node[key], rng)}
    if isinstance(node, list) and node and rng.random() < 0.7:
        i = rng.randrange(len(node))
        if rng.random() < 0.2:
            return [*node, node[i]]
        return [*node[:i], _corrupt(node[i], rng), *node[i + 1 :]]
    return rng.choice(_ODD_VALUES)


def test_corrupted_bundles_give_our_errors_only(tmp_path, fhir_config):
    """Whatever is broken, the reader returns records or raises its own errors (naming a resource or file), never another."""
    rng = random.Random(0)
    outcomes = {"read": 0, "refused": 0}
    for i in range(150):
        resources = patient_resources()
        for _ in range(rng.randint(1, 3)):  # mostly inside a resource, where the reader's own code runs
            j = rng.randrange(len(resources))
            resources[j] = _corrupt(resources[j], rng)  # type: ignore[assignment]
        data = _corrupt(bundle(resources), rng) if rng.random() < 0.1 else bundle(resources)
        text = json.dumps(data)
        if rng.random() < 0.15:
            text = text[: rng.randrange(len(text))]  # cut short
        file = tmp_path / f"case{i}.json"
        file.write_text(text, encoding="utf-8")
        try:
            read_fhir(file, fhir_config, [])
            outcomes["read"] += 1
        except (RecordValidationError, DataFormatError) as exc:
            assert "Traceback" not in str(exc)
            outcomes["refused"] += 1
    assert outcomes["read"] >= 1 and outcomes["refused"] > 100, outcomes


def test_forecast_takes_a_fhir_bundle_for_the_models_own_config(tmp_path, untrained_model_dir):
    """A Bundle in the PBC model's own (local) codes, read with the model's config: ``forecast --data`` takes FHIR."""
    local = "urn:vpatient:code"
    ref = {"reference": "Patient/p1"}
    resources = [
        {"resourceType": "Patient", "id": "p1", "birthDate": "1950-03-01"},
        {
            "resourceType": "EpisodeOfCare",
            "id": "e",
            "status": "finished",
            "patient": ref,
            "period": {"start": "1980-01-01", "end": "1983-01-01"},
        },
        obs("sex", "p1", concept(local, "SEX"), "1980-01-01", valueString="female"),
        obs("b1", "p1", concept(local, "LAB//BILIRUBIN"), "1980-01-01", valueQuantity=qty(1.4, "mg/dL")),
        obs("b2", "p1", concept(local, "LAB//BILIRUBIN"), "1981-01-01", valueQuantity={"value": 21.0, "unit": "mg/L"}),
        obs("a1", "p1", concept(local, "LAB//ALBUMIN"), "1980-01-01", valueQuantity=qty(35.0, "g/L")),
    ]
    file = write_json(tmp_path / "p1.json", bundle(resources))
    args = ["forecast", "--model", str(untrained_model_dir), "--data", str(file), "--patient", "p1", "--n-samples", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "subject p1: forecast from t = 1.00 years" in result.output
