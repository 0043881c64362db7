"""Forecasts and what-ifs exported as FHIR R4B: valid resources, the forecast's own numbers, marked as predictions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.riskassessment import RiskAssessment
from typer.testing import CliRunner

from vpatient import predictions_to_fhir, write_predictions_fhir
from vpatient.cli import app
from vpatient.data.fhir.coding import RELATIVE_EPOCH, RELATIVE_TIME_TAG, to_coding
from vpatient.errors import OutputExistsError, VPatientError
from vpatient.report.fhir import (
    PREDICTION_TAG,
    PROBABILITY_INTERVAL_URL,
    QUANTILE_SYSTEM,
    WHAT_IF_TAG,
    predictions_json,
)
from vpatient.schemas import TreatmentExposure, TreatmentPlan
from vpatient.simulation.whatif import whatif
from vpatient.virtual_patient import VirtualPatientModel

PATIENT = "5"
YEAR = timedelta(days=365.25)


@pytest.fixture(scope="module")
def model(untrained_model_dir) -> VirtualPatientModel:
    return VirtualPatientModel.load(untrained_model_dir)


@pytest.fixture(scope="module")
def record(model):
    return model.patients().subject(PATIENT)


@pytest.fixture(scope="module")
def forecast(model, record):
    return model.forecast(record, horizon=2.0, n_samples=8, seed=0)


@pytest.fixture(scope="module")
def plans(model) -> list[TreatmentPlan]:
    drug = model.config.treatments[0]
    exposure = TreatmentExposure(treatment=drug, start=1.0, stop=2.5, dose=1.0)
    return [
        TreatmentPlan(name="no treatment"),
        TreatmentPlan(name="treat", description="a year and a half", exposures=[exposure]),
    ]


@pytest.fixture(scope="module")
def what_if(model, record, plans):
    return whatif(model, record, plans, horizon=2.0, n_samples=8, seed=0, at=1.0)


def _parsed(bundle: Bundle) -> tuple[Bundle, list]:
    """The bundle read back from its JSON: every resource validated again by its R4B model."""
    again = Bundle.model_validate_json(predictions_json(bundle))
    return again, [entry.resource for entry in again.entry]


def _of(resources: list, kind: type) -> list:
    return [r for r in resources if isinstance(r, kind)]


def _tags(resource) -> list[tuple[str, str]]:
    return [(t.system, t.code) for t in resource.meta.tag]


def _words(output: str) -> str:
    """A usage error's text without the box typer draws around it."""
    return " ".join(word for word in output.split() if word not in "│╭╮╰╯─")


def _moment(t: float) -> datetime:
    return RELATIVE_EPOCH.replace(tzinfo=UTC) + t * YEAR


def test_a_forecast_is_a_valid_bundle_of_predictions_that_resolve_inside_it(model, record, forecast):
    bundle, resources = _parsed(predictions_to_fhir(forecast, record, model))
    assert bundle.type == "collection"
    (patient,) = _of(resources, Patient)
    assert patient.id == PATIENT and (RELATIVE_TIME_TAG["system"], RELATIVE_TIME_TAG["code"]) in _tags(patient)
    assessments, observations = _of(resources, RiskAssessment), _of(resources, Observation)
    assert len(resources) == 1 + len(assessments) + len(observations)
    assert [a.prediction[0].outcome.text for a in assessments] == list(model.config.event_kinds)
    for resource in assessments + observations:
        assert resource.status == "preliminary"
        assert (PREDICTION_TAG["system"], PREDICTION_TAG["code"]) in _tags(resource)
        assert (RELATIVE_TIME_TAG["system"], RELATIVE_TIME_TAG["code"]) in _tags(resource)
        assert resource.subject.reference == f"Patient/{PATIENT}"
        assert "vpatient world model of pbc2" in resource.method.text
    for a in assessments:
        assert a.basis is None  # nothing it could not resolve
        assert a.occurrenceDateTime == _moment(forecast.until)


