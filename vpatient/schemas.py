"""Boundary types: what vpatient accepts from, and hands back to, the outside world.

Every file a user gives vpatient (a dataset config, a patient record, a treatment
plan) is parsed into one of these pydantic models, and validated once, here. Inside
the library the data travel as tensors and DataFrames and are trusted.

Time convention: every time in a record or plan is a float in the config's
``time_unit`` (years unless said otherwise) since the subject's index time (for
PBC, enrolment). History entries may lie before the index (negative times); nothing
else may.

Validation that needs the dataset config (known variables, plausible ranges,
embedding dimensions, allowed doses) runs when the config is passed as validation
context: ``PatientRecord.model_validate(data, context={"config": cfg})``, or more
simply :func:`parse_record`, which also turns pydantic's errors into a
:class:`~vpatient.errors.RecordValidationError` naming subject, field and value.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from vpatient.errors import ConfigError, DataFormatError, Problem, RecordValidationError
from vpatient.inputs import check_shape, parse_json_text, read_text_file

__all__ = [
    "BOUNDARY_TYPES",
    "DEFAULT_DOSE",
    "MICROS_PER_DAY",
    "RELATIVE_EPOCH",
    "CodeEncoding",
    "DatasetConfig",
    "DiagnosticTest",
    "Event",
    "HistoryEntry",
    "ImagingStudy",
    "Observation",
    "OutOfRangePolicy",
    "PatientRecord",
    "PlausibilityWarning",
    "TimeUnit",
    "Transform",
    "TreatmentExposure",
    "TreatmentPlan",
    "UnknownCodePolicy",
    "VariableKind",
    "VariableSpec",
    "calendar_time",
    "naive_utc",
    "parse_plan",
    "parse_record",
    "parse_records",
    "record_problems",
    "time_origin",
]

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.\-]*$"


class PlausibilityWarning(UserWarning):
    """A value outside its plausible range, where the config says to warn, not refuse."""


class VariableKind(StrEnum):
    CONTINUOUS = "continuous"
    BINARY = "binary"
    ORDINAL = "ordinal"
    IMAGING_EMBEDDING = "imaging_embedding"
    HISTORY = "history"
    TREATMENT = "treatment"
    EVENT = "event"
    STATIC = "static"


#: Kinds that appear as ``observations`` in a record (one value per visit).
OBSERVED_KINDS = frozenset({VariableKind.CONTINUOUS, VariableKind.BINARY, VariableKind.ORDINAL})


class Transform(StrEnum):
    """How a variable is transformed before modelling (``log`` for skewed labs)."""

    NONE = "none"
    LOG = "log"
    LOGIT = "logit"


class OutOfRangePolicy(StrEnum):
    ERROR = "error"
    WARN = "warn"


class UnknownCodePolicy(StrEnum):
    """What to do with input codes that no variable of the config reads."""

    ERROR = "error"
    WARN = "warn"
    IGNORE = "ignore"


class CodeEncoding(StrEnum):
    """How a variable's rows encode its values in MEDS, besides vpatient's own encoding.

    vpatient's own encoding (``vpatient``, what :func:`~vpatient.data.meds.write_meds`
    writes) is always read too, so that data vpatient wrote reads back with the same config.
    """

    VPATIENT = "vpatient"
    CODE_SUFFIX = "code_suffix"
    PER_VISIT_INDICATOR = "per_visit_indicator"
    PER_VISIT_DOSE = "per_visit_dose"


#: The encodings each kind may declare (every kind may keep vpatient's own).
ENCODINGS_OF_KIND = {
    VariableKind.STATIC: frozenset({CodeEncoding.CODE_SUFFIX}),
    VariableKind.TREATMENT: frozenset({CodeEncoding.PER_VISIT_INDICATOR, CodeEncoding.PER_VISIT_DOSE}),
}

#: The dose of an exposure that names none (a START row without a value, a per-visit indicator).
DEFAULT_DOSE = 1.0


#: Microseconds in a day: timestamps (MEDS, FHIR) hold record times to the microsecond.
MICROS_PER_DAY = 86_400 * 1_000_000


class TimeUnit(StrEnum):
    YEARS = "years"
    MONTHS = "months"
    DAYS = "days"

    @property
    def days(self) -> float:
        """Length of one unit in days (a year is 365.25 days)."""
        return {"years": 365.25, "months": 365.25 / 12, "days": 1.0}[self.value]

    def from_years(self, years: float) -> float:
        """A time given in years, in this unit (for defaults stated in years: 1-, 2- and 5-year marks)."""
        return years * TimeUnit.YEARS.days / self.days

    @property
    def month(self) -> float:
        """Length of a month (a twelfth of a year) in this unit: the default resolution of forecast and simulation grids."""
        return TimeUnit.MONTHS.days / self.days

    @property
    def microseconds(self) -> float:
        """Length of one unit in microseconds: record times become timestamps (MEDS, FHIR) through whole microseconds."""
        return MICROS_PER_DAY * self.days


#: Where a record without calendar time (``index_time`` None: times since an unknown index) is
#: placed when a format needs dates (standard MEDS, FHIR); each format marks such data, so
#: that they read back as relative times.
RELATIVE_EPOCH = datetime(2000, 1, 1)


def naive_utc(moment: datetime) -> datetime:
    """``moment`` as a naive UTC datetime, as every timestamp vpatient keeps (time-zone-aware ones converted)."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo is not None else moment


