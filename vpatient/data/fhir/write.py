"""FHIR out: :class:`~vpatient.schemas.PatientRecord` objects -> FHIR R4B resources, in Bundles or Bulk Data NDJSON.

Each record becomes the resources listed in :mod:`vpatient.data.fhir` (a Patient, an
EpisodeOfCare for its follow-up, Observations, ImagingStudies, Conditions and
MedicationStatements), each validated by its ``fhir.resources`` R4B model before it is
written. The JSON itself is written from the validated dicts with the standard library,
so every float is written as Python writes it (the shortest text that reads back to the
same number) and the same records always give the same bytes.

Three layouts (:class:`FhirLayout`): one Bundle of type ``collection`` in a ``.json``
file, a folder of per-patient Bundles ``{subject_id}.json``, or a folder of FHIR Bulk
Data NDJSON files, one per resource type (``Patient.ndjson``, ``Observation.ndjson``,
...), written record by record so a cohort of any size streams through. Folders are
built beside their target and renamed into place, files staged and renamed, so a failed
or refused write leaves nothing behind.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import math
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from vpatient.atomic import check_output_dir, check_output_file, move_into_place, staged_file
from vpatient.data.fhir.coding import (
    BIRTH_TIME_EXTENSION,
    RELATIVE_TIME_TAG,
    SPLIT_TAG_SYSTEM,
    UCUM_SYSTEM,
    variable_concept,
)
from vpatient.data.meds.codes import CONFIG_FILE, MEDS_DEATH, CodeBook
from vpatient.data.writable import WritableCheck
from vpatient.errors import Problem, RecordValidationError, choose
from vpatient.schemas import DatasetConfig, PatientRecord, TimeUnit, VariableKind, calendar_time
from vpatient.staging import staging_dir

__all__ = ["FhirLayout", "NdjsonWriter", "concatenate_ndjson", "write_fhir"]

log = logging.getLogger(__name__)

#: What a FHIR ``id`` may be (FHIR R4B ``id``: letters, digits, '-' and '.', 1 to 64 characters).
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
NDJSON_SUFFIX = ".ndjson"


class FhirLayout(StrEnum):
    """How records are laid out on disk."""

    BUNDLE = "bundle"  # one Bundle (type collection) in one .json file: a patient, or a few
    BUNDLES = "bundles"  # a folder of per-patient Bundles, {subject_id}.json
    NDJSON = "ndjson"  # a folder of FHIR Bulk Data NDJSON files, one per resource type


# --------------------------------------------------------------------------- public API


def write_fhir(
    records: Iterable[PatientRecord],
    config: DatasetConfig,
    path: str | Path,
    *,
    layout: FhirLayout | str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``records`` as FHIR R4B resources at ``path`` and return the path.

    ``layout`` (:class:`FhirLayout`) defaults to one Bundle when ``path`` ends in ``.json``
    and to Bulk Data NDJSON otherwise. Records are checked against ``config`` as they
    come (every problem of every record, and repeated subject ids, are reported together
    in one RecordValidationError) and nothing is written unless all are fine. An existing
    output is refused unless ``overwrite``. NDJSON and per-patient Bundles stream: only one
    record is held at a time, so ``records`` may be a generator over a large cohort.
    """
    path = Path(path)
    chosen = _layout_for(path, layout)
    if chosen == FhirLayout.BUNDLE:
        check_output_file(path, overwrite)
        _write_bundle_file(records, config, path)
    else:
        check_output_dir(path, overwrite)
        tmp = staging_dir(path)
        try:
            _write_folder(records, config, tmp, chosen)
            move_into_place(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return path


class NdjsonWriter:
    """Streams records into a folder of FHIR Bulk Data NDJSON files, one per resource type.

    For writers that stage the folder themselves (virtual cohorts write one folder per
    chunk and join them with :func:`concatenate_ndjson`). Records are checked as they come;
    once one has a problem nothing more is written, the rest are still checked, and
    :meth:`close` raises listing every problem. Files appear as their first resource does.
    """

    def __init__(self, folder: str | Path, config: DatasetConfig):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.n_records = 0
        self.n_resources = 0
        self._builder = _ResourceBuilder(config)
        self._files: dict[str, IO[str]] = {}

    def write(self, records: Iterable[PatientRecord]) -> None:
        """Check and write ``records``, one at a time."""
        for _, resources in self._builder.converted(records):
            self._write_resources(resources)

    def close(self) -> None:
        """Close every file; RecordValidationError when a record had a problem (the folder is then incomplete)."""
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        self._builder.check.raise_if_any()

    def __enter__(self) -> NdjsonWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:  # the caller's error wins; just release the files
            for handle in self._files.values():
                handle.close()

    def _write_resources(self, resources: list[dict[str, Any]]) -> None:
        for resource in resources:
            kind = resource["resourceType"]
            handle = self._files.get(kind)
            if handle is None:
                handle = self._files[kind] = open(self.folder / f"{kind}{NDJSON_SUFFIX}", "w", encoding="utf-8", newline="\n")
            handle.write(_compact(resource) + "\n")
            self.n_resources += 1
        self.n_records += 1


def concatenate_ndjson(parts: Sequence[Path], folder: Path) -> None:
    """Join the NDJSON folders ``parts`` (in order) into ``folder``: one file per resource type, parts removed.

    Files are copied in blocks, so memory stays bounded however large the parts.
    """
    folder.mkdir(parents=True, exist_ok=True)
    kinds = sorted({file.name for part in parts for file in part.glob(f"*{NDJSON_SUFFIX}")})
    for name in kinds:
        with open(folder / name, "wb") as out:
            for part in parts:
                piece = part / name
                if piece.is_file():
                    with open(piece, "rb") as source:
                        shutil.copyfileobj(source, out)
    for part in parts:
        shutil.rmtree(part, ignore_errors=True)


# --------------------------------------------------------------------------- layouts


def _layout_for(path: Path, layout: FhirLayout | str | None) -> FhirLayout:
    if layout is None:
        return FhirLayout.BUNDLE if path.suffix.lower() == ".json" else FhirLayout.NDJSON
    return choose(FhirLayout, layout, "FHIR layout")


def _write_folder(records: Iterable[PatientRecord], config: DatasetConfig, folder: Path, layout: FhirLayout) -> None:
    # the config travels with the resources, so the folder reads back without --config (as MEDS does)
    config.save(folder / CONFIG_FILE)
    if layout == FhirLayout.NDJSON:
        with NdjsonWriter(folder, config) as writer:
            writer.write(records)
        log.info("wrote %d subjects (%d resources) as FHIR NDJSON", writer.n_records, writer.n_resources)
        return
    builder, n = _ResourceBuilder(config), 0
    for record, resources in builder.converted(records):
        (folder / f"{record.subject_id}.json").write_text(_indented(_bundle(resources, record.subject_id)), encoding="utf-8")
        n += 1
    builder.check.raise_if_any()
    log.info("wrote %d subjects as FHIR Bundles", n)


def _write_bundle_file(records: Iterable[PatientRecord], config: DatasetConfig, path: Path) -> None:
    builder = _ResourceBuilder(config)
    resources = [resource for _, of_record in builder.converted(records) for resource in of_record]
    builder.check.raise_if_any()
    with staged_file(path) as staging:
        staging.write_text(_indented(_bundle(resources, None)), encoding="utf-8")


def _bundle(resources: list[dict[str, Any]], bundle_id: str | None) -> dict[str, Any]:
    shell: dict[str, Any] = {"resourceType": "Bundle", **({"id": bundle_id} if bundle_id else {}), "type": "collection"}
    _validated(shell, None)  # the entries were validated one by one
    if not resources:  # FHIR JSON has no empty arrays
        return shell
    return {**shell, "entry": [{"resource": resource} for resource in resources]}


def _compact(resource: dict[str, Any]) -> str:
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _indented(resource: dict[str, Any]) -> str:
    return json.dumps(resource, ensure_ascii=False, indent=2, allow_nan=False) + "\n"


# --------------------------------------------------------------------------- records -> resources


@functools.cache
def _models() -> dict[str, Any]:
    """The R4B model of each resource type written (imported on first use: fhir.resources takes a while)."""
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.condition import Condition
    from fhir.resources.R4B.episodeofcare import EpisodeOfCare
    from fhir.resources.R4B.imagingstudy import ImagingStudy
    from fhir.resources.R4B.medicationstatement import MedicationStatement
    from fhir.resources.R4B.observation import Observation
    from fhir.resources.R4B.patient import Patient

    models = (Bundle, Condition, EpisodeOfCare, ImagingStudy, MedicationStatement, Observation, Patient)
    return {model.__name__: model for model in models}


def _validated(resource: dict[str, Any], subject_id: str | None) -> dict[str, Any]:
    """``resource`` itself, once its R4B model accepts it; RecordValidationError naming type, id and field otherwise."""
    from pydantic import ValidationError

    kind = resource["resourceType"]
    try:
        _models()[kind].model_validate(resource)
    except ValidationError as exc:
        problems = [
            Problem(
                subject_id, f"{kind}/{resource.get('id', '?')}.{'.'.join(map(str, err['loc']))}", err.get("input"), err["msg"]
            )
            for err in exc.errors(include_url=False)
        ]
        raise RecordValidationError(problems, header="records could not be written as valid FHIR; nothing written") from None
    return resource


class _ResourceBuilder:
    """Turns records of one config into FHIR resources (the mapping of :mod:`vpatient.data.fhir`)."""

    def __init__(self, config: DatasetConfig):
        self.config = config
        self.book = CodeBook(config)
        self.deaths = {spec.name for spec in config.of_kind(VariableKind.EVENT) if MEDS_DEATH in spec.codes}
        self.concepts = {spec.name: variable_concept(spec, config) for spec in config.variables}
        self.check = WritableCheck(config)

    def converted(self, records: Iterable[PatientRecord]) -> Iterator[tuple[PatientRecord, list[dict[str, Any]]]]:
        """Each record with its resources, once it passes :attr:`check` (the config's rules and :meth:`problems`).

        After the first record with a problem nothing more is converted, but every record is
        still checked, so ``check.raise_if_any()`` at the end lists every problem.
        """
        for record in records:
            fits = self.check.check(record, *self.problems(record))
            if fits and self.check.ok:
                yield record, self.resources(record)

    def problems(self, record: PatientRecord) -> list[Problem]:
        """What keeps a record that fits its config from being written as FHIR."""
        sid = record.subject_id
        out = []
        if not _FHIR_ID.fullmatch(sid):
            out.append(Problem(sid, "subject_id", sid, "not a FHIR id (Patient.id: letters, digits, '-' and '.', at most 64)"))
        deaths = [e for e in record.events if e.kind in self.deaths]
        if len(deaths) > 1:
            out.append(
                Problem(sid, "events", [e.time for e in deaths], "more than one death (Patient.deceasedDateTime holds one)")
            )
        specs = self.book.specs  # the record may name variables the config lacks: the check reports those
        ages = [value for name, value in record.static.items() if name in specs and self.book.reads_birth(specs[name])]
        stops = [e.stop for e in record.treatments if e.stop is not None]
        times = [0.0, record.end_of_followup, *(h.time for h in record.history), *stops, *(-age for age in ages)]
        finite = [t for t in times if math.isfinite(t)]  # the record's own checks report the others
        clock = _Clock(record.index_time, self.config.time_unit)
        try:
            clock.moment(min(finite)), clock.moment(max(finite))
        except OverflowError:
            out.append(
                Problem(sid, "index_time", record.index_time, "its times reach beyond the years 1-9999 a FHIR dateTime holds")
            )
        return out

    def resources(self, record: PatientRecord) -> list[dict[str, Any]]:
        """Every resource of ``record`` (which has been checked), Patient first, each validated."""
        record = record.in_canonical_order(self.config)
        sid = record.subject_id
        clock = _Clock(record.index_time, self.config.time_unit)
        patient_ref = {"reference": f"Patient/{sid}"}
        ids = (_resource_id(sid, n) for n in itertools.count())
        out = [self._patient(record, clock)]

        def add(kind: str, **fields: Any) -> str:
            resource_id = next(ids)
            out.append({"resourceType": kind, "id": resource_id, **fields})
            return resource_id

        add(
            "EpisodeOfCare",
            status="finished",
            patient=patient_ref,
            period={"start": clock.at(0.0), "end": clock.at(record.end_of_followup)},
        )
        for name, value in record.static.items():
            if not self.book.reads_birth(self.book.spec(name)):
                add("Observation", **self._observed(name, value, clock.at(0.0), patient_ref))
        for obs in record.observations:
            add("Observation", **self._observed(obs.variable, obs.value, clock.at(obs.time), patient_ref))
        for study in record.imaging:
            when = clock.at(study.time)
            study_id = add("ImagingStudy", status="available", subject=patient_ref, started=when, description=study.modality)
            add(
                "Observation",
                partOf=[{"reference": f"ImagingStudy/{study_id}"}],
                status="final",
                code=self.concepts[study.modality],
                subject=patient_ref,
                effectiveDateTime=when,
                valueSampledData={
                    "origin": {"value": 0.0},
                    "period": 1.0,
                    "dimensions": 1,
                    "data": " ".join(repr(x) for x in study.embedding),
                },
            )
        for entry in record.history:
            add("Condition", code=self.concepts[entry.code], subject=patient_ref, onsetDateTime=clock.at(entry.time))
        for exposure in record.treatments:
            period = {"start": clock.at(exposure.start)}
            if exposure.stop is not None:
                period["end"] = clock.at(exposure.stop)
            dose = _quantity(exposure.dose, self.book.spec(exposure.treatment).unit)
            add(
                "MedicationStatement",
                status="active" if exposure.stop is None else "completed",
                medicationCodeableConcept=self.concepts[exposure.treatment],
                subject=patient_ref,
                effectivePeriod=period,
                dosage=[{"doseAndRate": [{"doseQuantity": dose}]}],
            )
        for event in record.events:
            if event.kind not in self.deaths:
                add("Condition", code=self.concepts[event.kind], subject=patient_ref, onsetDateTime=clock.at(event.time))
        return [_validated(resource, sid) for resource in out]

    def _patient(self, record: PatientRecord, clock: _Clock) -> dict[str, Any]:
        tags = [RELATIVE_TIME_TAG] if record.index_time is None else []
        if record.split is not None:
            tags.append({"system": SPLIT_TAG_SYSTEM, "code": record.split})
        patient: dict[str, Any] = {"resourceType": "Patient", "id": record.subject_id}
        if tags:
            patient["meta"] = {"tag": tags}
        for name, value in record.static.items():
            if self.book.reads_birth(self.book.spec(name)):
                born = clock.moment(-value)
                patient["birthDate"] = born.date().isoformat()
                patient["_birthDate"] = {"extension": [{"url": BIRTH_TIME_EXTENSION, "valueDateTime": _datetime_text(born)}]}
        for event in record.events:
            if event.kind in self.deaths:
                patient["deceasedDateTime"] = clock.at(event.time)
        return patient

    def _observed(self, name: str, value: float, when: str, patient_ref: dict[str, str]) -> dict[str, Any]:
        return {
            "status": "final",
            "code": self.concepts[name],
            "subject": patient_ref,
            "effectiveDateTime": when,
            "valueQuantity": _quantity(value, self.book.spec(name).unit),
        }


class _Clock:
    """A record's times as FHIR dateTimes: ``index_time + t`` (or :data:`RELATIVE_EPOCH` + t), to the microsecond, in UTC."""

    def __init__(self, index_time: datetime | None, unit: TimeUnit):
        self.index_time = index_time
        self.unit = unit

    def moment(self, t: float) -> datetime:
        # Rounded as MEDS timestamps are (vpatient.data.meds.write), so FHIR and MEDS agree to the microsecond.
        return calendar_time(self.index_time, t, self.unit)

    def at(self, t: float) -> str:
        return _datetime_text(self.moment(t))


def _datetime_text(moment: datetime) -> str:
    """A naive UTC datetime as a FHIR dateTime with all six fraction digits."""
    return moment.isoformat(timespec="microseconds") + "Z"


def _resource_id(subject_id: str, n: int) -> str:
    """The id of a subject's ``n``-th resource after its Patient: ``{subject_id}-{n}`` (a hash of long ids, to stay within 64)."""
    rid = f"{subject_id}-{n}"
    if len(rid) <= 64:
        return rid
    return f"{hashlib.sha256(subject_id.encode()).hexdigest()[:40]}-{n}"


def _quantity(value: float, unit: str | None) -> dict[str, Any]:
    """A Quantity in the variable's unit: UCUM system and code too when the unit is plainly UCUM, else the unit text alone."""
    quantity: dict[str, Any] = {"value": value}
    if unit:
        quantity["unit"] = unit
        if _is_ucum(unit):
            quantity["system"] = UCUM_SYSTEM
            quantity["code"] = unit
    return quantity


# --------------------------------------------------------------------------- UCUM

# A conservative reading of UCUM's grammar over the units of clinical measurements: a unit it
# accepts is UCUM; one it refuses may still be (it is then written as text alone, which
# readers take as it is).
_PREFIXES = "(?:da|[kdcmunpfhMGT])"
_METRIC = r"(?:mol|kat|bar|osm|m\[Hg\]|\[IU\]|\[iU\]|Pa|Hz|eq|g|L|l|U|s|m|J|W|V|A|K)"
_OTHER = r"(?:min|wk|mo|Cel|\[ppm\]|\[pH\]|\[degF\]|\[in_i\]|\[lb_av\]|h|d|a|%|10\*|10\^)"
_ANNOTATION = r"(?:\{[^{}]*\})"
_COMPONENT = rf"(?:(?:{_PREFIXES}?{_METRIC}|{_OTHER})(?:[+-]?\d+)?{_ANNOTATION}?|\d+{_ANNOTATION}?|{_ANNOTATION})"
_UCUM = re.compile(rf"^/?{_COMPONENT}(?:[./]{_COMPONENT})*$")


def _is_ucum(unit: str) -> bool:
    """True when ``unit`` is a UCUM unit this writer recognises (``mg/dL``, ``10*3/uL``, ``mm[Hg]``, ``%``)."""
    return bool(_UCUM.match(unit))