def test_the_risks_are_one_minus_the_forecast_survival_and_its_interval(model, record, forecast):
    _, resources = _parsed(predictions_to_fhir(forecast, record, model))
    survival = forecast.survival_summary().set_index(["event", "time"])
    horizons = [t for t in forecast.milestones() if t > forecast.until]
    assert len(horizons) == 5 and horizons[-1] == pytest.approx(forecast.until + 2.0)
    for assessment in _of(resources, RiskAssessment):
        event = assessment.prediction[0].outcome.text
        system, code = to_coding(model.config.variable(event).codes[0], model.config)
        ends = []
        for p in assessment.prediction:
            assert (p.outcome.coding[0].system, p.outcome.coding[0].code) == (system, code)
            (t,) = [h for h in horizons if abs(_moment(h) - p.whenPeriod.end) <= timedelta(microseconds=1)]
            assert p.whenPeriod.start == _moment(forecast.until)
            row = survival.loc[(event, t)]
            assert float(p.probabilityDecimal) == 1 - row["survival"]
            (interval,) = [e for e in p.extension if e.url == PROBABILITY_INTERVAL_URL]
            assert float(interval.valueRange.low.value) == 1 - row["survival_q95"]
            assert float(interval.valueRange.high.value) == 1 - row["survival_q05"]
            assert float(interval.valueRange.low.value) <= float(p.probabilityDecimal) <= float(interval.valueRange.high.value)
            ends.append(t)
        assert ends == horizons
    # the risks grow with the horizon (a survival curve only falls)
    first = _of(resources, RiskAssessment)[0]
    risks = [float(p.probabilityDecimal) for p in first.prediction]
    assert risks == sorted(risks) and risks[0] > 0


def test_the_lab_observations_are_the_forecast_median_and_quantiles(model, record, forecast):
    _, resources = _parsed(predictions_to_fhir(forecast, record, model))
    observations = _of(resources, Observation)
    summary = forecast.summary().set_index(["variable", "time"])
    horizons = [t for t in forecast.milestones() if t > forecast.until]
    assert len(observations) == len(model.layout.continuous) * len(horizons)
    for obs in observations:
        spec = model.config.variable(obs.code.text)
        assert (obs.code.coding[0].system, obs.code.coding[0].code) == to_coding(spec.codes[0], model.config)
        (t,) = [h for h in horizons if abs(_moment(h) - obs.effectiveDateTime) <= timedelta(microseconds=1)]
        row = summary.loc[(spec.name, t)]
        assert float(obs.valueQuantity.value) == row["median"] and obs.valueQuantity.unit == spec.unit
        bounds = {c.code.coding[0].code: float(c.valueQuantity.value) for c in obs.component}
        assert {c.code.coding[0].system for c in obs.component} == {QUANTILE_SYSTEM}
        assert bounds == {q: row[q] for q in ("q05", "q25", "q75", "q95")}
        assert bounds["q05"] <= bounds["q25"] <= float(obs.valueQuantity.value) <= bounds["q75"] <= bounds["q95"]


def test_a_what_if_has_a_care_plan_and_risks_per_plan(model, record, what_if, plans):
    _, resources = _parsed(predictions_to_fhir(what_if, record, model))
    care_plans = _of(resources, CarePlan)
    assert [c.title for c in care_plans] == ["no treatment", "treat"]
    assert all(c.status == "draft" and c.intent == "proposal" for c in care_plans)
    assert all((WHAT_IF_TAG["system"], WHAT_IF_TAG["code"]) in _tags(c) for c in care_plans)
    assert care_plans[0].activity is None and care_plans[0].description == "no treatment"
    (activity,) = care_plans[1].activity
    drug = model.config.treatments[0]
    assert activity.detail.productCodeableConcept.text == drug and float(activity.detail.quantity.value) == 1.0
    assert (activity.detail.scheduledPeriod.start, activity.detail.scheduledPeriod.end) == (_moment(1.0), _moment(2.5))
    by_id = {f"CarePlan/{c.id}": c.title for c in care_plans}
    survival = what_if.survival().set_index(["plan", "event", "time"])
    assessments = _of(resources, RiskAssessment)
    assert len(assessments) == len(plans) * len(model.config.event_kinds)
    for a in assessments:
        (basis,) = a.basis
        plan = by_id[basis.reference]  # resolves to a CarePlan of the bundle
        assert plan in a.note[0].text
        for p in a.prediction:
            (t,) = [t for t in what_if.forecasts[plan].times if abs(_moment(t) - p.whenPeriod.end) <= timedelta(microseconds=1)]
            assert float(p.probabilityDecimal) == 1 - survival.loc[(plan, p.outcome.text, t), "survival"]
    trajectories = what_if.trajectories(since=what_if.at).set_index(["plan", "variable", "time"])
    for obs in _of(resources, Observation):
        plan = by_id[obs.basedOn[0].reference]
        (t,) = [t for t in what_if.forecasts[plan].times if abs(_moment(t) - obs.effectiveDateTime) <= timedelta(microseconds=1)]
        assert float(obs.valueQuantity.value) == trajectories.loc[(plan, obs.code.text, t), "median"]
    # the plans differ only after the drug starts: their forecasts are not the same numbers
    first, second = (a for a in assessments if a.prediction[0].outcome.text == model.config.event_kinds[0])
    assert [p.probabilityDecimal for p in first.prediction] != [p.probabilityDecimal for p in second.prediction]