def time_origin(index_time: datetime | None) -> datetime:
    """Where a record's time 0 lies on the calendar (naive UTC): its index_time, else :data:`RELATIVE_EPOCH`."""
    return RELATIVE_EPOCH if index_time is None else naive_utc(index_time)


def calendar_time(index_time: datetime | None, t: float, unit: TimeUnit) -> datetime:
    """Record time ``t`` (``unit`` since the index) on the calendar, naive UTC, rounded to the microsecond as MEDS and
    FHIR keep it; the vectorised writers round the same product (``t * unit.microseconds``)."""
    return time_origin(index_time) + timedelta(microseconds=round(t * unit.microseconds))


#: Longest span from the index that a time in a record or plan may have: longer than any life, so
#: a time beyond it is a typo or garbage (1e308), refused before it reaches the solver.
MAX_SPAN_YEARS = 200.0


def time_bound(config: DatasetConfig | None) -> tuple[float, str]:
    """The largest |time| accepted in a record or plan, and how to say it in a message.

    Without a config the unit is unknown, so the bound is the most lenient: the span in days.
    """
    unit = config.time_unit if config is not None else TimeUnit.DAYS
    bound = unit.from_years(MAX_SPAN_YEARS)
    in_unit = "" if unit == TimeUnit.YEARS else f" ({bound:g} {unit.value})"
    return bound, f"more than {MAX_SPAN_YEARS:g} years{in_unit} from the index"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- config


