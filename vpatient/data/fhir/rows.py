"""FHIR resources -> MEDS rows: what each resource the reader takes stands for.

One :class:`ResourceReader` sees every resource of an input once, validates it with its
``fhir.resources`` R4B model and returns the MEDS rows it stands for (the mapping table
of :mod:`vpatient.data.fhir`). What can only be judged over the whole input (references
to Patients never given, unknown codes, Patients without a birth date) is gathered on
the way, in memory bounded by the number of patients and codes, not of resources.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal

import pydantic

from vpatient.data.fhir.coding import BIRTH_TIME_EXTENSION, RELATIVE_TIME_TAG, SPLIT_TAG_SYSTEM, UCUM_SYSTEM, from_coding
from vpatient.data.fhir.units import UnitMismatch, convert
from vpatient.data.meds.codes import MEDS_BIRTH, MEDS_DEATH, CodeBook, Role, component_code, start_code, stop_code
from vpatient.errors import Problem
from vpatient.schemas import DEFAULT_DOSE, DatasetConfig, UnknownCodePolicy, VariableSpec, naive_utc

__all__ = ["GENDER", "IMAGING_STUDY", "Findings", "ResourceReader", "Row", "Where", "pydantic_problems"]

#: MEDS code under which ``Patient.gender`` is read (text value: the gender), when a variable lists it.
GENDER = "GENDER"

#: Internal code of a staged row giving an ImagingStudy's ``started`` (text value: ``ImagingStudy/{id}``), for
#: embedding Observations without a time of their own; the reader removes these rows before making records.
IMAGING_STUDY = "VPATIENT_FHIR_IMAGING_STUDY"

#: One MEDS row: subject, time (microseconds since 1970, UTC; None: a static row), code, numeric and text value.
Row = tuple[str, int | None, str, float | None, str | None]

#: Resources in these states say nothing happened, and are passed over.
_VOID_STATUSES = frozenset({"entered-in-error", "not-taken", "cancelled", "not-done"})
#: MedicationRequest intents that order nothing.
_NOT_ORDERS = frozenset({"proposal", "plan"})
#: A Condition's verificationStatus codes saying it is not so (a Condition has no status of its own).
_VOID_VERIFICATIONS = frozenset({"entered-in-error", "refuted"})
_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)
_PATIENT_REF = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_STUDY_REF = re.compile(r"(?:^|/)ImagingStudy/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
#: What an unknown medication given by reference (to a Medication resource, not read) is reported as.
_REFERENCED_MEDICATION = "(a Medication resource, by medicationReference)"
#: How many resources a problem about many of them names.
_SHOWN = 3


@dataclass(frozen=True)
class Where:
    """A resource's type, id and place in the input, for problems."""

    type: str
    id: str | None
    source: str

    @property
    def label(self) -> str:
        return f"{self.type}/{self.id if self.id is not None else '(no id)'}"

    def problem(self, field: str, value: Any, message: str, severity: Literal["error", "warning"] = "error") -> Problem:
        """A problem with this resource's ``field`` (a path below the resource, e.g. ``valueQuantity.unit``)."""
        path = f"{self.type}.{field}" if field else self.type
        return Problem(None, path, value, message, severity, owner=f"{self.label} ({self.source})")


def pydantic_problems(exc: pydantic.ValidationError, where: Where) -> list[Problem]:
    """The errors of a resource's FHIR model, one problem each, naming the resource and the field."""
    out = []
    for error in exc.errors():
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".")
        message = str(error["msg"]).removeprefix("Value error, ")
        out.append(where.problem(path, error.get("input"), f"not valid FHIR R4B: {message}"))
    return out


def micros(value: Any) -> int | None:
    """A FHIR date or dateTime as microseconds since 1970 in UTC (time-zone-aware values converted; a
    date, or a partial date such as ``2020-03``, is its first moment); None for None."""
    if value is None:
        return None
    if isinstance(value, str):  # a partial date the model keeps as text: 2020, 2020-03
        year, _, month = value.partition("-")
        value = date(int(year), int(month or 1), 1)
    if isinstance(value, datetime):
        value = naive_utc(value)
    else:
        value = datetime(value.year, value.month, value.day)
    return (value - _EPOCH) // _MICROSECOND


