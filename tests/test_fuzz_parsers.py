"""Fuzzing every parser a user's file reaches: MEDS (CSV, parquet, directory), plan and record JSON, configs.

The property, for every generated input: the parser returns a valid result or raises the
project's own error (a VPatientError naming the file, or a RecordValidationError whose
problems name a field); never another exception, never a hang (hypothesis' deadline), and
never a silent acceptance of input that cannot be data (empty tables, binary garbage).

Inputs are realistic corruptions of small valid files: a MEDS export of a tiny synthetic
cohort, its config, a record and a plan. Runs are derandomized so CI is reproducible.
The fuzz tests run about 10,000 inputs in all (counts in FUZZ_EXAMPLES), so they are
marked slow; the regression tests at the end (one per case found, issue 17) are fast.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import shutil
import sys
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpatient.data.meds import iter_meds, read_meds, write_meds
from vpatient.data.synthetic import synthetic_cohort
from vpatient.errors import DataFormatError, RecordValidationError, VPatientError
from vpatient.inputs import MAX_INPUT_MB_ENV
from vpatient.schemas import DatasetConfig, PatientRecord, TreatmentPlan, parse_record
from vpatient.simulation.cli import load_plan
from vpatient.validation import validate_path

#: Examples per fuzz test: cheap JSON parsers get many, MEDS directory reads fewer.
FUZZ_EXAMPLES = {
    "plan": 4200,
    "record": 2200,
    "config_json": 1500,
    "config_yaml": 300,
    "meds_csv": 1000,
    "meds_parquet": 800,
    "meds_dir": 300,
    "checkpoint": 250,
    "upload": 600,
}


def fuzz_settings(name: str, deadline_seconds: float = 3.0) -> settings:
    """Reproducible settings: a fixed example count, no example database, and a deadline that catches a hang."""
    return settings(
        max_examples=FUZZ_EXAMPLES[name],
        derandomize=True,
        database=None,
        # Generous for a loaded 2-core CI machine; a hang (the 64 MB plan took minutes) is far beyond it.
        deadline=timedelta(seconds=deadline_seconds),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


# --------------------------------------------------------------------------- fixtures: one tiny valid export


class Inputs:
    """A tiny valid MEDS export and the valid JSON inputs of its config, built once for the module."""

    def __init__(self, root: Path):
        cohort = synthetic_cohort(n=5, seed=0)
        self.config: DatasetConfig = cohort.config
        self.records: list[PatientRecord] = cohort.records[:2]
        self.meds = write_meds(self.records, self.config, root / "meds")
        self.frame = pd.concat([pd.read_parquet(s) for s in sorted((self.meds / "data").rglob("*.parquet"))], ignore_index=True)
        self.record = json.loads(self.records[0].model_dump_json())
        drug = self.config.treatments[0]
        self.plan = {
            "name": "switch",
            "exposures": [{"treatment": drug, "start": 0.5, "stop": 2.0, "dose": 1.0}, {"treatment": drug, "start": 2.0}],
        }
        self.scratch = root / "scratch"
        self.scratch.mkdir()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return Inputs(tmp_path_factory.mktemp("fuzz"))


def put(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` as a new file: overwriting one in place makes some filesystems flush (10x slower)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)
    return path


def outcome(parse: Callable[[], Any], path: Path) -> Any:
    """What ``parse`` returns, or the VPatientError it raised, checked to say where the problem is.

    Any other exception propagates, and hypothesis reports the input that caused it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # plausibility and unknown-code warnings are valid outcomes
            return parse()
    except RecordValidationError as exc:
        assert exc.problems and all(p.field for p in exc.problems), str(exc)
        return exc
    except VPatientError as exc:
        assert path.name in str(exc), f"the error does not name the file: {exc}"
        return exc


# --------------------------------------------------------------------------- strategies

#: Finite but odd; hypothesis' floats add NaN and infinities, which JSON files hold as non-standard literals.
ODD_NUMBERS = [0, -1, 1e308, -1e308, 5e-324, 1e15, 2**63, 1e6]


def huge_int() -> int:
    """An integer past Python's 4,300-digit limit on int <-> str conversion (built, not listed: it has no repr)."""
    return 10**4400


odd_numbers = st.one_of(st.sampled_from(ODD_NUMBERS), st.builds(huge_int))

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    odd_numbers,
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
times = st.one_of(st.floats(-1e3, 1e3), odd_numbers, json_values)


def dumps(value: Any) -> bytes:
    """JSON text of ``value``, NaN and integers of any length included (both occur in files users have)."""
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # lifted only to write the file; the parser under test runs with the default
    try:
        return json.dumps(value).encode()
    finally:
        sys.set_int_max_str_digits(limit)