class VariableSpec(_Strict):
    """One variable of a dataset: where it is read from and what values it may take."""

    name: str = Field(pattern=NAME_PATTERN, description="Name used in records and outputs.")
    codes: list[str] = Field(
        min_length=1,
        description=(
            "Source codes (MEDS `code`) this variable is read from. Imaging embeddings "
            "add `//<dimension index>`, treatments add `//START` and `//STOP`."
        ),
    )
    kind: VariableKind
    unit: str | None = None
    transform: Transform = Transform.NONE
    plausible_range: tuple[float, float] | None = Field(
        default=None,
        description="Values outside [low, high] are refused or warned about "
        "(see out_of_range). For a treatment: the allowed dose range.",
    )
    out_of_range: OutOfRangePolicy = OutOfRangePolicy.ERROR
    reference_range: tuple[float, float] | None = Field(default=None, description="Normal range, for display only.")
    levels: list[float] | None = Field(default=None, description="Ordinal variables: the allowed values, in order.")
    categories: dict[str, float] | None = Field(
        default=None,
        description="Text values (MEDS `text_value`) and the numbers they stand for, e.g. {'female': 0, 'male': 1}.",
    )
    dimension: int | None = Field(default=None, ge=1, description="Imaging embeddings: the vector's length.")
    encoding: CodeEncoding = Field(
        default=CodeEncoding.VPATIENT,
        description=(
            "How the MEDS rows encode the values, besides vpatient's own encoding (always read). "
            "`code_suffix` (static): the value is the code's suffix, `<CODE>//<VALUE>` (e.g. `SEX//F`), "
            "a name in `categories`, or a number when the variable has no categories. "
            "`per_visit_indicator` (treatment): a `<CODE>` row at each visit, numeric_value 1 (given, "
            "at the default dose 1) or 0 (not given). `per_visit_dose` (treatment): a `<CODE>` row at "
            "each visit, numeric_value the dose given, 0 for none. Per-visit values become exposures "
            "that start at a visit with a positive value and stop at the next visit with another value; "
            "the last stays open (ongoing at end of follow-up)."
        ),
    )
    test: str | None = Field(default=None, description="Diagnostic test that measures it.")
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> VariableSpec:
        for label, rng in (("plausible_range", self.plausible_range), ("reference_range", self.reference_range)):
            if rng is not None and not (math.isfinite(rng[0]) and math.isfinite(rng[1]) and rng[0] < rng[1]):
                raise ValueError(f"variable {self.name!r}: {label} must be finite with low < high, got {rng}")
        is_imaging = self.kind == VariableKind.IMAGING_EMBEDDING
        if is_imaging != (self.dimension is not None):
            raise ValueError(
                f"variable {self.name!r}: 'dimension' is required for imaging_embedding "
                f"variables and allowed for no other kind (kind={self.kind.value})"
            )
        if self.kind == VariableKind.ORDINAL:
            if not self.levels or len(self.levels) < 2 or sorted(set(self.levels)) != self.levels:
                raise ValueError(
                    f"variable {self.name!r}: ordinal variables need 'levels', at least two "
                    f"distinct values in increasing order, got {self.levels}"
                )
        elif self.levels is not None:
            raise ValueError(f"variable {self.name!r}: 'levels' is only for ordinal variables")
        if self.encoding != CodeEncoding.VPATIENT and self.encoding not in ENCODINGS_OF_KIND.get(self.kind, ()):
            allowed = sorted(kind.value for kind, encodings in ENCODINGS_OF_KIND.items() if self.encoding in encodings)
            raise ValueError(
                f"variable {self.name!r}: encoding {self.encoding.value!r} applies only to {', '.join(allowed)} variables"
            )
        if self.transform != Transform.NONE and self.kind != VariableKind.CONTINUOUS:
            raise ValueError(f"variable {self.name!r}: transform {self.transform.value!r} applies only to continuous variables")
        return self

    def value_problems(self, value: float, subject_id: str | None, field: str) -> list[Problem]:
        """Problems with one value of this variable (finite, levels, range, transform domain)."""
        if not math.isfinite(value):
            return [Problem(subject_id, field, value, "not a finite number")]
        if self.kind == VariableKind.BINARY and value not in (0.0, 1.0):
            return [Problem(subject_id, field, value, f"{self.name} is binary: 0 or 1 expected")]
        if self.levels is not None and value not in self.levels:
            return [Problem(subject_id, field, value, f"{self.name} is ordinal: one of {self.levels} expected")]
        if self.transform == Transform.LOG and value <= 0:
            return [Problem(subject_id, field, value, f"{self.name} is log-transformed: must be > 0")]
        if self.transform == Transform.LOGIT and not 0 < value < 1:
            return [Problem(subject_id, field, value, f"{self.name} is logit-transformed: must lie in (0, 1)")]
        if self.plausible_range is not None:
            low, high = self.plausible_range
            if not low <= value <= high:
                unit = f" {self.unit}" if self.unit else ""
                severity: Literal["error", "warning"] = "warning" if self.out_of_range == OutOfRangePolicy.WARN else "error"
                return [
                    Problem(
                        subject_id,
                        field,
                        value,
                        f"outside the plausible range [{low:g}, {high:g}]{unit} of {self.name}",
                        severity,
                    )
                ]
        return []