@dataclass
class _Unknown:
    """Resources whose codes no variable reads, by code."""

    field: str
    count: int = 0
    examples: tuple[str, ...] = ()


@dataclass
class Findings:
    """What reading resources found that the whole input must be judged on; parts read apart (by worker
    processes) merge into one."""

    problems: list[Problem] = field(default_factory=list)
    patients: set[str] = field(default_factory=set)
    relative: set[str] = field(default_factory=set)  # Patients tagged as having no calendar time
    splits: dict[str, str] = field(default_factory=dict)  # Patient -> its MEDS split, where a tag gives one
    referenced: dict[str, tuple[str, str]] = field(
        default_factory=dict
    )  # subject -> the first resource and field referring to it
    unborn: list[str] = field(default_factory=list)  # Patients without birthDate, where a variable reads MEDS_BIRTH
    skipped: Counter[str] = field(default_factory=Counter)  # resources of types no variable reads, by type
    unknown: dict[str, _Unknown] = field(default_factory=dict)  # resources of codes no variable reads, by code

    def merge(self, other: Findings) -> None:
        """Add what another part of the input found (read after this one)."""
        self.problems += other.problems
        self.patients |= other.patients
        self.relative |= other.relative
        self.splits |= other.splits
        for sid, first in other.referenced.items():
            self.referenced.setdefault(sid, first)
        self.unborn += other.unborn
        self.skipped.update(other.skipped)
        for code, seen in other.unknown.items():
            mine = self.unknown.setdefault(code, _Unknown(seen.field))
            mine.count += seen.count
            mine.examples = (mine.examples + seen.examples)[:_SHOWN]