def test_calendar_time_is_the_index_plus_the_record_time(model, record, forecast):
    dated = record.model_copy(update={"index_time": datetime(2020, 3, 1, 12, 0)})
    _, resources = _parsed(predictions_to_fhir(forecast, dated, model))
    (assessment, *_) = _of(resources, RiskAssessment)
    index = datetime(2020, 3, 1, 12, 0, tzinfo=UTC)
    assert assessment.occurrenceDateTime == index + forecast.until * YEAR
    assert (RELATIVE_TIME_TAG["system"], RELATIVE_TIME_TAG["code"]) not in _tags(assessment)
    assert _of(resources, Patient)[0].meta is None


def test_horizons_are_chosen_on_the_forecast_grid_and_checked(model, record, forecast):
    _, resources = _parsed(predictions_to_fhir(forecast, record, model, horizons=[0.5, 1.0]))
    ends = [p.whenPeriod.end for p in _of(resources, RiskAssessment)[0].prediction]
    assert [round((end - _moment(forecast.until)) / YEAR, 2) for end in ends] == [0.5, 1.0]
    with pytest.raises(VPatientError, match=r"horizons \[3\.0\] lie outside \(0, 2\]"):
        predictions_to_fhir(forecast, record, model, horizons=[3.0])


def test_bad_subjects_are_refused_with_a_message(model, record, forecast):
    other = record.model_copy(update={"subject_id": "6"})
    with pytest.raises(VPatientError, match="the result is of subject '5', the record of '6'"):
        predictions_to_fhir(forecast, other, model)
    odd = record.model_copy(update={"subject_id": "p_5"})
    forecast_of_odd = type(forecast)("p_5", forecast.until, forecast.config, forecast.layout, forecast.paths)
    with pytest.raises(VPatientError, match=r"subject id 'p_5' cannot be a FHIR Patient.id"):
        predictions_to_fhir(forecast_of_odd, odd, model)


def test_the_same_forecast_writes_the_same_bytes_and_refuses_to_overwrite(model, record, forecast, tmp_path):
    path = write_predictions_fhir(forecast, record, model, tmp_path / "a.json")
    again = model.forecast(record, horizon=2.0, n_samples=8, seed=0)
    assert write_predictions_fhir(again, record, model, tmp_path / "b.json").read_bytes() == path.read_bytes()
    with pytest.raises(OutputExistsError, match=r"a\.json exists; choose another path or pass overwrite=True"):
        write_predictions_fhir(forecast, record, model, path)
    with pytest.raises(OutputExistsError, match="is a directory"):
        write_predictions_fhir(forecast, record, model, tmp_path)
    with pytest.raises(VPatientError, match=r"cannot write .*a\.json/c\.json"):  # a folder that is a file
        write_predictions_fhir(forecast, record, model, path / "c.json")
    write_predictions_fhir(forecast, record, model, path, overwrite=True)
    assert json.loads(path.read_text())["resourceType"] == "Bundle"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]  # nothing half-written beside them


