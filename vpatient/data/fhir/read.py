"""FHIR in: Bundles or NDJSON (one file, or a folder such as a Bulk Data export) -> validated records.

The input is read once, resource by resource, and each resource becomes the MEDS rows it
stands for (:mod:`vpatient.data.fhir.rows`). The rows are staged on disk in buckets by
subject (a hash of the Patient id), so that a patient whose resources are spread over a
Bulk Data export's files (Patient.ndjson, Observation.ndjson, ...) lands in one bucket;
then each bucket is turned into records by the MEDS reader's
:func:`~vpatient.data.meds.frame_to_records`. Memory holds one bucket, not the input.

Problems of the resources themselves (malformed JSON, a resource its FHIR model refuses,
unknown codes, missing units, references to absent Patients, duplicated ids) are all
found in that first pass and raised together before any record is made. What only a
patient's rows together show (an embedding's study, the MEDS rules' checks of a record)
is found bucket by bucket.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import tempfile
import zlib
from array import array
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vpatient.data.fhir.rows import IMAGING_STUDY, Findings, ResourceReader, Row, Where
from vpatient.data.meds.codes import CONFIG_FILE, MEDS_BIRTH, CodeBook, Role, is_integer_ids
from vpatient.data.meds.read import frame_to_records, report_warnings
from vpatient.errors import DataFormatError, DatasetNotFoundError, Problem, RecordValidationError
from vpatient.schemas import DatasetConfig, PatientRecord, UnknownCodePolicy

__all__ = ["BUNDLE_TYPES", "is_fhir", "iter_fhir", "read_fhir"]

log = logging.getLogger(__name__)

#: Bundle types read (their entries are resources); a document or a message is not a set of records.
BUNDLE_TYPES = frozenset({"collection", "transaction", "searchset", "batch"})
#: Input bytes per staging bucket: a bucket's rows and records are what memory holds at a time
#: (some 3,000 patients of a typical export; 100-150 MB).
BUCKET_INPUT_BYTES = 16 * 2**20
#: Rows all buckets together keep in memory before writing them to their parquet files.
_PENDING_ROWS = 400_000
#: NDJSON lines per unit of work of the first pass.
_CHUNK_LINES = 2_000
_SUFFIXES = (".json", ".ndjson")
_SCHEMA = pa.schema(
    [
        ("subject_id", pa.string()),
        ("time", pa.timestamp("us")),
        ("code", pa.string()),
        ("numeric_value", pa.float64()),
        ("text_value", pa.string()),
    ]
)
#: How far into a .json file to look for "resourceType" when telling FHIR from a patient record's JSON.
_SNIFF_BYTES = 4096


# --------------------------------------------------------------------------- public


def is_fhir(path: str | Path) -> bool:
    """Whether ``path`` holds FHIR: an ``.ndjson`` file, a ``.json`` file whose object has a
    ``resourceType``, or a folder of those (and not a MEDS directory)."""
    path = Path(path)
    if path.is_dir():
        if (path / "data").is_dir():
            return False
        files = _fhir_files(path)
        return bool(files) and _looks_fhir(files[0])
    return path.is_file() and _looks_fhir(path)


def read_fhir(
    path: str | Path,
    config: DatasetConfig,
    warnings_out: list[Problem] | None = None,
    *,
    buckets: int | None = None,
    workers: int = 1,
) -> list[PatientRecord]:
    """Read FHIR (a Bundle or NDJSON file, or a folder of them) into validated records, one per Patient.

    Records come back sorted by subject id (numerically when every id is an integer), as
    :func:`~vpatient.data.meds.read_meds` returns them. Every problem of the input is
    raised together as one RecordValidationError; warnings go to ``warnings_out`` when
    given, else through :mod:`warnings`. ``buckets`` overrides how many parts the input is
    staged in (default: one per 16 MB of input). ``workers`` above 1 checks the resources in
    that many processes (started afresh, so a script calling this needs the
    ``if __name__ == "__main__":`` guard); the resources' checks are most of the time taken.
    """
    records: list[PatientRecord] = []
    problems: list[Problem] = []
    for batch, batch_problems in _batches(path, config, warnings_out, buckets, workers):
        records += batch
        problems += batch_problems
    if problems:
        raise RecordValidationError(problems, header=f"invalid FHIR data in {path}")
    ids = [r.subject_id for r in records]
    if is_integer_ids(ids):
        return sorted(records, key=lambda r: int(r.subject_id))
    return sorted(records, key=lambda r: r.subject_id)


def iter_fhir(
    path: str | Path,
    config: DatasetConfig,
    warnings_out: list[Problem] | None = None,
    *,
    buckets: int | None = None,
    workers: int = 1,
) -> Iterator[PatientRecord]:
    """Stream the records of FHIR input, one staging bucket at a time (sorted within a bucket).

    For inputs too big to hold as records: memory holds one bucket's rows and records.
    Problems of the resources are raised before the first record; problems a bucket's
    records show stop the stream at that bucket (:func:`read_fhir` lists them all). ``buckets``
    and ``workers`` as for :func:`read_fhir`.
    """
    for batch, problems in _batches(path, config, warnings_out, buckets, workers):
        if problems:
            raise RecordValidationError(problems, header=f"invalid FHIR data in {path} (streaming stops at the first bad part)")
        yield from batch


# --------------------------------------------------------------------------- the two passes


def _batches(
    path: str | Path, config: DatasetConfig, warnings_out: list[Problem] | None, buckets: int | None, workers: int
) -> Iterator[tuple[list[PatientRecord], list[Problem]]]:
    """The records of each staging bucket and their problems, after a first pass that checks every resource."""
    path = Path(path)
    if not path.exists():
        raise DatasetNotFoundError(f"FHIR input not found: {path}")
    files = _fhir_files(path) if path.is_dir() else [path]
    if not files:
        raise DataFormatError(f"{path}: no FHIR files (.json Bundles or .ndjson) in this folder")
    size = sum(f.stat().st_size for f in files)
    with tempfile.TemporaryDirectory(prefix="vpatient-fhir-") as scratch:
        staged = _Buckets(Path(scratch), buckets or max(1, math.ceil(size / BUCKET_INPUT_BYTES)))
        found = _stage(files, config, staged, workers, path, warnings_out)
        # Unknown codes were reported by resource; their rows stay, to place subjects in follow-up as in MEDS.
        quiet = config.model_copy(update={"unknown_codes": UnknownCodePolicy.IGNORE})
        made: set[str] = set()  # subjects with a record, or with problems reported
        book = CodeBook(config)
        for staged_frame in staged.frames():
            made.update(staged_frame["subject_id"].unique().tolist())
            frame, problems = _place_embeddings(staged_frame, book)
            frame = _dated_subjects(frame)
            try:
                records = (
                    frame_to_records(frame, quiet, splits=found.splits, warnings_out=warnings_out, source=str(path))
                    if len(frame)
                    else []
                )
            except RecordValidationError as exc:
                problems += exc.problems
            if problems:
                yield [], problems
                continue
            yield [_relative(r) if r.subject_id in found.relative else r for r in records], []
        empty = sorted(found.patients - made)
        if empty:
            shown = ", ".join(f"Patient/{sid}" for sid in empty[:3]) + (", ..." if len(empty) > 3 else "")
            message = f"{len(empty)} Patient(s) have no dated resource any variable reads, and are left out ({shown})"
            report_warnings([Problem(None, "Patient", None, message, "warning", owner=str(path))], warnings_out, UserWarning)


def _stage(
    files: list[Path], config: DatasetConfig, staged: _Buckets, workers: int, path: Path, warnings_out: list[Problem] | None
) -> Findings:
    """The first pass: every resource checked and staged as rows; raises every problem of the resources at once."""
    reader = ResourceReader(config)  # judges the whole input on what its parts found, merged into its findings
    keys = array("q")  # a hash of each Type/id, to find duplicated ids without keeping the ids
    for rows, part_keys, part in _first_pass(files, config, workers):
        for resource_rows in rows:
            staged.add(resource_rows)
        keys.extend(part_keys)
        reader.found.merge(part)
    staged.close()
    found = reader.found
    unknown = reader.unknown_problems()
    problems = found.problems + reader.finish() + _duplicate_problems(keys, files)
    if any(p.severity == "error" for p in [*problems, *unknown]):
        raise RecordValidationError([*problems, *unknown], header=f"invalid FHIR data in {path}")
    report_warnings(unknown, warnings_out)  # as UnknownCodeWarning, as the MEDS reader does
    report_warnings(problems, warnings_out, UserWarning)
    if found.skipped:
        kinds = ", ".join(f"{kind} ({n})" for kind, n in sorted(found.skipped.items()))
        log.info("%s: skipped %d resources of types no variable reads: %s", path, found.skipped.total(), kinds)
    return found


def _place_embeddings(frame: pd.DataFrame, book: CodeBook) -> tuple[pd.DataFrame, list[Problem]]:
    """Embedding rows staged without a time take their study's ``started`` (their text names the study); the
    studies' own rows go. An embedding whose study is absent or has no ``started`` is a problem."""
    marker = frame["code"].eq(IMAGING_STUDY)
    imaging = [c for c in frame["code"].unique() if (role := book.lookup(c)) is not None and role.role == Role.IMAGING]
    waiting = frame["time"].isna() & frame["text_value"].notna() & frame["code"].isin(imaging)
    if not (marker.any() or waiting.any()):
        return frame, []
    started = frame[marker].drop_duplicates("text_value").set_index("text_value")["time"]
    frame = frame.copy()
    frame.loc[waiting, "time"] = frame.loc[waiting, "text_value"].map(started)
    unplaced = waiting & frame["time"].isna()
    problems = [
        Problem(
            sid,
            "Observation.effectiveDateTime",
            study,
            f"an imaging embedding with no time, part of {study}, which is not in the input or has no started time",
        )
        for sid, study in frame.loc[unplaced, ["subject_id", "text_value"]].drop_duplicates().itertuples(index=False)
    ]
    frame.loc[waiting, "text_value"] = None
    return frame[~marker & ~unplaced], problems