class DiagnosticTest(_Strict):
    """An orderable test (a lab panel, an imaging study, an exam) and what it costs."""

    name: str = Field(pattern=NAME_PATTERN)
    variables: list[str] = Field(min_length=1, description="Variables one order of this test measures.")
    cost: float = Field(gt=0, description="Cost in relative units (the cheapest test ~ 1).")
    turnaround_days: float = Field(default=0.0, ge=0, description="Days until the result is back.")
    description: str = ""


class DatasetConfig(_Strict):
    """Maps a dataset's source codes to modelled variables, and declares its tests."""

    name: str
    description: str = ""
    citation: str | None = None
    time_unit: TimeUnit = TimeUnit.YEARS
    horizon: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Default forecast and what-if horizon, in time_unit (absent: the training data's median follow-up).",
    )
    index_code: str | None = Field(
        default=None,
        description="Code whose time is a subject's time zero when MEDS times are timestamps "
        "(default: the subject's first timed row).",
    )
    end_of_followup_code: str = Field(
        default="VPATIENT_END_OF_FOLLOWUP",
        description="Code marking the end of a subject's follow-up (censoring time). Absent: the subject's last timed row.",
    )
    unknown_codes: UnknownCodePolicy = UnknownCodePolicy.ERROR
    code_systems: dict[str, str] = Field(
        default_factory=dict,
        description="FHIR only: vocabulary prefixes of this config's codes and their code-system URIs, beside the "
        "standard ones (LOINC, SNOMED, ICD10, ...): {'MYLAB': 'http://hospital.example/labs'} reads "
        "Coding(system='http://hospital.example/labs', code='42') as MEDS code 'MYLAB/42'.",
    )
    variables: list[VariableSpec] = Field(min_length=1)
    tests: list[DiagnosticTest] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> DatasetConfig:
        problems: list[str] = []
        names = Counter(v.name for v in self.variables)
        problems += [f"variable name {n!r} declared {c} times" for n, c in names.items() if c > 1]
        owners: dict[str, str] = {}
        for var in self.variables:
            for code in var.codes:
                if code in owners and owners[code] != var.name:
                    problems.append(f"code {code!r} is read by both {owners[code]!r} and {var.name!r}")
                owners[code] = var.name
        test_names = Counter(t.name for t in self.tests)
        problems += [f"test name {n!r} declared {c} times" for n, c in test_names.items() if c > 1]
        by_name = {v.name: v for v in self.variables}
        for test in self.tests:
            for var_name in test.variables:
                listed = by_name.get(var_name)
                if listed is None:
                    problems.append(f"test {test.name!r} measures unknown variable {var_name!r}")
                elif listed.test != test.name:
                    problems.append(f"test {test.name!r} lists {var_name!r}, whose 'test' is {listed.test!r}")
        for var in self.variables:
            if var.test is not None and var.test not in test_names:
                problems.append(f"variable {var.name!r} names unknown test {var.test!r}")
            elif var.test is not None and var.name not in next(t.variables for t in self.tests if t.name == var.test):
                problems.append(f"variable {var.name!r} says test {var.test!r}, which does not list it")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- lookups -------------------------------------------------------------

    def variable(self, name: str) -> VariableSpec:
        """The variable called ``name``; ConfigError listing the known names otherwise."""
        for var in self.variables:
            if var.name == name:
                return var
        raise ConfigError(f"config {self.name!r} has no variable {name!r}; known: {', '.join(self.names())}")

    def names(self, *kinds: VariableKind) -> list[str]:
        """Variable names, optionally only of the given kinds, in config order."""
        return [v.name for v in self.variables if not kinds or v.kind in kinds]

    def of_kind(self, *kinds: VariableKind) -> list[VariableSpec]:
        return [v for v in self.variables if v.kind in kinds]

    @property
    def event_kinds(self) -> list[str]:
        return self.names(VariableKind.EVENT)

    @property
    def treatments(self) -> list[str]:
        return self.names(VariableKind.TREATMENT)

    def test(self, name: str) -> DiagnosticTest:
        for test in self.tests:
            if test.name == name:
                return test
        raise ConfigError(f"config {self.name!r} has no test {name!r}; known: {', '.join(t.name for t in self.tests)}")

    # -- files ---------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> DatasetConfig:
        """Read a config from a JSON or YAML file, with errors that name the file."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            text = read_text_file(path, "config")
            if path.suffix.lower() not in {".yaml", ".yml"}:
                data = parse_json_text(text, f"{path}: config file")
            else:
                import yaml

                # Anchors may repeat a few values, but not expand a small file into millions of them.
                data = check_shape(yaml.safe_load(text), f"{path}: config file", 10 * len(text) + 100_000)
        except DataFormatError as exc:
            raise ConfigError(str(exc)) from None
        except Exception as exc:  # YAML's own message says where
            raise ConfigError(f"cannot parse config {path}: {exc}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"invalid config {path}:\n{_format_pydantic(exc, None)}") from None

    def save(self, path: str | Path) -> None:
        """Write the config as JSON (or YAML when the suffix says so)."""
        path = Path(path)
        data = self.model_dump(mode="json", exclude_defaults=False)
        if path.suffix.lower() in {".yaml", ".yml"}:
            import yaml

            path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        else:
            path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- records


class Observation(_Strict):
    """One measured value of a continuous, binary or ordinal variable."""

    time: float
    variable: str
    value: float


class ImagingStudy(_Strict):
    """An imaging study, represented by its embedding vector (e.g. from a foundation model)."""

    time: float
    modality: str = Field(description="Name of the imaging_embedding variable.")
    embedding: list[float]


class HistoryEntry(_Strict):
    """A history code (comorbidity, past procedure) recorded at a time, possibly before index."""

    time: float
    code: str = Field(description="Name of the history variable.")


class TreatmentExposure(_Strict):
    """A treatment given at a constant dose from ``start`` until ``stop`` (None: still ongoing)."""

    treatment: str
    start: float
    stop: float | None = None
    dose: float = DEFAULT_DOSE


class Event(_Strict):
    """An outcome event (death, transplant, progression)."""

    time: float
    kind: str


class PatientRecord(_Strict):
    """Everything known about one subject, on one time axis (the config's time_unit since index)."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    subject_id: str = Field(min_length=1)
    index_time: datetime | None = Field(default=None, description="Calendar time of time zero, when the source had timestamps.")
    split: str | None = Field(default=None, description="MEDS split (train, tuning, held_out), if known.")
    static: dict[str, float] = Field(default_factory=dict)
    observations: list[Observation] = Field(default_factory=list)
    imaging: list[ImagingStudy] = Field(default_factory=list)
    history: list[HistoryEntry] = Field(default_factory=list)
    treatments: list[TreatmentExposure] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)
    end_of_followup: float = Field(description="Last time the subject was known to be followed.")

    @model_validator(mode="after")
    def _valid(self, info: ValidationInfo) -> PatientRecord:
        config = (info.context or {}).get("config")
        problems = record_problems(self, config)
        _raise_or_warn(problems, info)
        return self

    def in_canonical_order(self, config: DatasetConfig) -> PatientRecord:
        """A copy with every list in vpatient's canonical order.

        Entries sort by time, then by the config's variable order (history by code,
        treatments by start then config order). Every producer of records (MEDS reader,
        PBC loader, synthetic generator) emits this order, so round trips compare equal.
        """
        rank = {v.name: i for i, v in enumerate(config.variables)}
        big = len(rank)
        return self.model_copy(
            update={
                "observations": sorted(self.observations, key=lambda o: (o.time, rank.get(o.variable, big), o.variable)),
                "imaging": sorted(self.imaging, key=lambda s: (s.time, rank.get(s.modality, big), s.modality)),
                "history": sorted(self.history, key=lambda h: (h.time, h.code)),
                "treatments": sorted(self.treatments, key=lambda e: (e.start, rank.get(e.treatment, big), e.treatment)),
                "events": sorted(self.events, key=lambda e: (e.time, rank.get(e.kind, big), e.kind)),
                "static": {k: self.static[k] for k in sorted(self.static, key=lambda k: (rank.get(k, big), k))},
            }
        )

    def visit_times(self) -> list[float]:
        """Distinct times with at least one observation or imaging study, sorted."""
        return sorted({o.time for o in self.observations} | {s.time for s in self.imaging})


