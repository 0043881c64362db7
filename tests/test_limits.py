"""Bounded work: a typo in a horizon, a sample count, a cohort size or a plan fails at once, naming the option and the limit.

Every check must fire before any modelling: ``no_heavy_work`` makes posterior inference (the
first costly step of every forecast, what-if, ranking and report) fail the test if it starts.
"""

from __future__ import annotations

import re

import pytest
import torch
from typer.testing import CliRunner

from vpatient import limits
from vpatient.cli import app
from vpatient.errors import OptionError
from vpatient.policy import recommend
from vpatient.schemas import TreatmentExposure, TreatmentPlan
from vpatient.simulation import Simulator
from vpatient.virtual_patient import NumericalError, VirtualPatientModel

PATIENT = "5"


@pytest.fixture(scope="module")
def model(untrained_model_dir) -> VirtualPatientModel:
    return VirtualPatientModel.load(untrained_model_dir)


@pytest.fixture()
def no_heavy_work(monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError("posterior inference started: the limit was checked too late")

    monkeypatch.setattr(VirtualPatientModel, "member_posteriors", started)


def _refused(model_dir, *args: str) -> str:
    """The error of ``vpatient <args>`` run in process; it must be a LimitError."""
    result = CliRunner().invoke(app, [args[0], "--model", str(model_dir), *args[1:]])
    assert isinstance(result.exception, limits.LimitError), result.output
    return str(result.exception)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--horizon", "1e9"], r"^horizon = 1,000,000,000 years: the forecast would run to t = 1,000,000,00\d\.\d+ years, past "),
        (["--until", "1e6"], r"^until = 1,000,000 years: the forecast would run to t = 1,000,000 years, past the limit of "),
        (["--n-samples", "10000000"], r"^n_samples = 10,000,000: over the limit of 100,000 posterior samples per patient; "),
    ],
)
def test_forecast_typos_fail_fast_naming_the_option_and_how_to_raise_the_limit(
    untrained_model_dir, no_heavy_work, args, expected
):
    message = _refused(untrained_model_dir, "forecast", "--patient", PATIENT, *args)
    assert re.search(expected, message), message
    assert re.search(r"set VPATIENT_MAX_\w+ \(now [\d,]+\) to raise the limit$", message), message


def test_the_horizon_limit_is_a_multiple_of_the_training_follow_up(model, no_heavy_work):
    record = model.patients().subject(PATIENT)
    allowed = limits.HORIZON_FOLLOWUPS.default * model.scalers.median_followup
    with pytest.raises(limits.LimitError, match=rf"past the limit of {allowed:.4g} years \(25 times the training data's median"):
        model.forecast(record, until=1.0, horizon=allowed)  # ends at 1 + allowed: just over


def test_a_limit_is_raised_or_lowered_by_its_environment_variable(model, no_heavy_work, monkeypatch):
    record = model.patients().subject(PATIENT)
    monkeypatch.setenv("VPATIENT_MAX_SAMPLES", "50")
    with pytest.raises(limits.LimitError, match=r"n_samples = 64: over the limit of 50 posterior samples per patient; "):
        model.forecast(record, horizon=1.0, n_samples=64)
    monkeypatch.setenv("VPATIENT_MAX_SAMPLES", "lots")
    with pytest.raises(OptionError, match=r"VPATIENT_MAX_SAMPLES = 'lots': must be a number > 0"):
        model.forecast(record, horizon=1.0, n_samples=64)


def test_whatif_refuses_a_far_horizon_and_an_endless_plan(model, no_heavy_work):
    record = model.patients().subject(PATIENT)
    none = TreatmentPlan(name="none")
    with pytest.raises(limits.LimitError, match=r"^horizon = 1,000 years: the forecast would run to t = 1,00\d"):
        Simulator(model).whatif(record, [none], horizon=1000.0)
    endless = TreatmentPlan(
        name="daily",
        exposures=[TreatmentExposure(treatment="d_penicillamine", start=k, stop=k + 0.5, dose=1.0) for k in range(10_001)],
    )
    with pytest.raises(limits.LimitError, match=r"^the exposures of plan 'daily' = 10,001: over the limit of 10,000 exposures"):
        Simulator(model).whatif(record, [none, endless], horizon=1.0)


def test_recommend_refuses_too_many_samples_and_a_far_target(model, no_heavy_work):
    record = model.patients().subject(PATIENT)
    with pytest.raises(limits.LimitError, match=r"^n_samples = 10,000,000: over the limit"):
        recommend(model, record, "risk:death:2", n_samples=10_000_000)
    with pytest.raises(limits.LimitError, match=r"^the horizon of target risk:death:1000 = 1,000 years: the forecast would run"):
        recommend(model, record, "risk:death:1000")


def test_cohorts_and_trials_refuse_too_many_patients_or_years_before_drawing_any(model):
    sim = Simulator(model)  # no population: drawing a patient would fail differently
    with pytest.raises(limits.LimitError, match=r"^n = 100,000,000,000: over the limit of 10,000,000 virtual patients"):
        sim.cohort(10**11, years=1.0, progress=False)
    with pytest.raises(limits.LimitError, match=r"^years = 1,000,000 years: the forecast would run to"):
        sim.cohort(10, years=1e6, progress=False)
    arms = {"none": TreatmentPlan(name="none"), "also none": TreatmentPlan(name="also none")}
    with pytest.raises(limits.LimitError, match=r"^n = 100,000,000,000: over the limit"):
        sim.trial(arms, n=10**11, progress=False)


def test_report_patient_refuses_a_far_horizon_before_any_work(untrained_model_dir, no_heavy_work, tmp_path):
    plan = tmp_path / "none.json"
    plan.write_text(TreatmentPlan(name="none").model_dump_json())
    out = tmp_path / "r.html"
    result = CliRunner().invoke(
        app, ["report", "patient", "--model", str(untrained_model_dir), "--patient", PATIENT, "--plan", str(plan),
              "--out", str(out), "--horizon", "1e9"],
    )  # fmt: skip
    assert isinstance(result.exception, limits.LimitError) and "horizon = 1,000,000,000 years" in str(result.exception)
    assert not out.exists()


@pytest.mark.slow  # a whole forecast through the command line (posterior refinement included): about 5 s
def test_the_cli_warns_when_a_forecast_runs_past_the_training_follow_up(untrained_model_dir, model):
    follow = [r.end_of_followup for r in model.patients().records]
    args = ["forecast", "--model", str(untrained_model_dir), "--patient", PATIENT, "--n-samples", "2", "--horizon", "30"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (
        f"beyond the longest training follow-up ({max(follow):.1f} years): the dynamics there are extrapolated." in result.output
    )
    assert model.followup_warning(min(follow)) is None  # where most patients were followed: nothing to warn of
    assert "past the follow-up of 90% of training patients" in model.followup_warning(max(follow) - 1e-6)


def test_a_rollout_that_blows_up_is_an_error_naming_the_patient(untrained_model_dir):
    model = VirtualPatientModel.load(untrained_model_dir)
    model.refine_steps = 0
    with torch.no_grad():
        for weight in model.network.dynamics.parameters():
            weight.fill_(1e37)  # a vector field whose state overflows float32 within the horizon
    with pytest.raises(NumericalError, match=rf"^subject {PATIENT}: the simulation produced non-finite values"):
        model.forecast(model.patients().subject(PATIENT), horizon=2.0, n_samples=4)
