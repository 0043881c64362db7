"""Forecasts and what-ifs as FHIR R4B Bundles: RiskAssessments for events, preliminary Observations for labs.

A report for other systems, so it sits with the reports (it reads forecasts, what-ifs and the
model's identity, layers below); the FHIR conventions it shares with the records' reader and
writer (codes, relative time) are :mod:`vpatient.data.fhir.coding`'s.

One ``collection`` Bundle per patient, every resource built (and so validated) with the
``fhir.resources`` R4B models. Everything in it is a model output, never a measurement:

=====================  ======================================================================
what                   FHIR
=====================  ======================================================================
the patient            ``Patient`` with only ``id`` (the subject id), so every reference
                       resolves inside the Bundle; no other patient data is copied.
an event kind          ``RiskAssessment`` (one per event, per plan of a what-if), status
                       ``preliminary`` (a model's estimate, reviewed by no clinician),
                       ``occurrenceDateTime`` the forecast time, ``method.text`` the model
                       (data, members, vpatient version). One ``prediction`` per horizon:
                       ``outcome`` the event's coding, ``whenPeriod`` from the forecast time
                       to the horizon, ``probabilityDecimal`` = 1 - S(horizon), S the
                       posterior mean probability of being free of the event, given free at
                       the forecast time, other event kinds censoring (the forecast's
                       ``survival_summary``, the numbers the CLI and dashboard show; not the
                       competing-risks incidence). FHIR has one probability per prediction (a
                       decimal *or* a range), so the point estimate takes the standard field
                       every consumer reads and the 90% interval of the posterior draws
                       (1 - S_q95, 1 - S_q05) travels in the extension
                       :data:`PROBABILITY_INTERVAL_URL` (a ``valueRange``), repeated as words
                       in ``rationale`` for readers that ignore extensions.
a lab at a time        ``Observation``, status ``preliminary``, ``effectiveDateTime`` the
                       predicted time, ``valueQuantity`` the predictive median in the
                       variable's unit, and one ``component`` per other predictive quantile
                       (5/25/75/95%; code system :data:`QUANTILE_SYSTEM`, codes ``q05`` ...)
                       holding its value: the interval bounds are data, not the normal range
                       that ``referenceRange`` means. No standard ``category`` fits every
                       variable (a config does not say whether it is a lab or a vital sign),
                       so none is set.
a what-if plan         ``CarePlan``, status ``draft``, intent ``proposal``, ``title`` the
                       plan's name, one ``activity.detail`` per exposure (the treatment's
                       coding, ``scheduledPeriod``, the dose as ``quantity``). The plan's
                       RiskAssessments name it in ``basis`` and ``note``; its Observations
                       in ``basedOn``.
=====================  ======================================================================

Every RiskAssessment, Observation and CarePlan carries ``meta.tag`` :data:`PREDICTION_TAG`
(CarePlans of a what-if :data:`WHAT_IF_TAG`), so a store that receives them can keep them
apart from the record. Times are ``index_time + t`` in the config's time unit (a naive
index is taken as UTC, as the MEDS writer does); a record without calendar time is placed
from :data:`~vpatient.data.fhir.coding.RELATIVE_EPOCH` and every resource is tagged
:data:`~vpatient.data.fhir.coding.RELATIVE_TIME_TAG`. Codes map as the records' do
(:func:`~vpatient.data.fhir.coding.to_coding`). Resource ids are UUIDs derived from the
subject, forecast time, plan and item, so the same forecast exports to the same bytes.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.riskassessment import RiskAssessment
from pydantic import ValidationError

from vpatient.atomic import write_text_atomic
from vpatient.data.fhir.coding import RELATIVE_TIME_TAG, variable_concept
from vpatient.errors import OutputExistsError, VPatientError
from vpatient.schemas import DatasetConfig, PatientRecord, TreatmentPlan, calendar_time

if TYPE_CHECKING:
    from vpatient.simulation.whatif import WhatIfResult
    from vpatient.virtual_patient import Forecast, VirtualPatientModel

__all__ = [
    "PREDICTION_TAG",
    "PROBABILITY_INTERVAL_URL",
    "QUANTILE_SYSTEM",
    "WHAT_IF_TAG",
    "check_output_file",
    "predictions_json",
    "predictions_to_fhir",
    "write_predictions_fhir",
]

#: Marks a resource as a model prediction, not a measurement or a record of care.
PREDICTION_TAG = {"system": "urn:vpatient:tag", "code": "prediction", "display": "model prediction, not a measurement"}
#: Marks a CarePlan as a hypothetical plan simulated by a what-if, not an order.
WHAT_IF_TAG = {"system": "urn:vpatient:tag", "code": "what-if", "display": "hypothetical plan of a what-if simulation"}
#: Extension of ``RiskAssessment.prediction``: the 90% interval of the probability (valueRange).
PROBABILITY_INTERVAL_URL = "urn:vpatient:fhir:probability-interval-90"
#: Code system of the predictive-quantile components of a predicted Observation.
QUANTILE_SYSTEM = "urn:vpatient:quantile"

_QUANTILE_LABELS = {"q05": "5%", "q25": "25%", "q75": "75%", "q95": "95%"}
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:vpatient:fhir:predictions")
_FHIR_ID = r"^[A-Za-z0-9\-.]{1,64}$"


def predictions_to_fhir(
    result: Forecast | WhatIfResult,
    record: PatientRecord,
    model: VirtualPatientModel,
    horizons: Sequence[float] | None = None,
) -> Bundle:
    """A forecast or what-if of ``record`` by ``model`` as a FHIR R4B collection Bundle (see the module docstring).

    ``horizons`` are times after the forecast time (the config's unit) to report, each
    snapped to the nearest time the forecast computed; default every fifth of its horizon.
    Raises VPatientError when the result is of another subject or cannot be written as FHIR
    (a subject id FHIR does not allow as an id, a value that is not finite).
    """
    from vpatient.report.card import model_identity
    from vpatient.simulation.whatif import WhatIfResult

    if record.subject_id != result.subject_id:
        raise VPatientError(f"the result is of subject {result.subject_id!r}, the record of {record.subject_id!r}")
    _check_fhir_id(record.subject_id)
    if isinstance(result, WhatIfResult):
        runs = [(plan, result.forecasts[plan.name]) for plan in result.plans]
        reference = result.reference
    else:
        runs = [(None, result)]
        reference = None
    times = _report_times(runs[0][1], horizons)
    start = runs[0][1].until
    context = _Context(record, model.config, model_identity(model), start)
    resources: list[Any] = [context.patient()]
    for plan, forecast in runs:
        care_plan = context.care_plan(plan, reference) if plan is not None else None
        if care_plan is not None:
            resources.append(care_plan)
        resources += context.risk_assessments(forecast, times, plan, care_plan)
        resources += context.observations(forecast, times, plan, care_plan)
    return Bundle(
        id=context.id("bundle"),
        meta={"tag": context.tags(PREDICTION_TAG)},
        type="collection",
        entry=[{"resource": r} for r in resources],
    )


def predictions_json(bundle: Bundle) -> str:
    """The Bundle as FHIR JSON text (indented, fields in the model's order: the same bundle gives the same bytes)."""
    return bundle.model_dump_json(indent=1) + "\n"


def write_predictions_fhir(
    result: Forecast | WhatIfResult,
    record: PatientRecord,
    model: VirtualPatientModel,
    path: str | Path,
    horizons: Sequence[float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write :func:`predictions_to_fhir` to ``path`` as JSON, atomically; an existing file only with ``overwrite``."""
    path = check_output_file(path, overwrite)
    text = predictions_json(predictions_to_fhir(result, record, model, horizons))
    try:
        return write_text_atomic(path, text)
    except OSError as exc:
        raise VPatientError(f"cannot write {path}: {exc.strerror or exc}") from None


def check_output_file(path: str | Path, overwrite: bool = False) -> Path:
    """``path`` as a file to write: refused when it is a folder, or exists and ``overwrite`` is not set."""
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path} is a directory; give a file name such as {path / 'forecast.fhir.json'}")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; choose another path or pass overwrite=True (--overwrite)")
    return path


# --------------------------------------------------------------------------- building the resources


def _report_times(forecast: Forecast, horizons: Sequence[float] | None) -> list[float]:
    """The forecast's grid times to report, after its start: its milestones, or those nearest ``horizons``."""
    start, horizon, grid = forecast.until, forecast.horizon, forecast.times
    if horizons is None:
        return [t for t in forecast.milestones() if t > start]
    wrong = [h for h in horizons if not (math.isfinite(h) and 0 < h <= horizon + 1e-9)]
    if wrong:
        raise VPatientError(f"horizons {wrong} lie outside (0, {horizon:g}], the forecast's horizon")
    return sorted({float(grid[np.abs(grid - (start + h)).argmin()]) for h in horizons})


def _check_fhir_id(subject_id: str) -> None:
    if not re.fullmatch(_FHIR_ID, subject_id):
        raise VPatientError(
            f"subject id {subject_id!r} cannot be a FHIR Patient.id (1-64 letters, digits, '-' and '.'); rename the subject"
        )


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise VPatientError(f"{what} is {value}; a FHIR decimal must be a finite number")
    return float(value)


@dataclass
class _Context:
    """What every resource of one patient's Bundle shares: subject, config, method and time axis."""

    record: PatientRecord
    config: DatasetConfig
    method: str
    start: float

    @property
    def subject(self) -> dict:
        return {"reference": f"Patient/{self.record.subject_id}"}

    def id(self, *parts: object) -> str:
        """A resource id from the subject, forecast time and ``parts``: unique, and the same on every export."""
        return str(uuid.uuid5(_ID_NAMESPACE, "|".join(map(str, (self.record.subject_id, repr(self.start), *parts)))))

    def tags(self, *tags: dict) -> list[dict]:
        relative = [RELATIVE_TIME_TAG] if self.record.index_time is None else []
        return [*tags, *relative]

    def moment(self, t: float) -> datetime:
        """The calendar time of record time ``t`` (UTC; from RELATIVE_EPOCH without an index time)."""
        return calendar_time(self.record.index_time, t, self.config.time_unit).replace(tzinfo=UTC)

    def describe_time(self, t: float) -> str:
        return f"t = {t:g} {self.config.time_unit.value}"

    def patient(self) -> Patient:
        """Only the id (and the relative-time tag): what the references need, no patient data."""
        tags = self.tags()
        return self._build(Patient, "Patient", id=self.record.subject_id, meta={"tag": tags} if tags else None)

    def care_plan(self, plan: TreatmentPlan, reference: str | None) -> CarePlan:
        role = "the reference plan" if plan.name == reference else f"compared with the reference plan {reference!r}"
        activities = []
        for exposure in plan.exposures:
            spec = self.config.variable(exposure.treatment)
            period = {"start": self.moment(exposure.start)}
            if exposure.stop is not None:
                period["end"] = self.moment(exposure.stop)
            dose = {"value": _finite(exposure.dose, f"plan {plan.name!r}: the dose of {exposure.treatment}")}
            if spec.unit:
                dose["unit"] = spec.unit
            detail = {
                "kind": "MedicationRequest",
                "productCodeableConcept": variable_concept(spec, self.config),
                "status": "not-started",
                "scheduledPeriod": period,
                "quantity": dose,
            }
            activities.append({"detail": detail})
        description = plan.description or ("no treatment" if not plan.exposures else None)
        return self._build(
            CarePlan,
            f"CarePlan of plan {plan.name!r}",
            id=self.id("plan", plan.name),
            meta={"tag": self.tags(WHAT_IF_TAG)},
            status="draft",
            intent="proposal",
            title=plan.name,
            description=description,
            subject=self.subject,
            note=[{"text": f"What-if plan {plan.name!r}, {role}; it takes over at {self.describe_time(self.start)}."}],
            activity=activities or None,
        )

    def risk_assessments(
        self, forecast: Forecast, times: list[float], plan: TreatmentPlan | None, care_plan: CarePlan | None
    ) -> list[RiskAssessment]:
        survival = forecast.survival_summary()
        chosen = survival[survival["time"].isin(times)]
        under = f" under what-if plan {plan.name!r}" if plan is not None else ""
        note = (
            f"vpatient forecast{under} from {self.describe_time(self.start)} (what was known then). probabilityDecimal: "
            "1 - the posterior mean probability of being free of the event by the end of whenPeriod, given free at "
            "its start (other event kinds censoring); extension "
            f"{PROBABILITY_INTERVAL_URL}: the 90% interval over posterior draws. A model prediction, not a measurement."
        )
        assessments = []
        for event, rows in chosen.groupby("event", sort=False):
            spec = self.config.variable(str(event))
            outcome = variable_concept(spec, self.config)
            predictions = [self._prediction(outcome, row) for row in rows.itertuples(index=False)]
            assessments.append(
                self._build(
                    RiskAssessment,
                    f"RiskAssessment of {event}",
                    id=self.id("risk", plan.name if plan else "", event),
                    meta={"tag": self.tags(PREDICTION_TAG)},
                    status="preliminary",
                    subject=self.subject,
                    occurrenceDateTime=self.moment(self.start),
                    method={"text": self.method},
                    basis=[{"reference": f"CarePlan/{care_plan.id}", "display": care_plan.title}] if care_plan else None,
                    prediction=predictions,
                    note=[{"text": note}],
                )
            )
        return assessments

    def _prediction(self, outcome: dict, row: Any) -> dict:
        what = f"the probability of {outcome['text']} by {self.describe_time(row.time)}"
        probability = _finite(1.0 - row.survival, what)
        low, high = _finite(1.0 - row.survival_q95, what), _finite(1.0 - row.survival_q05, what)
        return {
            "outcome": outcome,
            "probabilityDecimal": probability,
            "whenPeriod": {"start": self.moment(self.start), "end": self.moment(row.time)},
            "extension": [{"url": PROBABILITY_INTERVAL_URL, "valueRange": {"low": {"value": low}, "high": {"value": high}}}],
            "rationale": f"{probability:.3f} (90% interval {low:.3f} to {high:.3f}) by {self.describe_time(row.time)}",
        }

    def observations(
        self, forecast: Forecast, times: list[float], plan: TreatmentPlan | None, care_plan: CarePlan | None
    ) -> list[Observation]:
        summary: pd.DataFrame = forecast.summary(since=self.start)
        chosen = summary[summary["time"].isin(times)]
        return [self._observation(row, plan, care_plan) for row in chosen.itertuples(index=False)]

    def _observation(self, row: Any, plan: TreatmentPlan | None, care_plan: CarePlan | None) -> Observation:
        spec = self.config.variable(row.variable)
        what = f"the forecast of {row.variable} at {self.describe_time(row.time)}"

        def quantity(value: float) -> dict:
            return {"value": _finite(value, what), **({"unit": spec.unit} if spec.unit else {})}

        components = [
            {
                "code": {"coding": [{"system": QUANTILE_SYSTEM, "code": name, "display": f"{label} predictive quantile"}]},
                "valueQuantity": quantity(getattr(row, name)),
            }
            for name, label in _QUANTILE_LABELS.items()
        ]
        return self._build(
            Observation,
            f"Observation of {row.variable}",
            id=self.id("observation", plan.name if plan else "", row.variable, repr(row.time)),
            meta={"tag": self.tags(PREDICTION_TAG)},
            status="preliminary",
            code=variable_concept(spec, self.config),
            subject=self.subject,
            effectiveDateTime=self.moment(row.time),
            valueQuantity=quantity(row.median),
            component=components,
            method={"text": self.method},
            basedOn=[{"reference": f"CarePlan/{care_plan.id}", "display": care_plan.title}] if care_plan else None,
        )

    def _build(self, model: type, what: str, **fields: Any) -> Any:
        """A fhir.resources model of ``fields`` (None left out); a VPatientError naming ``what`` when FHIR refuses it."""
        try:
            return model(**{k: v for k, v in fields.items() if v is not None})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            raise VPatientError(f"subject {self.record.subject_id}: {what} is not valid FHIR: {problems}") from None