class TreatmentPlan(_Strict):
    """Treatment exposures to simulate, for a what-if.

    Times are on the patient's time axis. A plan describes the treatments from the
    time the what-if starts; what was given before stays as recorded.
    """

    name: str = Field(min_length=1)
    description: str = ""
    exposures: list[TreatmentExposure] = Field(default_factory=list)

    @model_validator(mode="after")
    def _valid(self, info: ValidationInfo) -> TreatmentPlan:
        _raise_or_warn(self._problems((info.context or {}).get("config")), info)
        return self

    def _problems(self, config: DatasetConfig | None) -> list[Problem]:
        problems = exposure_problems(self.exposures, None, "exposures", config)
        return [dataclasses.replace(p, owner=f"plan {self.name!r}") for p in problems]

    def check(self, config: DatasetConfig) -> TreatmentPlan:
        """This plan, validated against ``config``: known treatments, doses in their allowed range.

        A plan built in Python was validated without a config; check it before simulating it
        with a model. Raises RecordValidationError listing every problem (the same errors
        ``parse_plan(data, config)`` reports); plausibility warnings are issued as
        :class:`PlausibilityWarning`. Returns the plan itself.
        """
        problems = self._problems(config)
        for p in problems:
            if p.severity == "warning":
                warnings.warn(str(p), PlausibilityWarning, stacklevel=2)
        errors = [p for p in problems if p.severity == "error"]
        if errors:
            raise RecordValidationError(errors, header="invalid treatment plan")
        return self


