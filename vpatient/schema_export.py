"""Export the JSON Schema of every boundary type, with a valid example of each.

``data_schemas/`` in the repository is this module's output; a test regenerates it and
fails when the committed files drift from the pydantic models.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from vpatient.atomic import staged_files
from vpatient.schemas import BOUNDARY_TYPES, PatientRecord, TreatmentPlan

__all__ = ["drifted_files", "examples", "export_schemas", "rendered_files"]

_SCHEMA_BASE = "https://vpatient.dev/schemas/"


def examples() -> dict[str, BaseModel]:
    """One valid example instance of each boundary type.

    Every example belongs to the embedded PBC config (itself the ``DatasetConfig``
    example): the record and the plan validate against it, and a test checks they do.
    PBC has no imaging or history variables, so the record's ``imaging`` and ``history``
    are empty; ``PatientRecord.schema.json`` documents their fields.
    """
    from vpatient.data.pbc import pbc2_config

    pbc = pbc2_config()
    record = PatientRecord.model_validate(
        {
            "subject_id": "example-1",
            "static": {"age": 52.4, "sex": 0.0},
            "observations": [
                {"time": 0.0, "variable": "bilirubin", "value": 1.4},
                {"time": 0.0, "variable": "albumin", "value": 3.6},
                {"time": 0.0, "variable": "ascites", "value": 0.0},
                {"time": 0.0, "variable": "edema", "value": 0.5},
                {"time": 1.02, "variable": "bilirubin", "value": 2.1},
                {"time": 1.02, "variable": "albumin", "value": 3.3},
            ],
            "imaging": [],
            "history": [],
            "treatments": [{"treatment": "d_penicillamine", "start": 0.0, "stop": None, "dose": 1.0}],
            "events": [{"time": 4.2, "kind": "death"}],
            "end_of_followup": 4.2,
        }
    )
    plan = TreatmentPlan(
        name="stop D-penicillamine at 2 years",
        description="What if treatment had been withdrawn after two years?",
        exposures=[{"treatment": "d_penicillamine", "start": 0.0, "stop": 2.0, "dose": 1.0}],
    )
    return {
        "DatasetConfig": pbc,
        "VariableSpec": pbc.variable("bilirubin"),
        "DiagnosticTest": pbc.test("liver_panel"),
        "PatientRecord": record,
        "TreatmentPlan": plan,
    }


def rendered_files() -> dict[str, str]:
    """Relative path -> file content of everything ``export_schemas`` writes."""
    files: dict[str, str] = {}
    for name, model in _all_types().items():
        schema = model.model_json_schema(mode="validation")
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"{_SCHEMA_BASE}{name}.schema.json", **schema}
        files[f"{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    for name, instance in examples().items():
        files[f"examples/{name}.example.json"] = instance.model_dump_json(indent=2) + "\n"
    return files


def export_schemas(out_dir: str | Path) -> list[Path]:
    """Write every schema and example under ``out_dir``; returns the paths written.

    Every file is staged first and all are renamed into place at the end (a new folder
    whole; :func:`vpatient.atomic.staged_files`), so a killed export leaves the previous
    files or none.
    """
    out = Path(out_dir)
    files = {out / rel: text for rel, text in rendered_files().items()}
    with staged_files(list(files), root=out) as staged:
        for staging, text in zip(staged, files.values(), strict=True):
            staging.write_text(text, encoding="utf-8")
    return list(files)


def drifted_files(out_dir: str | Path) -> list[str]:
    """Files under ``out_dir`` that differ from (or are missing against) the models."""
    out = Path(out_dir)
    return [
        rel
        for rel, text in rendered_files().items()
        if not (out / rel).is_file() or (out / rel).read_text(encoding="utf-8") != text
    ]


def _all_types() -> dict[str, type[BaseModel]]:
    """Input types (a task's task.json among them), and the result types of every benchmark (so results are a documented format)."""
    from vpatient.benchmarks.registry import BENCHMARKS
    from vpatient.tasks import TaskSpec

    return {**BOUNDARY_TYPES, "TaskSpec": TaskSpec, **{cls.__name__: cls for cls in BENCHMARKS.values()}}