def _dated_subjects(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of subjects with a dated row other than birth (others have no time axis, and are left out)."""
    dated = frame["time"].notna().to_numpy() & (frame["code"].to_numpy() != MEDS_BIRTH)
    return frame[frame["subject_id"].isin(frame["subject_id"].to_numpy()[dated])]


def _relative(record: PatientRecord) -> PatientRecord:
    """A record written without calendar time (tagged): its times stay relative, with no index_time."""
    return record.model_copy(update={"index_time": None})


def _duplicate_problems(keys: array, files: list[Path]) -> list[Problem]:
    """One problem per resource id given twice (same type and id); a second look at the input names them."""
    hashes, counts = np.unique(np.frombuffer(keys, dtype=np.int64), return_counts=True)
    repeated = set(hashes[counts > 1].tolist())
    if not repeated:
        return []
    places: dict[str, list[str]] = {}
    for _raw, where, _urls in (entry for chunk in _chunks(files) for entry in _entries(chunk, [])):
        if where.id is not None and _key(where.label) in repeated:
            places.setdefault(where.label, []).append(where.source)
    return [
        Problem(
            None,
            f"{label.partition('/')[0]}.id",
            label.partition("/")[2],
            f"the same resource id {len(seen)} times ({', '.join(seen[:3])})",
            owner=label,
        )
        for label, seen in places.items()
        if len(seen) > 1
    ]


# --------------------------------------------------------------------------- input files


def _fhir_files(folder: Path) -> list[Path]:
    """The FHIR files of a folder (not its subfolders), in name order."""
    # the vpatient config a folder export carries beside its resources (write_fhir) is no resource
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in _SUFFIXES and f.name != CONFIG_FILE)


def _looks_fhir(file: Path) -> bool:
    if file.suffix.lower() == ".ndjson":
        return True
    if file.suffix.lower() != ".json":
        return False
    try:
        with file.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES).removeprefix(b"\xef\xbb\xbf").lstrip()  # a UTF-8 byte-order mark is allowed
    except OSError:
        return False
    return head.startswith(b"{") and b'"resourceType"' in head


def _chunks(files: list[Path]) -> Iterator[list[tuple[bytes, str]]]:
    """The input as pieces of JSON text, each with where it is: NDJSON lines by the thousand, a .json file whole."""
    for file in files:
        if file.suffix.lower() != ".ndjson":
            try:
                yield [(file.read_bytes(), file.name)]
            except OSError as exc:
                raise DataFormatError(f"{file}: cannot read it ({exc.strerror or exc})") from None
            continue
        chunk: list[tuple[bytes, str]] = []
        with file.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    chunk.append((line, f"{file.name} line {number}"))
                if len(chunk) >= _CHUNK_LINES:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk


def _entries(
    chunk: list[tuple[bytes, str]], problems: list[Problem]
) -> Iterator[tuple[Mapping[str, Any], Where, Mapping[str, str]]]:
    """The resources of a chunk (Bundles unpacked), where each is, and its Bundle's entry URLs."""
    for text, source in chunk:
        yield from _unpack(_parse_json(text, source, problems), source, problems)


def _read_chunk(config: DatasetConfig, chunk: list[tuple[bytes, str]]) -> tuple[list[list[Row]], list[int], Findings]:
    """One chunk's rows (a list per resource), the keys of its resource ids, and what it found."""
    reader = ResourceReader(config)
    rows: list[list[Row]] = []
    keys: list[int] = []
    for raw, where, full_urls in _entries(chunk, reader.found.problems):
        if where.id is not None:
            keys.append(_key(where.label))
        resource_rows = reader.rows(raw, where, full_urls)
        if resource_rows:
            rows.append(resource_rows)
    return rows, keys, reader.found


def _first_pass(files: list[Path], config: DatasetConfig, workers: int) -> Iterator[tuple[list[list[Row]], list[int], Findings]]:
    """:func:`_read_chunk` over the input, in order; in ``workers`` processes when more than one.

    At most two chunks per worker are in flight, so a big input is never all in memory.
    """
    if workers <= 1:
        for chunk in _chunks(files):
            yield _read_chunk(config, chunk)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque[Future[tuple[list[list[Row]], list[int], Findings]]] = deque()
        for chunk in _chunks(files):
            pending.append(pool.submit(_read_chunk, config, chunk))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _key(label: str) -> int:
    """A 64-bit hash of a resource's Type/id, the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(label.encode(), digest_size=8).digest(), "little", signed=True)


def _parse_json(text: bytes, source: str, problems: list[Problem]) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        # an NDJSON line is one line: say where in it (its end, for a line cut short)
        where = f"character {exc.pos + 1} of the line" if " line " in source else f"line {exc.lineno}, column {exc.colno}"
        problems.append(Problem(None, "JSON", None, f"malformed JSON ({exc.msg} at {where})", owner=source))
    except (UnicodeDecodeError, RecursionError, ValueError) as exc:
        problems.append(Problem(None, "JSON", None, f"unreadable JSON ({type(exc).__name__}: {exc})", owner=source))
    return None


def _unpack(item: Any, source: str, problems: list[Problem]) -> Iterator[tuple[Mapping[str, Any], Where, Mapping[str, str]]]:
    """The resources of one parsed JSON value: itself, or a Bundle's entries."""
    if item is None:
        return
    kind = item.get("resourceType") if isinstance(item, dict) else None
    if not isinstance(kind, str):
        problems.append(
            Problem(None, "resourceType", None, "not a FHIR resource (a JSON object with a resourceType)", owner=source)
        )
        return
    raw_id = item.get("id")
    where = Where(kind, None if raw_id is None else str(raw_id), source)
    if kind != "Bundle":
        yield item, where, {}
        return
    if not isinstance(item.get("type"), str) or item["type"] not in BUNDLE_TYPES:
        allowed = ", ".join(sorted(BUNDLE_TYPES))
        problems.append(where.problem("type", item.get("type"), f"a Bundle of this type is not read (one of {allowed} expected)"))
        return
    entries = item.get("entry") or []
    if not isinstance(entries, list):
        problems.append(where.problem("entry", None, "not a list of entries"))
        return
    resources = [_entry_resource(e) for e in entries]
    full_urls = {
        e["fullUrl"]: f"{r.get('resourceType')}/{r.get('id')}"
        for e, r in zip(entries, resources, strict=True)
        if isinstance(e.get("fullUrl"), str) and isinstance(r, dict) and r.get("id") is not None
    }
    for number, resource in enumerate(resources):
        if resource is None:
            continue  # a transaction's DELETE, say: no resource
        for inner, inner_where, inner_urls in _unpack(resource, f"{source} entry {number}", problems):
            yield inner, inner_where, inner_urls or full_urls


def _entry_resource(entry: Any) -> Any:
    """A Bundle entry's resource (None without one); one without an id takes the uuid of its ``urn:uuid:`` fullUrl,
    as a transaction's POST entries are known only by it, and the other entries refer to them by it."""
    if not isinstance(entry, dict):
        return None
    resource, url = entry.get("resource"), entry.get("fullUrl")
    if isinstance(resource, dict) and resource.get("id") is None and isinstance(url, str) and url.startswith("urn:uuid:"):
        return {**resource, "id": url.removeprefix("urn:uuid:")}
    return resource


# --------------------------------------------------------------------------- staging


class _Buckets:
    """MEDS rows staged in parquet files, one per bucket of subjects (all of a subject's rows in one)."""

    def __init__(self, folder: Path, count: int):
        self.folder = folder
        self.count = count
        self.pending: list[list[Row]] = [[] for _ in range(count)]
        self.flush_at = max(5_000, _PENDING_ROWS // count)
        self.writers: list[pq.ParquetWriter | None] = [None] * count

    def add(self, rows: list[Row]) -> None:
        """Stage one resource's rows (all of one subject)."""
        bucket = zlib.crc32(rows[0][0].encode()) % self.count if self.count > 1 else 0
        pending = self.pending[bucket]
        pending += rows
        if len(pending) >= self.flush_at:
            self._flush(bucket)

    def _flush(self, bucket: int) -> None:
        rows = self.pending[bucket]
        if not rows:
            return
        columns = list(zip(*rows, strict=True))
        table = pa.table([pa.array(c, type=f.type) for c, f in zip(columns, _SCHEMA, strict=True)], schema=_SCHEMA)
        writer = self.writers[bucket]
        if writer is None:
            writer = self.writers[bucket] = pq.ParquetWriter(self.folder / f"bucket{bucket}.parquet", _SCHEMA)
        writer.write_table(table)
        self.pending[bucket] = []

    def close(self) -> None:
        for bucket in range(self.count):
            self._flush(bucket)
            writer = self.writers[bucket]
            if writer is not None:
                writer.close()

    def frames(self) -> Iterator[pd.DataFrame]:
        """Each bucket's rows as a MEDS frame (and the bucket's file removed)."""
        for bucket in range(self.count):
            file = self.folder / f"bucket{bucket}.parquet"
            if not file.exists():
                continue
            frame = pq.read_table(file).to_pandas()
            file.unlink()
            yield frame