def deep_nesting(depth: int) -> bytes:
    return ("[" * depth + "]" * depth).encode()


@st.composite
def corrupted_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` damaged as files get damaged: truncated, overwritten, re-encoded, emptied, or replaced by binary."""
    kind = draw(st.sampled_from(["truncate", "overwrite", "insert", "encoding", "bom", "empty", "binary", "intact"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    if kind in ("overwrite", "insert"):
        at = draw(st.integers(0, len(data)))
        junk = draw(st.binary(min_size=1, max_size=16))
        return data[:at] + junk + data[at + (len(junk) if kind == "overwrite" else 0) :]
    if kind == "encoding":
        text = data.decode("utf-8", "replace") + draw(st.sampled_from(["é", "ü", "µ", "€"]))
        encoding = draw(st.sampled_from(["latin-1", "utf-16", "utf-32", "cp1252"]))
        return text.encode(encoding, "replace")
    if kind == "bom":
        return draw(st.sampled_from([codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF32_BE])) + data
    if kind == "empty":
        return b""
    if kind == "binary":
        return draw(st.binary(min_size=1, max_size=256))
    return data


@st.composite
def json_file(draw: st.DrawFn, shaped: st.SearchStrategy[Any]) -> bytes:
    """JSON bytes: a mis-typed document of the right shape, arbitrary JSON, deep nesting, or a damaged file."""
    kind = draw(st.sampled_from(["shaped", "shaped", "any", "deep", "damaged"]))
    if kind == "any":
        return dumps(draw(json_values))
    if kind == "deep":
        return deep_nesting(draw(st.sampled_from([50, 70, 500, 5_000, 200_000])))
    document = dumps(draw(shaped))
    return draw(corrupted_bytes(document)) if kind == "damaged" else document


def maybe(value: st.SearchStrategy[Any], valid: Any) -> st.SearchStrategy[Any]:
    """Mostly the valid value, sometimes anything."""
    return st.one_of(st.just(valid), st.just(valid), value)


def plans(inputs: Inputs) -> st.SearchStrategy[Any]:
    drug = inputs.config.treatments[0]
    exposure = st.fixed_dictionaries(
        {},
        optional={
            "treatment": maybe(st.one_of(st.just("not_a_drug"), json_values), drug),
            "start": maybe(times, 0.5),
            "stop": maybe(st.one_of(st.none(), times), 2.0),
            "dose": maybe(st.one_of(st.floats(allow_nan=True), json_values), 1.0),
            "extra": json_values,
        },
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "name": maybe(json_values, "plan"),
            "description": json_values,
            "exposures": maybe(st.lists(exposure, max_size=5) | json_values, inputs.plan["exposures"]),
        },
    )


def records(inputs: Inputs) -> st.SearchStrategy[Any]:
    """Record documents with some fields dropped, retyped or set to odd values, as a list or alone."""
    base = inputs.record
    entry = st.fixed_dictionaries(
        {},
        optional={
            "time": maybe(times, 0.0),
            "variable": maybe(json_values, "bilirubin"),
            "value": maybe(times, 1.0),
            "kind": json_values,
        },
    )
    fields = {key: maybe(json_values, value) for key, value in base.items()}
    fields["observations"] = maybe(st.lists(entry, max_size=4), base["observations"])
    fields["end_of_followup"] = maybe(times, base["end_of_followup"])
    one = st.fixed_dictionaries({}, optional=fields)
    return st.one_of(one, st.lists(one, max_size=3))


def configs(inputs: Inputs) -> st.SearchStrategy[Any]:
    """Config documents with fields dropped or retyped, and variables shuffled, dropped or damaged."""
    base = inputs.config.model_dump(mode="json")

    @st.composite
    def variables(draw: st.DrawFn) -> list[Any]:
        out = list(base["variables"])
        for _ in range(draw(st.integers(0, 3))):
            i = draw(st.integers(0, len(out) - 1))
            key = draw(st.sampled_from(["name", "codes", "kind", "plausible_range", "categories", "levels", "dimension"]))
            out[i] = {**out[i], key: draw(json_values)}
        return draw(st.permutations(out))[: draw(st.integers(0, len(out)))]

    fields = {key: maybe(json_values, value) for key, value in base.items()}
    fields["variables"] = maybe(variables(), base["variables"])
    return st.fixed_dictionaries({}, optional=fields)


# --------------------------------------------------------------------------- JSON and YAML fuzzing


@pytest.mark.slow
def test_fuzz_plan_json(inputs: Inputs) -> None:
    path = inputs.scratch / "plan.json"

    @fuzz_settings("plan")
    @given(data=json_file(plans(inputs)))
    def check(data: bytes) -> None:
        put(path, data)
        result = outcome(lambda: load_plan(path, inputs.config), path)
        assert isinstance(result, (TreatmentPlan, VPatientError))

    check()


@pytest.mark.slow
def test_fuzz_record_json(inputs: Inputs) -> None:
    path = inputs.scratch / "record.json"

    @fuzz_settings("record")
    @given(data=json_file(records(inputs)))
    def check(data: bytes) -> None:
        put(path, data)
        report = outcome(lambda: validate_path(path, inputs.config), path)
        if not isinstance(report, VPatientError):
            assert all(p.field for p in report.problems)
            assert report.ok == (not report.errors)

    check()


@pytest.mark.slow
def test_fuzz_config_json(inputs: Inputs) -> None:
    path = inputs.scratch / "config.json"

    @fuzz_settings("config_json")
    @given(data=json_file(configs(inputs)))
    def check(data: bytes) -> None:
        put(path, data)
        assert isinstance(outcome(lambda: DatasetConfig.load(path), path), (DatasetConfig, VPatientError))

    check()


@pytest.mark.slow
def test_fuzz_config_yaml(inputs: Inputs) -> None:
    path = inputs.scratch / "config.yaml"

    @st.composite
    def yaml_file(draw: st.DrawFn) -> bytes:
        document = draw(configs(inputs))
        try:
            text = yaml.safe_dump(document, sort_keys=False).encode()
        except (ValueError, OverflowError):  # a value YAML cannot write (an int past the digit limit)
            text = b"name: [unclosed"
        return draw(corrupted_bytes(text))

    @fuzz_settings("config_yaml")
    @given(data=yaml_file())
    def check(data: bytes) -> None:
        put(path, data)
        assert isinstance(outcome(lambda: DatasetConfig.load(path), path), (DatasetConfig, VPatientError))

    check()


# --------------------------------------------------------------------------- MEDS fuzzing

ODD_CELLS = [None, np.nan, np.inf, -np.inf, 1e308, -1e308, 5e-324, "abc", "", "1,5", "2020-13-45", "2020-01-01T00:00:00Z", True]


@st.composite
def corrupted_frames(draw: st.DrawFn, frame: pd.DataFrame) -> pd.DataFrame:
    """The MEDS table with a few realistic corruptions applied in turn."""
    df = frame.copy()
    for _ in range(draw(st.integers(1, 2))):
        # Damage to cells and rows is drawn more often than to columns, so that most tables reach the record checks.
        op = draw(
            st.sampled_from(
                [
                    *("cells", "cells", "cells", "shuffle", "duplicate", "delete", "unknown", "unknown"),
                    *("drop", "extra", "rename", "as_text", "head", "float_ids"),
                ]
            )
        )
        columns = list(df.columns)
        rows = np.arange(len(df))
        if op == "drop" and columns:
            df = df.drop(columns=draw(st.sampled_from(columns)))
        elif op == "extra":
            df[draw(st.sampled_from(["extra", "notes", "time "]))] = draw(st.sampled_from(ODD_CELLS))
        elif op == "rename" and columns:
            df = df.rename(columns={draw(st.sampled_from(columns)): draw(st.sampled_from(["Code", "subject", "timestamp", ""]))})
        elif op == "cells" and columns and len(df):
            column = draw(st.sampled_from(columns))
            chosen = draw(st.lists(st.sampled_from(list(rows)), min_size=1, max_size=5, unique=True))
            df[column] = df[column].astype(object)
            df.iloc[chosen, df.columns.get_loc(column)] = draw(st.sampled_from(ODD_CELLS))
        elif op == "as_text" and columns:
            column = draw(st.sampled_from(columns))
            df[column] = df[column].astype(str)
        elif op == "shuffle":
            df = df.iloc[np.random.default_rng(draw(st.integers(0, 2**16))).permutation(len(df))]
        elif op == "duplicate" and len(df):
            df = pd.concat([df, df.iloc[draw(st.lists(st.sampled_from(list(rows)), min_size=1, max_size=10))]])
        elif op == "delete" and len(df):
            df = df.drop(index=df.index[draw(st.lists(st.sampled_from(list(rows)), max_size=30, unique=True))])
        elif op == "unknown" and "code" in df.columns and len(df):
            chosen = draw(st.lists(st.sampled_from(list(rows)), min_size=1, max_size=5, unique=True))
            df["code"] = df["code"].astype(object)
            df.iloc[chosen, df.columns.get_loc("code")] = draw(
                st.sampled_from(["LAB//NEW", "MEDS_BIRTH", "MEDS_DEATH", "x" * 300])
            )
        elif op == "head":
            df = df.head(draw(st.integers(0, 5)))
        elif op == "float_ids" and "subject_id" in df.columns:
            df["subject_id"] = draw(st.sampled_from([1.5, 2.0, np.nan, -3.0]))
    return df.reset_index(drop=True)


def no_silent_garbage(result: Any, frame: pd.DataFrame | None) -> None:
    """A table without rows is never read as a valid, empty cohort."""
    if isinstance(result, list) and frame is not None:
        assert len(frame) > 0, "a table without rows was accepted"


@pytest.mark.slow
def test_fuzz_meds_csv(inputs: Inputs) -> None:
    path = inputs.scratch / "meds.csv"

    @st.composite
    def csv_file(draw: st.DrawFn) -> tuple[bytes, pd.DataFrame | None]:
        frame = draw(corrupted_frames(inputs.frame))
        separator, decimal = draw(st.sampled_from([(",", "."), (",", "."), (";", ","), ("\t", ".")]))
        text = frame.to_csv(index=False, sep=separator, decimal=decimal).encode()
        damaged = draw(corrupted_bytes(text))
        # Only an undamaged comma-separated file is the frame it came from.
        return damaged, frame if damaged == text and separator == "," else None

    @fuzz_settings("meds_csv")
    @given(case=csv_file(), batch_size=st.sampled_from([1, 7, 65_536]))
    def check(case: tuple[bytes, pd.DataFrame | None], batch_size: int) -> None:
        data, frame = case
        put(path, data)
        no_silent_garbage(outcome(lambda: read_meds(path, inputs.config), path), frame)
        outcome(lambda: list(iter_meds(path, inputs.config, batch_size=batch_size)), path)

    check()


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` as parquet, as a user's tool would: mixed-type columns become text, a repeated name is dropped."""
    frame = frame.loc[:, ~frame.columns.duplicated()]
    path.unlink(missing_ok=True)
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        mixed = {c: frame[c].map(lambda v: None if v is None else str(v)) for c in frame.columns if frame[c].dtype == object}
        table = pa.Table.from_pandas(frame.assign(**mixed), preserve_index=False)
    pq.write_table(table, path)


