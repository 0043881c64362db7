"""FHIR export: every record part becomes the resource the mapping says, valid R4B, with the record's exact values."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from typer.testing import CliRunner

from vpatient.cli import app
from vpatient.data.fhir import FhirLayout, read_fhir, write_fhir
from vpatient.data.fhir.coding import BIRTH_TIME_EXTENSION, LOCAL_SYSTEM, RELATIVE_EPOCH, RELATIVE_TIME_TAG, UCUM_SYSTEM
from vpatient.data.meds import read_meds
from vpatient.data.meds.codes import CONFIG_FILE, MICROS_PER_DAY
from vpatient.datasets import load_dataset, synthetic_cohort
from vpatient.errors import OptionError, OutputExistsError, RecordValidationError
from vpatient.schemas import DatasetConfig, PatientRecord, parse_record

# --------------------------------------------------------------------------- helpers


def _resources(path: Path) -> Iterator[dict[str, Any]]:
    """Every resource written at ``path``: an NDJSON folder, a folder of Bundles, or one Bundle file."""
    files = [path] if path.is_file() else sorted(path.iterdir())
    for file in (f for f in files if f.name != CONFIG_FILE):
        if file.suffix == ".ndjson":
            for line in file.read_text(encoding="utf-8").splitlines():
                yield json.loads(line)
        else:
            bundle = json.loads(file.read_text(encoding="utf-8"))
            assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
            Bundle.model_validate(bundle)  # the whole Bundle, entries included, is valid R4B
            yield from (entry["resource"] for entry in bundle["entry"])


def _checked(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The resources at ``path`` by type, after checking each parses with its R4B model, ids are unique and references resolve."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in _resources(path):
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        by_type.setdefault(resource["resourceType"], []).append(resource)
    keys = [f"{kind}/{r['id']}" for kind, items in by_type.items() for r in items]
    assert len(keys) == len(set(keys)), "duplicate resource ids"
    known = set(keys)
    for items in by_type.values():
        for resource in items:
            for ref in _references(resource):
                assert ref in known, f"{resource['resourceType']}/{resource['id']} refers to missing {ref}"
    return by_type


def _references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node["reference"]
        for value in node.values():
            yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


def _of(by_type: dict[str, list[dict[str, Any]]], kind: str, subject_id: str) -> list[dict[str, Any]]:
    """The resources of ``kind`` that belong to ``subject_id``, in written order."""
    key = "patient" if kind == "EpisodeOfCare" else "subject"
    return [r for r in by_type.get(kind, []) if r[key]["reference"] == f"Patient/{subject_id}"]


def _when(record: PatientRecord, config: DatasetConfig, t: float) -> str:
    """The dateTime a record time must be written as: the index (or the epoch) plus t, to the microsecond, UTC.

    Rounded as MEDS timestamps are (``t * micros_per_unit``), so FHIR and MEDS agree.
    """
    origin = record.index_time or RELATIVE_EPOCH
    moment = origin + timedelta(microseconds=round(t * (MICROS_PER_DAY * config.time_unit.days)))
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _code(resource: dict[str, Any], key: str = "code") -> str:
    coding = resource[key]["coding"][0]
    assert coding["system"] == LOCAL_SYSTEM  # the shipped configs' codes are vpatient's own
    return coding["code"]


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())} if path.is_dir() else {path.name: path.read_bytes()}


def _assert_matches(record: PatientRecord, config: DatasetConfig, by_type: dict[str, list[dict[str, Any]]]) -> None:
    """Every part of ``record`` is in the resources, value for value, time for time, in canonical order."""
    record = record.in_canonical_order(config)
    sid = record.subject_id
    (patient,) = [p for p in by_type["Patient"] if p["id"] == sid]
    assert (RELATIVE_TIME_TAG in patient.get("meta", {}).get("tag", [])) == (record.index_time is None)
    (episode,) = _of(by_type, "EpisodeOfCare", sid)
    assert episode["period"] == {"start": _when(record, config, 0.0), "end": _when(record, config, record.end_of_followup)}
    codes = {v.name: v.codes[0] for v in config.variables}
    units = {v.name: v.unit for v in config.variables}
    observations = _of(by_type, "Observation", sid)
    measured = [o for o in observations if "valueQuantity" in o]
    embedded = [o for o in observations if "valueSampledData" in o]
    statics = [(name, value) for name, value in record.static.items() if codes[name] != "MEDS_BIRTH"]
    expected = [(codes[n], v, _when(record, config, 0.0), units[n]) for n, v in statics]
    expected += [(codes[o.variable], o.value, _when(record, config, o.time), units[o.variable]) for o in record.observations]
    got = [(_code(o), o["valueQuantity"]["value"], o["effectiveDateTime"], o["valueQuantity"].get("unit")) for o in measured]
    assert got == expected  # floats compare exactly: JSON keeps Python's repr
    for name, value in record.static.items():
        if codes[name] == "MEDS_BIRTH":
            born = patient["_birthDate"]["extension"][0]
            assert born["url"] == BIRTH_TIME_EXTENSION and born["valueDateTime"] == _when(record, config, -value)
            assert patient["birthDate"] == born["valueDateTime"][:10]
    studies = _of(by_type, "ImagingStudy", sid)
    assert [(s["started"], s["description"]) for s in studies] == [
        (_when(record, config, s.time), s.modality) for s in record.imaging
    ]
    assert [o["partOf"] for o in embedded] == [[{"reference": f"ImagingStudy/{s['id']}"}] for s in studies]
    assert [[float(x) for x in o["valueSampledData"]["data"].split()] for o in embedded] == [s.embedding for s in record.imaging]
    deaths = [e for e in record.events if codes[e.kind] == "MEDS_DEATH"]
    assert patient.get("deceasedDateTime") == (_when(record, config, deaths[0].time) if deaths else None)
    conditions = [(_code(c), c["onsetDateTime"]) for c in _of(by_type, "Condition", sid)]
    want = [(codes[h.code], _when(record, config, h.time)) for h in record.history]
    want += [(codes[e.kind], _when(record, config, e.time)) for e in record.events if codes[e.kind] != "MEDS_DEATH"]
    assert conditions == want
    statements = _of(by_type, "MedicationStatement", sid)
    got_doses = [
        (
            _code(m, "medicationCodeableConcept"),
            m["effectivePeriod"],
            m["dosage"][0]["doseAndRate"][0]["doseQuantity"]["value"],
            m["status"],
        )
        for m in statements
    ]
    want_doses = [
        (
            codes[e.treatment],
            {"start": _when(record, config, e.start)} | ({"end": _when(record, config, e.stop)} if e.stop is not None else {}),
            e.dose,
            "active" if e.stop is None else "completed",
        )
        for e in record.treatments
    ]
    assert got_doses == want_doses


# --------------------------------------------------------------------------- the mapping, resource by resource


@pytest.fixture()
def stamped(config: DatasetConfig, record_data: dict) -> PatientRecord:
    """The shared record (every variable kind) with a calendar index time and a split."""
    return parse_record({**record_data, "index_time": datetime(2010, 5, 17, 8, 30), "split": "train"}, config)


def test_each_record_part_becomes_its_resource(config, stamped, tmp_path):
    path = write_fhir([stamped], config, tmp_path / "p1.json")
    by_type = _checked(path)
    assert {k: len(v) for k, v in by_type.items()} == {
        "Patient": 1,
        "EpisodeOfCare": 1,
        "Observation": 7,  # sex (at the index), 5 measurements, the CT embedding
        "ImagingStudy": 1,
        "Condition": 1,
        "MedicationStatement": 1,
    }
    (patient,) = by_type["Patient"]
    assert patient["meta"] == {"tag": [{"system": "urn:vpatient:split", "code": "train"}]}  # calendar times: no relative tag
    # age 61.5 years at an index of 2010-05-17 08:30: born 61.5 * 365.25 days earlier, to the microsecond
    assert patient["_birthDate"]["extension"][0]["valueDateTime"] == "1948-11-15T11:30:00.000000Z"
    assert patient["birthDate"] == "1948-11-15"
    assert patient["deceasedDateTime"] == "2013-05-17T02:30:00.000000Z"  # death at 3 years
    bilirubin = next(o for o in by_type["Observation"] if o["code"]["coding"][0]["code"] == "LAB//BILI")
    assert bilirubin["valueQuantity"] == {"value": 1.2, "unit": "mg/dl", "system": UCUM_SYSTEM, "code": "mg/dl"}
    assert bilirubin["effectiveDateTime"] == "2010-05-17T08:30:00.000000Z" and bilirubin["status"] == "final"
    ascites = next(o for o in by_type["Observation"] if o["code"]["coding"][0]["code"] == "SIGN//ASCITES")
    assert ascites["valueQuantity"] == {"value": 0.0}  # no unit in the config: none written
    (statement,) = by_type["MedicationStatement"]
    assert statement["effectivePeriod"] == {"start": "2010-05-17T08:30:00.000000Z", "end": "2011-11-16T05:30:00.000000Z"}
    assert statement["dosage"] == [{"doseAndRate": [{"doseQuantity": {"value": 1.0}}]}]
    assert [r["id"] for r in _resources(path)] == ["p1"] + [f"p1-{n}" for n in range(11)]
    _assert_matches(stamped, config, by_type)


def test_relative_times_start_at_the_epoch_with_the_tag(config, record_data, tmp_path):
    record = parse_record(record_data, config)
    by_type = _checked(write_fhir([record], config, tmp_path / "fhir"))
    (patient,) = by_type["Patient"]
    assert patient["meta"]["tag"] == [RELATIVE_TIME_TAG]
    assert by_type["EpisodeOfCare"][0]["period"]["start"] == "2000-01-01T00:00:00.000000Z"
    _assert_matches(record, config, by_type)


def test_units_get_a_ucum_code_only_when_plainly_ucum(config, record_data, tmp_path):
    variables = [v.model_dump() for v in config.variables]
    units = {"bilirubin": "10*3/uL", "albumin": "g per decilitre"}
    changed = DatasetConfig.model_validate(
        {**config.model_dump(), "variables": [{**v, "unit": units.get(v["name"], v["unit"])} for v in variables]}
    )
    by_type = _checked(write_fhir([parse_record(record_data, changed)], changed, tmp_path / "fhir"))
    quantities = {}
    for o in by_type["Observation"]:  # the first of each code (bilirubin: 1.2 at the index)
        quantities.setdefault(o["code"]["coding"][0]["code"], o.get("valueQuantity"))
    assert quantities["LAB//BILI"] == {"value": 1.2, "unit": "10*3/uL", "system": UCUM_SYSTEM, "code": "10*3/uL"}
    assert quantities["LAB//ALB"] == {"value": 3.5, "unit": "g per decilitre"}  # the reader falls back to the text


def test_vocabulary_codes_are_written_under_their_system(config, record_data, tmp_path):
    data = config.model_dump()
    for v in data["variables"]:
        if v["name"] == "bilirubin":
            v["codes"] = ["LOINC/1975-2"]
        if v["name"] == "diabetes":
            v["codes"] = ["MYDX/E11"]
    own = DatasetConfig.model_validate({**data, "code_systems": {"MYDX": "http://hospital.example/dx"}})
    by_type = _checked(write_fhir([parse_record(record_data, own)], own, tmp_path / "fhir"))
    codings = [o["code"]["coding"][0] for o in by_type["Observation"] + by_type["Condition"]]
    assert {"system": "http://loinc.org", "code": "1975-2"} in codings
    assert {"system": "http://hospital.example/dx", "code": "E11"} in codings


# --------------------------------------------------------------------------- shipped cohorts and layouts


def test_pbc_records_as_ndjson(tmp_path):
    pbc = load_dataset("pbc2")
    records = pbc.records[:6]
    path = write_fhir(iter(records), pbc.config, tmp_path / "pbc")  # a generator: written as it streams
    assert sorted(p.name for p in path.iterdir()) == [
        "Condition.ndjson",
        "EpisodeOfCare.ndjson",
        "MedicationStatement.ndjson",
        "Observation.ndjson",
        "Patient.ndjson",
        CONFIG_FILE,  # the folder describes itself: it reads back without --config
    ]
    assert DatasetConfig.load(path / CONFIG_FILE) == pbc.config
    assert load_dataset(path).records == read_fhir(path, pbc.config)
    by_type = _checked(path)
    assert [p["id"] for p in by_type["Patient"]] == [r.subject_id for r in records]
    for record in records:
        _assert_matches(record, pbc.config, by_type)


def test_synthetic_records_with_imaging_as_per_patient_bundles(tmp_path):
    synthetic = synthetic_cohort(n=8, seed=0)
    assert any(r.imaging for r in synthetic.records)
    path = write_fhir(synthetic.records, synthetic.config, tmp_path / "bundles", layout=FhirLayout.BUNDLES)
    assert sorted(p.name for p in path.iterdir()) == sorted([*(f"{r.subject_id}.json" for r in synthetic.records), CONFIG_FILE])
    by_type = _checked(path)
    assert len(by_type["ImagingStudy"]) == sum(len(r.imaging) for r in synthetic.records)
    for record in synthetic.records:
        _assert_matches(record, synthetic.config, by_type)


@pytest.mark.parametrize("layout", list(FhirLayout))
def test_same_records_give_identical_bytes(layout, tmp_path):
    synthetic = synthetic_cohort(n=5, seed=1)
    name = "out.json" if layout == FhirLayout.BUNDLE else "out"
    first = write_fhir(synthetic.records, synthetic.config, tmp_path / "a" / name, layout=layout)
    # the same records, listed in another valid order: what is written follows the canonical order
    shuffled = [
        r.model_copy(
            update={
                "observations": sorted(r.observations, key=lambda o: (o.time, o.variable)),
                "static": dict(reversed(r.static.items())),
            }
        )
        for r in synthetic.records
    ]
    assert shuffled != synthetic.records
    second = write_fhir(shuffled, synthetic.config, tmp_path / "b" / name, layout=layout)
    assert _files(first) == _files(second)


# --------------------------------------------------------------------------- refusals


def test_bad_records_are_refused_and_nothing_is_written(config, record_data, tmp_path):
    good = parse_record(record_data, config)
    unknown = parse_record({**record_data, "subject_id": "p2"}).model_copy(
        update={"static": {"age": 50.0, "weight": 80.0}}
    )  # validated without the config: 'weight' is no variable of it
    not_an_id = good.model_copy(update={"subject_id": "p_3"})
    two_deaths = parse_record(
        {**record_data, "subject_id": "p4", "events": [{"time": 2.0, "kind": "death"}, {"time": 3.0, "kind": "death"}]}
    )
    not_a_date = parse_record({**record_data, "subject_id": "p5", "index_time": datetime(9998, 6, 1)}, config)  # death in 10001
    records = [good, unknown, not_an_id, two_deaths, not_a_date, good.model_copy(update={"subject_id": "p6\n"}), good]
    for layout, name in ((FhirLayout.NDJSON, "fhir"), (FhirLayout.BUNDLES, "bundles"), (FhirLayout.BUNDLE, "one.json")):
        with pytest.raises(RecordValidationError) as caught:
            write_fhir(iter(records), config, tmp_path / name, layout=layout)
        message = str(caught.value)
        assert "nothing written" in message
        assert "subject p2: static = 'weight'" in message
        assert "subject p_3: subject_id = 'p_3': not a FHIR id" in message
        assert "subject p4: events" in message and "more than one death" in message
        assert "subject p5: index_time = datetime.datetime(9998, 6, 1, 0, 0): its times reach beyond the years 1-9999" in message
        assert "subject p6\n: subject_id = 'p6\\n': not a FHIR id" in message
        assert "subject p1: subject_id = 'p1': duplicate subject id (2 records)" in message
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_unless_overwrite(config, record_data, tmp_path):
    record = parse_record(record_data, config)
    out = write_fhir([record], config, tmp_path / "fhir")
    before = _files(out)
    other = record.model_copy(update={"subject_id": "p9"})
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        write_fhir([other], config, out)
    assert _files(out) == before
    write_fhir([other], config, out, overwrite=True)
    assert [p["id"] for p in _checked(out)["Patient"]] == ["p9"]
    bundle = write_fhir([record], config, tmp_path / "one.json")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        write_fhir([other], config, bundle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fhir", "one.json"]  # no staging left behind
    empty = write_fhir([], config, tmp_path / "none.json")
    assert json.loads(empty.read_text()) == {"resourceType": "Bundle", "type": "collection"}  # FHIR JSON has no empty arrays


# --------------------------------------------------------------------------- virtual cohorts and the CLI


def test_virtual_cohort_streams_to_the_same_fhir_as_its_records(untrained_simulator_dir, tmp_path):
    from vpatient.simulation import Simulator

    sim = Simulator.load(untrained_simulator_dir)
    fhir = sim.cohort(25, seed=4, years=3.0, out=tmp_path / "fhir", chunk_size=10, progress=False, format="fhir")
    meds = sim.cohort(25, seed=4, years=3.0, out=tmp_path / "meds", chunk_size=10, progress=False)
    assert sorted(p.name for p in fhir.out_dir.iterdir()) == ["events", "fhir", "simulation.json"]
    by_type = _checked(fhir.fhir_dir)
    assert [p["id"] for p in by_type["Patient"]] == [str(i) for i in range(25)]
    assert fhir.n_resources == sum(len(v) for v in by_type.values())
    # chunk by chunk, joined in order: byte for byte what write_fhir makes of the same patients' records
    records = read_meds(meds.meds_dir)
    again = write_fhir(records, sim.model.config, tmp_path / "again")
    assert _files(fhir.fhir_dir) == _files(again)
    for record in records:
        _assert_matches(record, sim.model.config, by_type)


def test_cli_exports_datasets_and_cohorts_as_fhir(untrained_simulator_dir, tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["datasets", "export", "synthetic", str(tmp_path / "syn"), "--n", "20", "--format", "fhir"])
    assert out.exit_code == 0, out.output
    assert "wrote 20 subjects of synthetic as FHIR" in out.stdout
    assert len(_checked(tmp_path / "syn")["Patient"]) == 20
    out = runner.invoke(app, ["datasets", "export", "synthetic", str(tmp_path / "one.json"), "--n", "20", "--format", "fhir"])
    assert out.exit_code == 0, out.output
    assert len(_checked(tmp_path / "one.json")["Patient"]) == 20
    out = runner.invoke(app, ["datasets", "export", "synthetic", str(tmp_path / "x"), "--format", "xml"])
    assert isinstance(out.exception, OptionError)  # `vpatient` prints it as one line and exits with 1
    assert str(out.exception) == "unknown --format 'xml'; choose one of 'meds', 'fhir'"
    assert not (tmp_path / "x").exists()
    args = ["simulate", "cohort", "--model", str(untrained_simulator_dir), "--n", "12", "--years", "2", "--no-progress"]
    out = runner.invoke(app, [*args, "--out", str(tmp_path / "cohort"), "--format", "fhir", "--seed", "3"])
    assert out.exit_code == 0, out.output
    assert "12 virtual patients" in out.stdout and "FHIR resources" in out.stdout
    assert len(_checked(tmp_path / "cohort" / "fhir")["Patient"]) == 12