#: Every boundary type, by the name its JSON Schema is exported under.
BOUNDARY_TYPES: dict[str, type[BaseModel]] = {
    "DatasetConfig": DatasetConfig,
    "VariableSpec": VariableSpec,
    "DiagnosticTest": DiagnosticTest,
    "PatientRecord": PatientRecord,
    "TreatmentPlan": TreatmentPlan,
}


# --------------------------------------------------------------------------- checks


def record_problems(record: PatientRecord, config: DatasetConfig | None = None) -> list[Problem]:
    """Every problem with one record; checks against ``config`` too when one is given."""
    sid = record.subject_id
    out: list[Problem] = []
    bound, beyond = time_bound(config)

    def times(items: Sequence[Any], label: str, allow_negative: bool = False) -> None:
        previous = -math.inf
        for i, item in enumerate(items):
            t = item.time
            where = f"{label}[{i}].time"
            if not math.isfinite(t):
                out.append(Problem(sid, where, t, "not a finite time"))
                continue
            if abs(t) > bound:
                out.append(Problem(sid, where, t, beyond))
                continue
            if t < 0 and not allow_negative:
                out.append(Problem(sid, where, t, "negative time: times are measured from the index (t=0)"))
            if t < previous:
                out.append(Problem(sid, where, t, f"times out of order (previous entry at {previous:g})"))
            if t > record.end_of_followup:
                out.append(Problem(sid, where, t, f"after end of follow-up ({record.end_of_followup:g})"))
            previous = t

    if not math.isfinite(record.end_of_followup) or record.end_of_followup < 0:
        out.append(Problem(sid, "end_of_followup", record.end_of_followup, "must be a finite, non-negative time"))
    elif record.end_of_followup > bound:
        out.append(Problem(sid, "end_of_followup", record.end_of_followup, beyond))
    times(record.observations, "observations")
    times(record.imaging, "imaging")
    times(record.history, "history", allow_negative=True)
    times(record.events, "events")
    for i, obs in enumerate(record.observations):
        if not math.isfinite(obs.value):
            out.append(Problem(sid, f"observations[{i}].value", obs.value, "not a finite number"))
    for i, study in enumerate(record.imaging):
        bad = [j for j, x in enumerate(study.embedding) if not math.isfinite(x)]
        if bad:
            out.append(
                Problem(
                    sid,
                    f"imaging[{i}].embedding[{bad[0]}]",
                    study.embedding[bad[0]],
                    f"not a finite number ({len(bad)} such entries)",
                )
            )
    for name, value in record.static.items():
        if not math.isfinite(value):
            out.append(Problem(sid, f"static.{name}", value, "not a finite number"))
    out += exposure_problems(record.treatments, sid, "treatments", config, end=record.end_of_followup)
    if config is not None:
        out += _config_problems(record, config)
    return out