@pytest.mark.slow
def test_fuzz_meds_parquet(inputs: Inputs) -> None:
    path = inputs.scratch / "meds.parquet"

    @st.composite
    def parquet_file(draw: st.DrawFn) -> tuple[pd.DataFrame, Any]:
        return draw(corrupted_frames(inputs.frame)), draw(st.sampled_from(["intact", "intact", "damaged"]))

    @fuzz_settings("meds_parquet")
    @given(case=parquet_file(), damage=st.data())
    def check(case: tuple[pd.DataFrame, str], damage: st.DataObject) -> None:
        frame, how = case
        write_parquet(frame, path)
        if how == "damaged":
            good = path.read_bytes()
            bad = damage.draw(corrupted_bytes(good))
            put(path, bad)
            frame = frame if bad == good else None
        no_silent_garbage(outcome(lambda: read_meds(path, inputs.config), path), frame)

    check()


@pytest.mark.slow
def test_fuzz_meds_directory(inputs: Inputs) -> None:
    """One file of a MEDS directory damaged (or an extra one added): the directory reads, or the error names the file."""
    files = sorted(p.relative_to(inputs.meds) for p in inputs.meds.rglob("*") if p.is_file())
    targets = [*files, Path("data/extra.parquet"), Path("data/held_out/9.parquet")]
    target_dir = inputs.scratch / "meds_dir"

    @fuzz_settings("meds_dir")
    @given(target=st.sampled_from(targets), damage=st.data())
    def check(target: Path, damage: st.DataObject) -> None:
        shutil.rmtree(target_dir, ignore_errors=True)
        shutil.copytree(inputs.meds, target_dir)
        file = target_dir / target
        file.parent.mkdir(parents=True, exist_ok=True)
        original = file.read_bytes() if file.exists() else inputs.meds.joinpath(files[0]).read_bytes()
        put(file, damage.draw(corrupted_bytes(original)))
        try:
            report = outcome(lambda: validate_path(target_dir, None), file)
        except AssertionError:  # an error about the directory as a whole (a config it can no longer find) names it
            report = outcome(lambda: validate_path(target_dir, None), target_dir)
        if not isinstance(report, VPatientError):
            assert report.n_subjects is None or report.n_subjects > 0

    check()


