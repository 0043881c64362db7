"""Is a MEDS directory standard MEDS? Checks against the ``meds`` package's schemas, as problems a user can act on.

Each data shard is checked with ``meds.DataSchema`` (columns and types, from the parquet
schema, without reading the rows), ``metadata/codes.parquet`` with
``meds.CodeMetadataSchema``, ``metadata/subject_splits.parquet`` with
``meds.SubjectSplitSchema`` and ``metadata/dataset.json`` with
``meds.DatasetMetadataSchema``. Each departure is one :class:`~vpatient.errors.Problem`
naming the file, the column, the type MEDS expects and the type found.

Severity: departures are warnings (vpatient still reads numeric times, float64 values and
str ids, as its numeric-time extension and many MEDS-like extracts have them; other MEDS
tools may refuse them), except in a directory that vpatient wrote as standard MEDS
(dataset.json's ``vpatient`` section says ``standard``): a departure there means the
directory was changed since, and vpatient's exact-value columns cannot be trusted to match,
so it is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import meds
import pyarrow as pa
import pyarrow.parquet as pq
from flexible_schema.exceptions import SchemaValidationError, TableValidationError

from vpatient.data.meds.codes import CODES_PATH, DATA_DIR, DATASET_PATH, LAYOUT_KEY, SPLITS_PATH, MedsLayout
from vpatient.errors import Problem
from vpatient.inputs import read_json_file

__all__ = ["meds_schema_problems"]

Severity = Literal["error", "warning"]


def meds_schema_problems(path: str | Path) -> list[Problem]:
    """Where the MEDS directory at ``path`` departs from the ``meds`` schemas (empty: standard MEDS)."""
    root = Path(path)
    metadata = _dataset_metadata(root)
    severity = _severity(metadata, str(root / DATASET_PATH))
    problems: list[Problem] = []
    for shard in sorted((root / DATA_DIR).rglob("*.parquet")):
        problems += _check(meds.DataSchema, pq.read_schema(shard), shard, severity)
    for schema, relative in ((meds.CodeMetadataSchema, CODES_PATH), (meds.SubjectSplitSchema, SPLITS_PATH)):
        file = root / relative
        if file.is_file():
            problems += _check(schema, pq.read_table(file), file, severity)
    if metadata is not None:
        problems += _check_dataset_metadata(metadata, root / DATASET_PATH, severity)
    return problems


def _dataset_metadata(root: Path) -> Any:
    file = root / DATASET_PATH
    return read_json_file(file, "MEDS dataset metadata") if file.is_file() else None


def _severity(metadata: Any, source: str) -> Severity:
    """Errors in a directory vpatient wrote as standard MEDS, warnings elsewhere (module docstring)."""
    if not isinstance(metadata, dict) or LAYOUT_KEY not in metadata:
        return "warning"
    layout = MedsLayout.from_dataset_metadata(metadata, source)
    return "error" if layout is not None and layout.standard else "warning"


def _problem(file: Path, column: str, found: object, message: str, severity: Severity) -> Problem:
    return Problem(None, column, found, message, severity, owner=str(file))


def _check(schema: Any, data: pa.Schema | pa.Table, file: Path, severity: Severity) -> list[Problem]:
    """``schema.validate(data)``'s findings, one problem per column (``data``: a parquet schema or a table)."""
    name = f"meds.{schema.__name__}"
    try:
        schema.validate(data)
    except SchemaValidationError as exc:
        problems = [
            _problem(file, column, None, f"missing: {name} requires column {column!r}", severity)
            for column in exc.missing_req_cols or []
        ]
        problems += [
            _problem(file, column, str(found), f"{name} expects type {want}, found {found}", severity)
            for column, want, found in exc.mistyped_cols or []
        ]
        problems += [
            _problem(file, column, None, f"{name} allows no columns beyond {', '.join(schema.columns())}", severity)
            for column in exc.disallowed_extra_cols or []
        ]
        return problems or [_problem(file, "schema", None, f"does not fit {name}: {_reason(exc)}", severity)]
    except TableValidationError as exc:
        problems = [
            _problem(file, column, None, f"{name} allows no nulls in column {column!r}", severity)
            for column in exc.nullability_none_err_cols or []
        ]
        problems += [
            _problem(file, column, None, f"{name} needs some non-null values in column {column!r}", severity)
            for column in exc.nullability_some_err_cols or []
        ]
        return problems or [_problem(file, "table", None, f"does not fit {name}: {_reason(exc)}", severity)]
    return []


def _check_dataset_metadata(metadata: Any, file: Path, severity: Severity) -> list[Problem]:
    name = "meds.DatasetMetadataSchema"
    if not isinstance(metadata, dict):
        return [_problem(file, file.name, type(metadata).__name__, f"{name} expects a JSON object", severity)]
    try:
        meds.DatasetMetadataSchema.validate(metadata)
    except TableValidationError as exc:
        # It wraps jsonschema's ValidationError, which names the key (``path``) and the rule broken.
        cause = exc.__cause__ or exc
        key = ".".join(str(part) for part in getattr(cause, "path", [])) or file.name
        return [_problem(file, key, metadata.get(key), f"does not fit {name}: {_reason(cause)}", severity)]
    return []


def _reason(exc: BaseException) -> str:
    """The first line of what a validator said (its cause's, when it only wrapped one)."""
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if exc.__cause__ is not None:
        text += f" ({_reason(exc.__cause__)})"
    return str(text).strip().splitlines()[0]