class ResourceReader:
    """Turns FHIR resources (parsed JSON) into MEDS rows, and gathers the problems of the input."""

    def __init__(self, config: DatasetConfig):
        self.config = config
        self.book = CodeBook(config)
        self.found = Findings()
        self._handlers: dict[str, Callable[[Any, Where, Mapping[str, str]], list[Row]]] = {
            "Patient": self._patient,
            "EpisodeOfCare": self._episode,
            "Observation": self._observation,
            "ImagingStudy": self._imaging_study,
            "Condition": self._condition,
            "Procedure": self._procedure,
            "MedicationStatement": self._medication_statement,
            "MedicationRequest": self._medication_request,
            "MedicationAdministration": self._medication_administration,
        }
        self._reads_gender = self.book.lookup(GENDER) is not None
        self._birth = self.book.lookup(MEDS_BIRTH)
        self._reads_death = self.book.lookup(MEDS_DEATH) is not None

    # ------------------------------------------------------------------ entry point

    def rows(self, raw: Mapping[str, Any], where: Where, full_urls: Mapping[str, str]) -> list[Row]:
        """The rows of one resource; its problems go to ``found.problems``.

        ``full_urls`` maps a Bundle's entry URLs (``urn:uuid:...``) to ``Type/id``, for references
        written as such.
        """
        handler = self._handlers.get(where.type)
        if handler is None:
            self.found.skipped[where.type] += 1
            return []
        from fhir.resources.R4B import get_fhir_model_class

        try:
            resource = get_fhir_model_class(where.type).model_validate(raw)
        except pydantic.ValidationError as exc:
            self.found.problems += pydantic_problems(exc, where)
            return []
        if getattr(resource, "status", None) in _VOID_STATUSES or _refuted(resource):
            return []
        return handler(resource, where, full_urls)

    def finish(self) -> list[Problem]:
        """The problems only the whole input shows (missing Patients, birth dates), once read; unknown codes are
        :meth:`unknown_problems`."""
        problems = [
            Problem(None, path, f"Patient/{sid}", f"refers to Patient {sid!r}, which the input does not hold", owner=first)
            for sid, (first, path) in self.found.referenced.items()
            if sid not in self.found.patients
        ]
        if self.found.unborn and self._birth is not None:
            shown = ", ".join(f"Patient/{sid}" for sid in self.found.unborn[:_SHOWN]) + (
                ", ..." if len(self.found.unborn) > _SHOWN else ""
            )
            name = self._birth.spec.name
            everyone = len(self.found.unborn) == len(self.found.patients)
            problems.append(
                Problem(
                    None,
                    "Patient.birthDate",
                    None,
                    f"{len(self.found.unborn)} of {len(self.found.patients)} Patients have no birthDate, so no {name} ({shown})",
                    "error" if everyone else "warning",
                    owner="Patient",
                )
            )
        return problems

    def unknown_problems(self) -> list[Problem]:
        """One problem per code no variable reads, naming the first resources (severity per unknown_codes)."""
        policy = self.config.unknown_codes
        if policy == UnknownCodePolicy.IGNORE:
            return []
        severity: Literal["error", "warning"] = "error" if policy == UnknownCodePolicy.ERROR else "warning"
        out = []
        for code, seen in sorted(self.found.unknown.items()):
            more = ", ..." if seen.count > len(seen.examples) else ""
            out.append(
                Problem(
                    None,
                    seen.field,
                    code,
                    f"unknown code in {seen.count} resource(s) ({', '.join(seen.examples)}{more}); no variable of config "
                    f"{self.config.name!r} reads it (unknown_codes={policy!s})",
                    severity,
                    owner=seen.examples[0],
                )
            )
        return out

    # ------------------------------------------------------------------ shared parts

    def _subject(self, reference: Any, where: Where, full_urls: Mapping[str, str], field: str = "subject") -> str | None:
        """The Patient id a reference points to; None (and a problem) when it points to none."""
        text = getattr(reference, "reference", None)
        if text is None:
            self.found.problems.append(where.problem(field, None, "no reference to the Patient it is about"))
            return None
        found = _PATIENT_REF.search(full_urls.get(text, text))
        if found is None:
            self.found.problems.append(where.problem(f"{field}.reference", text, "does not refer to a Patient"))
            return None
        sid = found.group(1)
        self.found.referenced.setdefault(sid, (f"{where.label} ({where.source})", f"{where.type}.{field}.reference"))
        return sid

    def _code(
        self, concept: Any, where: Where, field: str, reads: Callable[[str], bool], count_unknown: bool = True
    ) -> str | None:
        """The MEDS code of a CodeableConcept: its first coding some variable reads, else its first coding.

        A code no variable reads is counted as unknown (the config's unknown_codes policy;
        unless ``count_unknown`` is False) and still returned, so that its row places the
        subject in follow-up, as in MEDS.
        """
        codes = [from_coding(c.system, c.code, self.config) for c in (getattr(concept, "coding", None) or []) if c.code]
        if not codes:
            self.found.problems.append(where.problem(field, getattr(concept, "text", None), "no coding with a code"))
            return None
        code = next((c for c in codes if reads(c)), None)
        if code is None:
            code = codes[0]
            if count_unknown:
                self._unknown(code, where, field)
        return code

    def _unknown(self, code: str, where: Where, field: str) -> None:
        """Count a resource whose code no variable reads (reported by code, per the unknown_codes policy)."""
        seen = self.found.unknown.setdefault(code, _Unknown(f"{where.type}.{field}"))
        seen.count += 1
        if len(seen.examples) < _SHOWN:
            seen.examples += (where.label,)

    def _reads(self, code: str) -> bool:
        return self.book.lookup(code) is not None or code in self.book.imaging

    def _reads_treatment(self, code: str) -> bool:
        found = self.book.lookup(start_code(code))
        return found is not None and found.role == Role.START

    def _time(self, value: Any, where: Where, field: str) -> int | None:
        stamp = micros(value)
        if stamp is None:
            self.found.problems.append(where.problem(field, None, "no time given"))
        return stamp

    def _quantity(self, quantity: Any, spec: VariableSpec | None, where: Where, field: str) -> float | None:
        """A Quantity's value in the variable's unit (None, and a problem, when it has no value or cannot be converted)."""
        if quantity.value is None:
            self.found.problems.append(where.problem(f"{field}.value", None, "a Quantity without a value"))
            return None
        value = float(quantity.value)
        if quantity.comparator is not None:  # "<0.1": a bound, read as the value itself, so say so
            self.found.problems.append(
                where.problem(
                    f"{field}.comparator",
                    quantity.comparator,
                    f"a bound ({quantity.comparator} {quantity.value}), read as the value {quantity.value}",
                    "warning",
                )
            )
        if spec is None or spec.unit is None:
            return value
        target = spec.unit
        unit = quantity.code if quantity.system == UCUM_SYSTEM and quantity.code else quantity.unit
        if unit is None:
            self.found.problems.append(where.problem(f"{field}.unit", None, f"no unit; {spec.name} is in {target!r}"))
            return None
        try:
            return convert(value, unit, target)
        except UnitMismatch as exc:
            self.found.problems.append(where.problem(f"{field}.unit", unit, f"{spec.name}: {exc}"))
            return None

    # ------------------------------------------------------------------ resource types

    def _patient(self, patient: Any, where: Where, full_urls: Mapping[str, str]) -> list[Row]:
        sid = patient.id
        if sid is None:
            self.found.problems.append(where.problem("id", None, "a Patient needs an id; other resources refer to it"))
            return []
        self.found.patients.add(sid)
        tags = (patient.meta.tag or []) if patient.meta is not None else []
        if any(t.system == RELATIVE_TIME_TAG["system"] and t.code == RELATIVE_TIME_TAG["code"] for t in tags):
            self.found.relative.add(sid)
        split = next((t.code for t in tags if t.system == SPLIT_TAG_SYSTEM and t.code), None)
        if split is not None:
            self.found.splits[sid] = split
        rows: list[Row] = []
        if self._birth is not None:
            born = _birth_time(patient)
            if born is None:
                self.found.unborn.append(sid)
            else:
                rows.append((sid, micros(born), MEDS_BIRTH, None, None))
        if self._reads_gender and patient.gender is not None:
            rows.append((sid, None, GENDER, None, patient.gender))
        if self._reads_death and patient.deceasedDateTime is not None:
            rows.append((sid, micros(patient.deceasedDateTime), MEDS_DEATH, None, None))
        elif self._reads_death and patient.deceasedBoolean:
            # Read as alive, the subject would look censored: a death with no time cannot be placed.
            self.found.problems.append(
                where.problem("deceasedBoolean", True, "a death without a time; give deceasedDateTime instead")
            )
        return rows

    def _episode(self, episode: Any, where: Where, full_urls: Mapping[str, str]) -> list[Row]:
        sid = self._subject(episode.patient, where, full_urls, "patient")
        period = episode.period
        start = self._time(period.start if period is not None else None, where, "period.start")
        if sid is None or start is None:
            return []
        rows: list[Row] = [(sid, start, self.book.index_code, None, None)]
        if period.end is not None:
            rows.append((sid, micros(period.end), self.book.eof_code, None, None))
        return rows

    def _observation(self, observation: Any, where: Where, full_urls: Mapping[str, str]) -> list[Row]:
        sid = self._subject(observation.subject, where, full_urls)
        when = observation.effectiveDateTime or observation.effectiveInstant
        if when is None and observation.effectivePeriod is not None:
            when = observation.effectivePeriod.start
        parts = self._components(observation, sid, when, where)
        # A panel (blood pressure) whose components are read is of use even if its own code is not.
        code = self._code(observation.code, where, "code", self._reads, count_unknown=not parts)
        if sid is None or code is None:
            return parts
        if code in self.book.imaging:
            return self._embedding(observation, sid, code, when, where, full_urls)
        found = self.book.lookup(code)
        if found is None:  # unknown (counted): its time only places the subject in follow-up
            return [(sid, micros(when), code, None, None), *parts] if when is not None else parts
        if when is None and found.role != Role.STATIC:
            self.found.problems.append(
                where.problem("effective[x]", None, "no time given (only static variables may go without)")
            )
            return []
        stamp = micros(when)
        if found.role not in (Role.STATIC, Role.OBSERVED):
            return [(sid, stamp, code, None, None), *parts]
        value, text = self._value(observation, found.spec, where)
        if value is None and text is None:
            return parts
        return [(sid, stamp, code, value, text), *parts]

    def _components(self, observation: Any, sid: str | None, when: Any, where: Where) -> list[Row]:
        """The rows of an Observation's components (a panel's parts, such as systolic and diastolic pressure)
        that variables read; unknown ones are counted as unknown codes."""
        rows: list[Row] = []
        for i, part in enumerate(observation.component or []):
            code = self._code(part.code, where, f"component[{i}].code", self._reads)
            found = self.book.lookup(code) if code is not None else None
            if sid is None or found is None or found.role not in (Role.STATIC, Role.OBSERVED):
                continue
            if when is None and found.role != Role.STATIC:
                self.found.problems.append(where.problem("effective[x]", None, f"no time given for component[{i}]"))
                continue
            value, text = self._value(part, found.spec, where, f"component[{i}].")
            if value is not None or text is not None:
                rows.append((sid, micros(when), code, value, text))
        return rows

    def _value(self, holder: Any, spec: VariableSpec, where: Where, prefix: str = "") -> tuple[float | None, str | None]:
        """The value[x] of an Observation (or of its component) as (number, text); (None, None) with a problem when
        it has none. ``prefix`` is the holder's path below the Observation (``component[0].``)."""
        if holder.valueQuantity is not None:
            return self._quantity(holder.valueQuantity, spec, where, f"{prefix}valueQuantity"), None
        if holder.valueInteger is not None:
            return float(holder.valueInteger), None
        if holder.valueBoolean is not None:
            return float(holder.valueBoolean), None
        if holder.valueString is not None:
            return None, holder.valueString
        text = _category(holder.valueCodeableConcept, spec) if holder.valueCodeableConcept is not None else None
        if text is not None:
            return None, text
        if holder.dataAbsentReason is not None:  # the source says why there is no value: nothing was measured
            return None, None
        self.found.problems.append(where.problem(f"{prefix}value[x]", None, f"no value for {spec.name}"))
        return None, None

    def _embedding(
        self, observation: Any, sid: str, code: str, when: Any, where: Where, full_urls: Mapping[str, str]
    ) -> list[Row]:
        """An imaging embedding: valueSampledData's vector, one row per component.

        Without a time of its own, it takes its study's ``started``: its rows are staged
        untimed with the study's key as text, and placed when the subject's rows meet.
        """
        sampled = observation.valueSampledData
        if sampled is None or sampled.data is None:
            self.found.problems.append(
                where.problem("valueSampledData", None, "no vector (valueSampledData.data) for an imaging embedding")
            )
            return []
        study = None
        if when is None:
            study = self._study(observation.partOf, full_urls)
            if study is None:
                self.found.problems.append(
                    where.problem(
                        "effectiveDateTime", None, "an imaging embedding with no time, and no partOf ImagingStudy to take it from"
                    )
                )
                return []
        try:
            vector = [float(x) for x in sampled.data.split()]
        except ValueError:
            self.found.problems.append(where.problem("valueSampledData.data", sampled.data, "not a list of decimal numbers"))
            return []
        origin = float(sampled.origin.value or 0) if sampled.origin is not None else 0.0
        factor = float(sampled.factor) if sampled.factor is not None else 1.0
        if origin != 0.0 or factor != 1.0:  # the stored numbers are the values themselves otherwise (kept bit for bit)
            vector = [origin + factor * x for x in vector]
        stamp = micros(when)
        return [(sid, stamp, component_code(code, j), x, study) for j, x in enumerate(vector)]

    @staticmethod
    def _study(part_of: Sequence[Any] | None, full_urls: Mapping[str, str]) -> str | None:
        """The ``ImagingStudy/{id}`` an Observation is part of, or None."""
        for reference in part_of or []:
            text = reference.reference or ""
            found = _STUDY_REF.search(full_urls.get(text, text))
            if found is not None:
                return f"ImagingStudy/{found.group(1)}"
        return None

    def _imaging_study(self, study: Any, where: Where, full_urls: Mapping[str, str]) -> list[Row]:
        # The study carries no value (its embedding Observation does), only the time an embedding may take.
        sid = self._subject(study.subject, where, full_urls)
        if sid is None or study.id is None or study.started is None or not self.book.imaging:
            return []
        return [(sid, micros(study.started), IMAGING_STUDY, None, f"ImagingStudy/{study.id}")]

    def _dated(self, resource: Any, where: Where, full_urls: Mapping[str, str], field: str, when: Any) -> list[Row]:
        """A coded resource at one time (Condition, Procedure): one row of its code."""
        sid = self._subject(resource.subject, where, full_urls)
        code = self._code(resource.code, where, "code", self._reads)
        if sid is None or code is None:
            return []
        if when is None and not self._reads(code):
            return []  # unknown (counted), and no time to place the subject with
        stamp = self._time(when, where, field)
        return [] if stamp is None else [(sid, stamp, code, None, None)]

    def _condition(self, condition: Any, where: Where, full_urls: Mapping[str, str]) -> list[Row]:
        when = condition.onsetDateTime or (condition.onsetPeriod.start if condition.onsetPeriod is not None else None)
        return self._dated(condition, where, full_urls, "onsetDateTime", when or condition.recordedDate)

    def _procedure(self, procedure: Any, where: Where, full_urls: Mapping[str, str]) -> list[Row]:
        period = procedure.performedPeriod
        when = procedure.performedDateTime or (period.start if period is not None else None)
        return self._dated(procedure, where, full_urls, "performedDateTime", when)

    def _exposure(
        self,
        resource: Any,
        where: Where,
        full_urls: Mapping[str, str],
        period: Any,
        period_field: str,
        dose: Any,
        dose_field: str,
    ) -> list[Row]:
        """A treatment exposure: START (with the dose) at the period's start, STOP at its end when it has one."""
        sid = self._subject(resource.subject, where, full_urls)
        if resource.medicationCodeableConcept is None:
            # A medicationReference points at a Medication resource, which is not read: the drug is unknown.
            self._unknown(_REFERENCED_MEDICATION, where, "medicationReference")
            return []
        code = self._code(resource.medicationCodeableConcept, where, "medicationCodeableConcept", self._reads_treatment)
        if sid is None or code is None:
            return []
        start = micros(period.start) if period is not None else None
        treatment = self.book.lookup(start_code(code))
        if treatment is None or treatment.role != Role.START:  # unknown (counted): its start places the subject
            return [(sid, start, code, None, None)] if start is not None else []
        if start is None:
            what = "a dose" if dose is not None else "an exposure"
            self.found.problems.append(where.problem(f"{period_field}.start", None, f"{what} without a period (its start)"))
            return []
        spec = treatment.spec
        if dose is None:
            self._dose_not_read(resource, where)
        amount = None if dose is None else self._quantity(dose, spec, where, dose_field)
        if dose is not None and amount is None:
            return []
        rows: list[Row] = [(sid, start, start_code(code), amount, None)]
        if period.end is not None:
            rows.append((sid, micros(period.end), stop_code(code), None, None))
        return rows

    def _dose_not_read(self, resource: Any, where: Where) -> None:
        """Warn when a medication without a doseQuantity gives its dose another way (a range, a rate), which is not
        read: the exposure gets the default dose, and the user must know it is not the dose given."""
        for path, holder in _dose_holders(resource, where.type):
            name = next((n for n in _UNREAD_DOSES if getattr(holder, n, None) is not None), None)
            if name is not None:
                message = f"a dose given as {name} is not read; the exposure gets the default dose {DEFAULT_DOSE:g}"
                self.found.problems.append(where.problem(f"{path}{name}", None, message, "warning"))
                return

    def _medication_statement(self, statement: Any, where: Where, full_urls: Mapping[str, str]) -> list[Row]:
        dose = _first_dose(statement.dosage)
        field = "dosage[0].doseAndRate[0].doseQuantity"
        return self._exposure(statement, where, full_urls, statement.effectivePeriod, "effectivePeriod", dose, field)

    def _medication_request(self, request: Any, where: Where, full_urls: Mapping[str, str]) -> list[Row]:
        if request.intent in _NOT_ORDERS:  # a suggestion or an intention: no drug was ordered, so none was taken
            return []
        instructions = request.dosageInstruction or []
        repeat = instructions[0].timing.repeat if instructions and instructions[0].timing is not None else None
        period = repeat.boundsPeriod if repeat is not None else None
        field = "dosageInstruction[0].timing.repeat.boundsPeriod"
        dose = _first_dose(instructions)
        return self._exposure(request, where, full_urls, period, field, dose, "dosageInstruction[0].doseAndRate[0].doseQuantity")

    def _medication_administration(self, given: Any, where: Where, full_urls: Mapping[str, str]) -> list[Row]:
        dose = given.dosage.dose if given.dosage is not None else None
        return self._exposure(given, where, full_urls, given.effectivePeriod, "effectivePeriod", dose, "dosage.dose")