# --------------------------------------------------------------------------- regression corpus (issue 17)


@pytest.fixture()
def meds_dir(inputs: Inputs, tmp_path: Path) -> Path:
    return Path(shutil.copytree(inputs.meds, tmp_path / "meds"))


def first_shard(meds: Path) -> Path:
    return sorted((meds / "data").rglob("*.parquet"))[0]


def refused(parse: Callable[[], Any], *fragments: str) -> str:
    """The message of the VPatientError ``parse`` raises, checked to hold every fragment."""
    with pytest.raises(VPatientError) as caught:
        parse()
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.parquet", b"", "0 bytes"),
        ("garbage.parquet", b"\x00\x01 not parquet" * 40, "not a readable parquet file"),
        ("json.parquet", b'{"subject_id": 1}', "not a readable parquet file"),
    ],
)
def test_unreadable_parquet_names_the_file(inputs: Inputs, tmp_path: Path, name: str, data: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    refused(lambda: read_meds(path, inputs.config), str(path), reason)
    refused(lambda: validate_path(path, inputs.config), str(path), reason)


def test_truncated_parquet_names_the_file(inputs: Inputs, tmp_path: Path) -> None:
    shard = first_shard(inputs.meds).read_bytes()
    path = tmp_path / "truncated.parquet"
    path.write_bytes(shard[: len(shard) // 2])
    refused(lambda: read_meds(path, inputs.config), str(path), "not a readable parquet file")
    refused(lambda: list(iter_meds(path, inputs.config)), str(path), "not a readable parquet file")


def test_empty_csv_names_the_file(inputs: Inputs, tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    refused(lambda: read_meds(path, inputs.config), str(path), "CSV file is empty", "header row")


def test_latin1_csv_says_it_is_not_utf8(inputs: Inputs, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    text = inputs.frame.to_csv(index=False) + "syn99,1.0,CAFÉ,1.0,\n"
    path.write_bytes(text.encode("latin-1"))
    refused(lambda: read_meds(path, inputs.config), str(path), "not UTF-8", "0xc9")


def test_semicolon_csv_says_meds_is_comma_separated(inputs: Inputs, tmp_path: Path) -> None:
    path = tmp_path / "semicolon.csv"
    path.write_text(inputs.frame.to_csv(index=False, sep=";", decimal=","), encoding="utf-8")
    refused(lambda: read_meds(path, inputs.config), str(path), "comma-separated", "';'")


@pytest.mark.parametrize("data", [b"", b"PAR1 garbage PAR1"])
def test_bad_extra_shard_names_the_shard(inputs: Inputs, meds_dir: Path, data: bytes) -> None:
    shard = meds_dir / "data" / "extra.parquet"
    shard.write_bytes(data)
    refused(lambda: read_meds(meds_dir, inputs.config), str(shard), "not a readable parquet file")
    refused(lambda: validate_path(meds_dir, None), str(shard))


@pytest.mark.parametrize("name", ["subject_splits.parquet", "codes.parquet"])
def test_corrupted_metadata_names_the_file(inputs: Inputs, meds_dir: Path, name: str) -> None:
    metadata = meds_dir / "metadata" / name
    metadata.write_bytes(b"garbage")
    refused(lambda: read_meds(meds_dir, inputs.config), str(metadata), "not a readable parquet file")
    refused(lambda: validate_path(meds_dir, None), str(metadata))


def test_codes_metadata_without_a_code_column_is_refused(inputs: Inputs, meds_dir: Path) -> None:
    metadata = meds_dir / "metadata" / "codes.parquet"
    pq.write_table(pa.table({"description": ["x"]}), metadata)
    refused(lambda: read_meds(meds_dir, inputs.config), str(metadata), "no 'code' column")


def test_tables_without_rows_are_refused(inputs: Inputs, tmp_path: Path) -> None:
    csv = tmp_path / "header.csv"
    csv.write_text(inputs.frame.head(0).to_csv(index=False), encoding="utf-8")
    parquet = tmp_path / "zero.parquet"
    pq.write_table(pa.Table.from_pandas(inputs.frame.head(0), preserve_index=False), parquet)
    for path in (csv, parquet):
        refused(lambda path=path: read_meds(path, inputs.config), str(path), "no data rows")
        refused(lambda path=path: validate_path(path, inputs.config), str(path), "no data rows")
        refused(lambda path=path: list(iter_meds(path, inputs.config)), str(path), "no data rows")


def test_non_numbers_name_their_rows_and_subjects(inputs: Inputs, tmp_path: Path) -> None:
    frame = inputs.frame.astype({"numeric_value": object})
    frame.loc[[3, 10], "numeric_value"] = "high"
    path = tmp_path / "words.csv"
    frame.to_csv(path, index=False)
    first, second = frame["subject_id"].iloc[3], frame["subject_id"].iloc[10]
    # Rows count from 1 after the header: frame row 3 is the file's row 4.
    refused(
        lambda: read_meds(path, inputs.config),
        str(path),
        "numeric_value holds non-numbers, such as 'high' (2 rows:",
        f"row 4 (subject {first}), row 11 (subject {second}))",
    )


def test_unparseable_times_name_their_row(inputs: Inputs, tmp_path: Path) -> None:
    times = inputs.frame["time"]  # the export's timestamps (standard MEDS), as text; static rows' stay empty
    frame = inputs.frame.assign(time=times.astype(str).where(times.notna(), None))
    frame.loc[5, "time"] = "2020-13-45"
    path = tmp_path / "times.csv"
    frame.to_csv(path, index=False)
    refused(lambda: read_meds(path, inputs.config), str(path), "ISO 8601", f"row 6 (subject {frame['subject_id'].iloc[5]})")


def test_streamed_rows_are_numbered_through_the_file(inputs: Inputs, tmp_path: Path) -> None:
    frame = inputs.frame.astype({"numeric_value": object})
    frame.loc[len(frame) - 1, "numeric_value"] = "oops"
    path = tmp_path / "late.csv"
    frame.to_csv(path, index=False)
    refused(lambda: list(iter_meds(path, inputs.config, batch_size=10)), str(path), f"row {len(frame)} ")


def test_shards_mixing_numbers_and_timestamps_are_named(inputs: Inputs, meds_dir: Path) -> None:
    (meds_dir / "metadata" / "dataset.json").unlink()  # another tool's directory: its timestamps are calendar times
    stamped = first_shard(meds_dir)
    numeric = meds_dir / "data" / "numeric.parquet"
    frame = pd.read_parquet(stamped).assign(subject_id=lambda f: f["subject_id"] + 100)
    frame["time"] = (frame["time"] - pd.Timestamp("2000-01-01")) / pd.Timedelta(days=1)
    frame.to_parquet(numeric)
    refused(
        lambda: read_meds(meds_dir, inputs.config),
        "numeric times and others timestamps",
        f"({numeric} has numbers, {stamped} timestamps)",
    )


def birth_config() -> DatasetConfig:
    return DatasetConfig.model_validate(
        {
            "name": "born",
            "variables": [
                {"name": "age", "codes": ["MEDS_BIRTH"], "kind": "static"},
                {"name": "lab", "codes": ["LAB"], "kind": "continuous"},
            ],
        }
    )


def birth_rows(n: int, born: int) -> pd.DataFrame:
    rows = []
    for sid in range(1, n + 1):
        rows += [{"subject_id": sid, "time": -50.0, "code": "MEDS_BIRTH"}] if sid <= born else []
        rows += [{"subject_id": sid, "time": 0.0, "code": "LAB", "numeric_value": 1.0}]
    return pd.DataFrame(rows, columns=["subject_id", "time", "code", "numeric_value"])


def test_every_birth_row_missing_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "unborn.parquet"
    birth_rows(4, born=0).to_parquet(path)
    message = refused(
        lambda: read_meds(path, birth_config()), str(path), "4 of 4 subjects have no 'MEDS_BIRTH' row", "(subjects 1, 2, 3, ...)"
    )
    assert "static.age" in message
    report = validate_path(path, birth_config())
    assert not report.ok and report.errors[0].owner == str(path)


def test_some_birth_rows_missing_is_a_warning_counting_them(tmp_path: Path) -> None:
    path = tmp_path / "some.parquet"
    birth_rows(4, born=3).to_parquet(path)
    report = validate_path(path, birth_config())
    assert report.ok and report.n_subjects == 4
    assert [str(w) for w in report.warnings] == [
        f"{path}: static.age = 'MEDS_BIRTH': 1 of 4 subjects have no 'MEDS_BIRTH' row, so no age (subject 4)"
    ]


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("deep.json", deep_nesting(100_000), "nests lists or objects too deeply"),
        ("nested.json", b'{"name": ' + deep_nesting(100) + b"}", "nests lists or objects too deeply"),
        ("digits.json", b'{"name": "x", "exposures": [{"treatment": "drug", "start": ' + b"9" * 4400 + b"}]}", "4300 digits"),
        ("utf16.json", json.dumps({"name": "x"}).encode("utf-16"), "UTF-16"),
        ("nan.json", b'{"name": "x", "exposures": [{"treatment": "drug", "start": NaN}]}', "NaN is not standard JSON"),
        ("cut.json", b'{"name": "x", "expo', "not valid JSON"),
    ],
)
def test_bad_json_names_the_file(inputs: Inputs, tmp_path: Path, name: str, data: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    refused(lambda: load_plan(path, inputs.config), str(path), "treatment plan", reason)
    refused(lambda: validate_path(path, inputs.config), str(path), "patient record", reason)


def test_utf8_bom_is_read(inputs: Inputs, tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(codecs.BOM_UTF8 + json.dumps(inputs.plan).encode())
    assert load_plan(path, inputs.config).name == "switch"


@pytest.mark.parametrize("start", [1e308, 1e6, -1e308])
def test_absurd_plan_times_are_refused_naming_the_field(inputs: Inputs, tmp_path: Path, start: float) -> None:
    path = tmp_path / "far.json"
    path.write_text(json.dumps({"name": "far", "exposures": [{"treatment": inputs.config.treatments[0], "start": start}]}))
    message = refused(lambda: load_plan(path, inputs.config), str(path), "exposures[0].start")
    assert "200 years" in message or "non-negative" in message


def test_absurd_record_times_are_refused_naming_subject_and_field(inputs: Inputs) -> None:
    record = {**inputs.record, "end_of_followup": 1e300}
    with pytest.raises(RecordValidationError) as caught:
        parse_record(record, inputs.config)
    assert [(p.subject_id, p.field) for p in caught.value.problems][-1] == (record["subject_id"], "end_of_followup")
    assert "200 years" in str(caught.value)


def test_huge_json_fails_fast_with_the_limit_named(inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "huge.json"
    exposure = {"treatment": inputs.config.treatments[0], "start": 1.0, "stop": 2.0, "dose": 1.0}
    path.write_text(json.dumps({"name": "huge", "exposures": [exposure] * 20_000}))  # about 1.4 MB
    monkeypatch.setenv(MAX_INPUT_MB_ENV, "1")
    refused(lambda: load_plan(path, inputs.config), str(path), "over the 1 MB limit", MAX_INPUT_MB_ENV)
    monkeypatch.setenv(MAX_INPUT_MB_ENV, "lots")
    refused(lambda: load_plan(path, inputs.config), MAX_INPUT_MB_ENV, "not a number")


def test_config_in_utf16_names_the_file(inputs: Inputs, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(inputs.config.model_dump_json().encode("utf-16"))
    refused(lambda: DatasetConfig.load(path), str(path), "UTF-16")


def test_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    """A "billion laughs" config: nine levels of nine aliases would expand to 387 million strings."""
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join([*lines, "name: x", "variables: *a8"]) + "\n", encoding="utf-8")
    refused(lambda: DatasetConfig.load(path), str(path), "expands to more than")


def test_stored_config_damaged_names_the_file(meds_dir: Path) -> None:
    stored = meds_dir / "metadata" / "vpatient_config.json"
    stored.write_bytes(b"[" * 10_000)
    refused(lambda: read_meds(meds_dir), str(stored))


def test_data_format_error_is_what_the_readers_raise(inputs: Inputs, tmp_path: Path) -> None:
    """The file-level errors are DataFormatError, so callers can tell a damaged file from bad records."""
    path = tmp_path / "x.parquet"
    path.write_bytes(b"")
    with pytest.raises(DataFormatError):
        read_meds(path, inputs.config)


# --------------------------------------------------------------------------- checkpoint directories


@pytest.fixture(scope="module")
def checkpoint(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained model of the tiny cohort's config, with its population model, saved as a checkpoint."""
    import torch

    from vpatient.data.batching import Scalers, layout_from_config
    from vpatient.model.latent_ode import LatentODE, ModelSettings
    from vpatient.simulation import Simulator
    from vpatient.virtual_patient import VirtualPatientModel

    records = synthetic_cohort(n=12, seed=1).records
    scalers = Scalers.fit(records, inputs.config)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        network = LatentODE(layout_from_config(inputs.config), ModelSettings(latent_dim=4, hidden=16), scalers.time_scale)
    directory = VirtualPatientModel(network, inputs.config, scalers).save(tmp_path_factory.mktemp("checkpoint") / "model")
    Simulator(VirtualPatientModel.load(directory), model_dir=directory).fit_population(records)
    return directory


def as_legacy(directory: Path) -> None:
    """Make ``directory`` a checkpoint saved before manifests and member digests: every parser then reads what it is given."""
    (directory / "manifest.json").unlink()
    meta = json.loads((directory / "model.json").read_text())
    meta.pop("manifest")
    meta["members"] = [{"file": m["file"]} for m in meta["members"]]
    (directory / "model.json").write_text(json.dumps(meta))


@st.composite
def mutated_json(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` (a JSON document) with one value somewhere inside replaced by another, or one key removed."""
    document = json.loads(data)
    parent: Any = None
    key: Any = None
    node = document
    while isinstance(node, (dict, list)) and node and draw(st.booleans()):
        parent, key = node, draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        node = node[key]
    if parent is None:
        return dumps(draw(json_values))
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[key]
    else:
        parent[key] = draw(st.one_of(json_values, odd_numbers, st.just(10**9), st.just(-1)))
    return dumps(document)


@pytest.mark.slow
def test_fuzz_checkpoint_directory(inputs: Inputs, checkpoint: Path) -> None:
    """One file of a checkpoint damaged, with its manifest (refused naming the file) or as an older checkpoint without one.

    Without the manifest every parser reads the damaged file: it loads, or the error names the file; a model that
    loads forecasts a patient or says why not.
    """
    from vpatient.simulation import Simulator

    files = sorted(p.name for p in checkpoint.iterdir() if p.is_file() and p.suffix in (".json", ".pt"))
    target_dir = inputs.scratch / "checkpoint"

    @fuzz_settings("checkpoint", deadline_seconds=10.0)  # a load and a forecast, where the others parse one file
    @given(name=st.sampled_from(files), legacy=st.booleans(), damage=st.data())
    def check(name: str, legacy: bool, damage: st.DataObject) -> None:
        shutil.rmtree(target_dir, ignore_errors=True)
        shutil.copytree(checkpoint, target_dir)
        if legacy:
            as_legacy(target_dir)
        file = target_dir / name
        if not file.exists():  # the manifest of a legacy checkpoint: nothing to damage
            return
        original = file.read_bytes()
        structured = name.endswith(".json") and damage.draw(st.booleans())
        put(file, damage.draw(mutated_json(original) if structured else corrupted_bytes(original)))
        result = outcome(lambda: Simulator.load(target_dir), file)
        if isinstance(result, VPatientError):
            return
        if not legacy:
            assert file.read_bytes() == original or name == "manifest.json", "a changed file passed the manifest check"
        result.model.refine_steps = 5  # the code of the default 60 steps, in a fraction of the time
        with contextlib.suppress(VPatientError):  # a forecast's own refusal names the patient, not the file
            result.model.forecast(inputs.records[0], horizon=1.0, n_samples=2)
        if result.population is not None:  # a population that loads draws virtual patients
            rng = np.random.default_rng(0)
            arms = result.population.draw_arms(4, rng)
            states, statics = result.population.draw_states(arms, rng)
            assert np.isfinite(states).all() and np.isfinite(statics).all()
            result.population.draw_exposures(arms, rng)
            result.population.visits_for(np.full(4, 1.0), rng.uniform(size=4))
            result.population.draw_censoring(4, rng)

    check()


# --------------------------------------------------------------------------- dashboard uploads


@pytest.mark.slow
def test_fuzz_dashboard_upload(inputs: Inputs) -> None:
    """What a clinician may drop on the upload box: a record, or a clean refusal naming the uploaded file.

    The upload parser's catch-all for unexpected exceptions ("cannot read it as ...") counts as a failure here: it
    keeps the page up, but it means a parser let through an error it should have explained.
    """
    from vpatient.dashboard.session import parse_upload

    record_json = dumps(inputs.record)
    one = inputs.frame[inputs.frame["subject_id"] == inputs.frame["subject_id"].iloc[0]]
    originals = {".json": record_json, ".csv": one.to_csv(index=False).encode()}
    write_parquet(one, inputs.scratch / "upload.parquet")
    originals[".parquet"] = (inputs.scratch / "upload.parquet").read_bytes()

    @fuzz_settings("upload")
    @given(suffix=st.sampled_from([*originals, ".txt", ""]), name=st.text(min_size=1, max_size=20), damage=st.data())
    def check(suffix: str, name: str, damage: st.DataObject) -> None:
        upload = f"{name}{suffix}"
        original = originals.get(suffix, record_json)
        if suffix == ".json":
            data = damage.draw(st.one_of(json_file(records(inputs)), mutated_json(original), corrupted_bytes(original)))
        elif suffix == ".csv":
            frame = damage.draw(corrupted_frames(one))
            data = damage.draw(corrupted_bytes(frame.to_csv(index=False).encode()))
        else:
            data = damage.draw(corrupted_bytes(original))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                record = parse_upload(upload, data, inputs.config)
        except RecordValidationError as exc:
            assert exc.problems and all(p.field for p in exc.problems), str(exc)
            return
        except VPatientError as exc:
            assert str(exc).startswith(f"{upload}:"), f"the error does not start with the uploaded file's name: {exc}"
            assert "cannot read it as" not in str(exc), f"a parser raised something unexplained: {exc}"
            assert "vpatient-upload-" not in str(exc), f"the error shows the scratch path: {exc}"
            return
        assert isinstance(record, PatientRecord) and (record.observations or record.imaging or record.static)

    check()