def exposure_problems(
    exposures: Sequence[TreatmentExposure],
    subject_id: str | None,
    label: str,
    config: DatasetConfig | None = None,
    end: float | None = None,
) -> list[Problem]:
    """Problems with treatment exposures (shared by records and plans)."""
    out: list[Problem] = []
    known = {v.name: v for v in config.of_kind(VariableKind.TREATMENT)} if config else None
    bound, beyond = time_bound(config)
    for i, exp in enumerate(exposures):
        where = f"{label}[{i}]"
        if not math.isfinite(exp.start) or exp.start < 0:
            out.append(Problem(subject_id, f"{where}.start", exp.start, "must be a finite, non-negative time"))
        elif exp.start > bound:
            out.append(Problem(subject_id, f"{where}.start", exp.start, beyond))
        if exp.stop is not None and math.isfinite(exp.stop) and exp.stop > bound:
            out.append(Problem(subject_id, f"{where}.stop", exp.stop, beyond))
        if exp.stop is not None and not (exp.stop > exp.start):
            out.append(Problem(subject_id, f"{where}.stop", exp.stop, f"stops before it starts (start {exp.start:g})"))
        if end is not None and exp.start > end:
            out.append(Problem(subject_id, f"{where}.start", exp.start, f"after end of follow-up ({end:g})"))
        if not math.isfinite(exp.dose) or exp.dose < 0:
            out.append(Problem(subject_id, f"{where}.dose", exp.dose, "must be a finite, non-negative dose"))
        if known is not None:
            spec = known.get(exp.treatment)
            if spec is None:
                names = ", ".join(known) or "none"
                out.append(Problem(subject_id, f"{where}.treatment", exp.treatment, f"unknown treatment (known: {names})"))
            elif math.isfinite(exp.dose) and exp.dose >= 0:
                out += [
                    dataclasses.replace(p, message=p.message.replace("plausible range", "allowed dose range"))
                    for p in spec.value_problems(exp.dose, subject_id, f"{where}.dose")
                ]
    by_treatment: dict[str, list[tuple[int, TreatmentExposure]]] = {}
    for i, exp in enumerate(exposures):
        by_treatment.setdefault(exp.treatment, []).append((i, exp))
    for name, items in by_treatment.items():
        items.sort(key=lambda pair: pair[1].start)
        for (i, a), (j, b) in itertools.pairwise(items):
            a_stop = math.inf if a.stop is None else a.stop
            if b.start < a_stop:
                out.append(
                    Problem(
                        subject_id, f"{label}[{j}].start", b.start, f"overlaps {label}[{i}] of {name} ({a.start:g} to {a_stop:g})"
                    )
                )
    return out


def _config_problems(record: PatientRecord, config: DatasetConfig) -> list[Problem]:
    sid = record.subject_id
    specs = {v.name: v for v in config.variables}
    out: list[Problem] = []
    unknown: Counter[tuple[str, str]] = Counter()

    def spec_for(name: str, field: str, kinds: Iterable[VariableKind]) -> VariableSpec | None:
        spec = specs.get(name)
        if spec is None or spec.kind not in kinds:
            unknown[(field, name)] += 1
            return None
        return spec

    for name, value in record.static.items():
        spec = spec_for(name, "static", {VariableKind.STATIC})
        if spec is not None and math.isfinite(value):
            out += spec.value_problems(value, sid, f"static.{name}")
    for i, obs in enumerate(record.observations):
        spec = spec_for(obs.variable, "observations", OBSERVED_KINDS)
        if spec is not None and math.isfinite(obs.value):
            out += spec.value_problems(obs.value, sid, f"observations[{i}].value")
    for i, study in enumerate(record.imaging):
        spec = spec_for(study.modality, "imaging", {VariableKind.IMAGING_EMBEDDING})
        if spec is not None and len(study.embedding) != spec.dimension:
            out.append(
                Problem(
                    sid,
                    f"imaging[{i}].embedding",
                    study.embedding,
                    f"{study.modality} embeddings have dimension {spec.dimension}, got {len(study.embedding)}",
                )
            )
    for entry in record.history:
        spec_for(entry.code, "history", {VariableKind.HISTORY})
    for event in record.events:
        spec_for(event.kind, "events", {VariableKind.EVENT})
    for (field, name), count in sorted(unknown.items()):
        kind_names = {
            "static": "static",
            "observations": "observed",
            "imaging": "imaging",
            "history": "history",
            "events": "event",
        }[field]
        out.append(
            Problem(
                sid,
                field,
                name,
                f"not a known {kind_names} variable of config {config.name!r} ({count} {'entry' if count == 1 else 'entries'})",
            )
        )
    return out