def _first_dose(dosages: Sequence[Any] | None) -> Any:
    """The doseQuantity of a Dosage list's first dose, or None."""
    for dosage in dosages or []:
        for rate in dosage.doseAndRate or []:
            if rate.doseQuantity is not None:
                return rate.doseQuantity
    return None


#: Ways a Dosage gives a dose that the reader does not read (it reads doseQuantity, and MedicationAdministration's dose).
_UNREAD_DOSES = ("doseRange", "rateQuantity", "rateRange", "rateRatio")


def _dose_holders(resource: Any, kind: str) -> Iterator[tuple[str, Any]]:
    """The elements of a medication resource that may hold its dose, with their paths (ending in a dot)."""
    if kind == "MedicationAdministration":
        if resource.dosage is not None:
            yield "dosage.", resource.dosage
        return
    name = "dosageInstruction" if kind == "MedicationRequest" else "dosage"
    for i, dosage in enumerate(getattr(resource, name) or []):
        for j, dose_and_rate in enumerate(dosage.doseAndRate or []):
            yield f"{name}[{i}].doseAndRate[{j}].", dose_and_rate


def _refuted(resource: Any) -> bool:
    """Whether a Condition's verificationStatus says it was refuted or entered in error."""
    verification = getattr(resource, "verificationStatus", None)
    return verification is not None and any(c.code in _VOID_VERIFICATIONS for c in verification.coding or [])


def _birth_time(patient: Any) -> Any:
    """The patient-birthTime extension's dateTime (on birthDate, or on the Patient), else birthDate."""
    birth_ext = patient.birthDate__ext
    for extension in [*(birth_ext.extension or [] if birth_ext is not None else []), *(patient.extension or [])]:
        if extension.url == BIRTH_TIME_EXTENSION and extension.valueDateTime is not None:
            return extension.valueDateTime
    return patient.birthDate


def _category(concept: Any, spec: VariableSpec) -> str | None:
    """The text of a coded value: the first of its codes, displays or text that is a category of the
    variable; else its first code (or text), which the MEDS rules then report as no category."""
    categories = spec.categories or {}
    candidates = [x for c in concept.coding or [] for x in (c.code, c.display) if x] + ([concept.text] if concept.text else [])
    return next((x for x in candidates if x in categories), candidates[0] if candidates else None)