def test_cli_forecast_and_whatif_write_fhir(untrained_model_dir, plans, tmp_path):
    runner = CliRunner()
    base = ["--model", str(untrained_model_dir), "--patient", PATIENT, "--n-samples", "4", "--horizon", "1"]
    written = tmp_path / "forecast.fhir.json"
    result = runner.invoke(app, ["forecast", *base, "--format", "fhir", "--out", str(written)])
    assert result.exit_code == 0, result.output
    assert "subject 5: forecast from" in result.stdout  # the tables are still printed
    bundle = Bundle.model_validate_json(written.read_text())
    assert {type(e.resource).__name__ for e in bundle.entry} == {"Patient", "RiskAssessment", "Observation"}

    before = written.read_bytes()
    refused = runner.invoke(app, ["forecast", *base, "--out", str(written)])
    assert isinstance(refused.exception, OutputExistsError) and "--overwrite" in str(refused.exception)
    assert written.read_bytes() == before
    # the same seed writes the same bytes (the file is replaced only with --overwrite)
    again = runner.invoke(app, ["forecast", *base, "--out", str(written), "--overwrite"])
    assert again.exit_code == 0 and written.read_bytes() == before
    no_file = runner.invoke(app, ["forecast", *base, "--format", "fhir"])
    assert no_file.exit_code == 2 and "give --out FILE as well" in _words(no_file.output)
    unknown = runner.invoke(app, ["forecast", *base, "--format", "csv", "--out", str(tmp_path / "c.csv")])
    assert unknown.exit_code == 2 and "'csv' is not one of fhir" in _words(unknown.output)

    plan_files = []
    for i, plan in enumerate(plans):
        plan_files += ["--plan", str(tmp_path / f"plan{i}.json")]
        (tmp_path / f"plan{i}.json").write_text(plan.model_dump_json())
    out = tmp_path / "whatif.fhir.json"
    result = runner.invoke(app, ["whatif", *base, "--at", "1", *plan_files, "--format", "fhir", "--out", str(out)])
    assert result.exit_code == 0, result.output
    bundle = Bundle.model_validate_json(out.read_text())
    assert sorted(e.resource.title for e in bundle.entry if isinstance(e.resource, CarePlan)) == ["no treatment", "treat"]


def test_a_users_config_in_days_with_loinc_codes_and_calendar_time(config, record_data):
    """Nothing PBC-specific: the tiny config in days, bilirubin under LOINC, a record with an index time."""
    import torch

    from vpatient.data.batching import Scalers, layout_from_config
    from vpatient.model.latent_ode import LatentODE, ModelSettings
    from vpatient.schemas import TimeUnit, parse_record

    variables = [v.model_copy(update={"codes": ["LOINC/1975-2"]}) if v.name == "bilirubin" else v for v in config.variables]
    days = config.model_copy(update={"time_unit": TimeUnit.DAYS, "variables": variables})
    record = parse_record({**record_data, "index_time": "2021-06-01T08:30:00+02:00", "events": []}, days)
    scalers = Scalers.fit([record, record], days)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        network = LatentODE(layout_from_config(days), ModelSettings(latent_dim=4, hidden=16), scalers.time_scale)
    model = VirtualPatientModel(network, days, scalers)
    forecast = model.forecast(record, 1.0, 30.0, 8, 0)
    _, resources = _parsed(predictions_to_fhir(forecast, record, model))
    index = datetime(2021, 6, 1, 6, 30, tzinfo=UTC)  # the index in UTC
    assessments = _of(resources, RiskAssessment)
    assert [a.prediction[0].outcome.coding[0].code for a in assessments] == ["MEDS_DEATH", "EVENT//TX"]
    for a in assessments:
        assert a.occurrenceDateTime == index + timedelta(days=1)
        assert [p.whenPeriod.end for p in a.prediction] == [index + timedelta(days=1 + 6 * k) for k in range(1, 6)]
    bilirubin = [o for o in _of(resources, Observation) if o.code.text == "bilirubin"]
    assert len(bilirubin) == 5 and bilirubin[0].valueQuantity.unit == "mg/dl"
    assert (bilirubin[0].code.coding[0].system, bilirubin[0].code.coding[0].code) == ("http://loinc.org", "1975-2")
    assert all((RELATIVE_TIME_TAG["system"], RELATIVE_TIME_TAG["code"]) not in _tags(r) for r in assessments + bilirubin)