class _ProblemsError(ValueError):
    """Raised inside validators so that structured problems survive pydantic's wrapping."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _raise_or_warn(problems: list[Problem], info: ValidationInfo) -> None:
    collected = (info.context or {}).get("warnings")
    for p in problems:
        if p.severity == "warning":
            if collected is not None:
                collected.append(p)
            else:
                warnings.warn(str(p), PlausibilityWarning, stacklevel=3)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise _ProblemsError(errors)


# --------------------------------------------------------------------------- parsing


def _pydantic_problems(exc: ValidationError, subject_id: str | None) -> list[Problem]:
    """Turn pydantic's errors into located problems, keeping our validators' own."""
    out: list[Problem] = []
    for err in exc.errors(include_url=False):
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, _ProblemsError):
            out += inner.problems
            continue
        field = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in err["loc"]).replace(".[", "[")
        out.append(Problem(subject_id, field or "<root>", err.get("input"), err["msg"]))
    return out


def _format_pydantic(exc: ValidationError, subject_id: str | None) -> str:
    return "\n".join(f"  - {p}" for p in _pydantic_problems(exc, subject_id))


def parse_record(data: Any, config: DatasetConfig | None = None, warnings_out: list[Problem] | None = None) -> PatientRecord:
    """Validate one record (a dict, JSON text or record), raising RecordValidationError listing every problem."""
    return _parse(PatientRecord, data, config, warnings_out, kind="patient record")


def parse_plan(data: Any, config: DatasetConfig | None = None) -> TreatmentPlan:
    """Validate a treatment plan (a dict, JSON text or plan), raising RecordValidationError on problems."""
    return _parse(TreatmentPlan, data, config, None, kind="treatment plan")


def parse_records(
    items: Iterable[Any], config: DatasetConfig | None = None, warnings_out: list[Problem] | None = None
) -> list[PatientRecord]:
    """Validate many records; collects the problems of all of them (and duplicate ids) before raising."""
    records: list[PatientRecord] = []
    problems: list[Problem] = []
    for item in items:
        try:
            records.append(parse_record(item, config, warnings_out))
        except RecordValidationError as exc:
            problems += exc.problems
    problems += duplicate_id_problems(records)
    if problems:
        raise RecordValidationError(problems, header="invalid patient records")
    return records


def duplicate_id_problems(records: Iterable[PatientRecord]) -> list[Problem]:
    """One problem per subject id that occurs in more than one record."""
    return repeated_id_problems(Counter(r.subject_id for r in records))


def repeated_id_problems(counts: Mapping[str, int]) -> list[Problem]:
    """One problem per subject id counted more than once (``counts``: id -> number of records), for writers that stream."""
    return [Problem(sid, "subject_id", sid, f"duplicate subject id ({n} records)") for sid, n in counts.items() if n > 1]


_Parsed = TypeVar("_Parsed", bound=BaseModel)


def _parse(
    model: type[_Parsed], data: Any, config: DatasetConfig | None, warnings_out: list[Problem] | None, kind: str
) -> _Parsed:
    if isinstance(data, BaseModel):
        data = data.model_dump()
    context = {"config": config, "warnings": warnings_out}
    subject_id = str(data["subject_id"]) if isinstance(data, dict) and "subject_id" in data else None
    try:
        if isinstance(data, (str, bytes)):
            return model.model_validate_json(data, context=context)
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise RecordValidationError(_pydantic_problems(exc, subject_id), header=f"invalid {kind}") from None
