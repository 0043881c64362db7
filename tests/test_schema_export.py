"""The committed JSON Schemas in data_schemas/ match the models, and the examples validate."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from vpatient.schema_export import drifted_files, examples, export_schemas, rendered_files
from vpatient.schemas import BOUNDARY_TYPES

COMMITTED = Path(__file__).resolve().parents[1] / "data_schemas"


def test_committed_schemas_match_the_models():
    drifted = drifted_files(COMMITTED)
    assert not drifted, f"data_schemas/ is out of date ({', '.join(drifted)}): run `vpatient schemas export data_schemas`"


def test_drift_is_detected(tmp_path):
    export_schemas(tmp_path)
    assert drifted_files(tmp_path) == []
    target = tmp_path / "PatientRecord.schema.json"
    target.write_text(target.read_text().replace("subject_id", "patient_id"))
    assert drifted_files(tmp_path) == ["PatientRecord.schema.json"]


@pytest.mark.parametrize("name", sorted(BOUNDARY_TYPES))
def test_examples_validate_against_exported_schema_and_model(name):
    files = rendered_files()
    schema = json.loads(files[f"{name}.schema.json"])
    example = json.loads(files[f"examples/{name}.example.json"])
    jsonschema.validate(example, schema)
    assert BOUNDARY_TYPES[name].model_validate(example) == examples()[name]


def test_every_committed_example_fits_the_config_it_belongs_to():
    """The examples are of the PBC config (the DatasetConfig example): the record and the plan validate against it."""
    from vpatient.schemas import DatasetConfig, TreatmentPlan
    from vpatient.validation import validate_path

    folder = COMMITTED / "examples"
    config = DatasetConfig.load(folder / "DatasetConfig.example.json")
    report = validate_path(folder / "PatientRecord.example.json", config)
    assert report.problems == [] and report.n_subjects == 1
    TreatmentPlan.model_validate_json((folder / "TreatmentPlan.example.json").read_text()).check(config)
    variable = json.loads((folder / "VariableSpec.example.json").read_text())
    test = json.loads((folder / "DiagnosticTest.example.json").read_text())
    assert config.variable(variable["name"]).model_dump(mode="json") == variable
    assert config.test(test["name"]).model_dump(mode="json") == test
    assert {p.name for p in folder.iterdir()} == {f"{name}.example.json" for name in BOUNDARY_TYPES}  # none left unchecked


def test_schema_rejects_what_the_model_rejects():
    schema = json.loads(rendered_files()["PatientRecord.schema.json"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"subject_id": "x", "end_of_followup": 1.0, "surprise": 1}, schema)


def test_committed_benchmark_results_follow_their_schema():
    from vpatient.schema_export import _all_types

    by_benchmark = {
        t.model_fields["benchmark"].default: name for name, t in _all_types().items() if "benchmark" in t.model_fields
    }
    results = sorted((COMMITTED.parent / "benchmarks" / "results").glob("*.json"))
    kinds = set()
    for path in results:
        data = json.loads(path.read_text())
        schema = json.loads(rendered_files()[f"{by_benchmark[data['benchmark']]}.schema.json"])
        jsonschema.validate(data, schema)
        kinds.add(data["benchmark"])
    assert {"forecast", "training", "counterfactual", "pbc-trial", "cohort-fidelity", "simulate-speed", "test-selection"} <= kinds
