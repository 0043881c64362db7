"""The world model: its ODE against exact solutions, its experts, learning, and checkpoints."""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.linalg import expm

from vpatient import transforms
from vpatient.data.batching import Scalers, layout_from_config, make_batch
from vpatient.data.synthetic import synthetic_cohort
from vpatient.evaluate.baselines import LOCF
from vpatient.evaluate.protocol import Standardiser, landmark_split, target_frame
from vpatient.model.dynamics import LatentDynamics, Solver
from vpatient.model.fusion import product_of_experts
from vpatient.model.latent_ode import LatentODE, ModelSettings
from vpatient.schemas import TimeUnit
from vpatient.train import TrainSettings, forecast_cutoffs
from vpatient.virtual_patient import CheckpointError, Scale, VirtualPatientModel


@pytest.fixture(scope="module")
def cohort():
    return synthetic_cohort(n=120, seed=3)


# --------------------------------------------------------------------------- ODE


@pytest.mark.parametrize(("solver", "tol"), [(Solver.RK4, 2e-5), (Solver.DOPRI5, 2e-5)])
def test_linear_dynamics_with_a_dose_change_match_the_exact_solution(solver, tol):
    """dz/dt = A z + B u(t) with u jumping at t=1.3, and a constant hazard: compare with expm."""
    torch.set_default_dtype(torch.float64)
    try:
        dyn = LatentDynamics(latent_dim=2, n_treatments=1, n_static=1, n_events=1, hidden=8)
        a = np.array([[-0.5, 0.3], [-0.2, -0.1]])
        b = np.array([[0.4], [-0.7]])
        dyn.field = torch.nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            dyn.field.weight.copy_(torch.tensor(np.hstack([a, b, np.zeros((2, 1))])))
            dyn.log_hazard.weight.zero_()
            dyn.log_hazard.bias.fill_(math.log(0.2))
        z0 = torch.tensor([[1.0, -0.5]])
        dose_times = torch.tensor([[0.0, 1.3, math.inf]])
        doses = torch.tensor([[[1.0], [2.5], [0.0]]])
        solution = dyn.solve(z0, torch.zeros(1, 1), dose_times, doses, t_max=3.0, solver=solver, step=0.25)
        times = np.array([0.0, 0.4, 1.3, 1.77, 3.0])
        got = solution.at(torch.tensor(times).unsqueeze(0))[0].detach().numpy()
    finally:
        torch.set_default_dtype(torch.float32)

    def exact(t: float) -> np.ndarray:
        def flow(z, dt, u):  # affine flow through the augmented matrix
            m = np.zeros((3, 3))
            m[:2, :2], m[:2, 2] = a, (b * u).ravel()
            return (expm(m * dt) @ np.append(z, 1.0))[:2]

        z = np.array([1.0, -0.5])
        return flow(z, t, 1.0) if t <= 1.3 else flow(flow(z, 1.3, 1.0), t - 1.3, 2.5)

    for i, t in enumerate(times):
        np.testing.assert_allclose(got[i, :2], exact(t), atol=tol)
        np.testing.assert_allclose(got[i, 2], 0.2 * t, atol=tol)  # cumulative hazard
        np.testing.assert_allclose(got[i, 3], 1 - math.exp(-0.2 * t), atol=tol)  # incidence of the only event


# --------------------------------------------------------------------------- experts


def test_product_of_experts_closed_form():
    means = torch.tensor([[[1.0], [3.0]]])
    precisions = torch.tensor([[[1.0], [2.0]]])
    mean, var = product_of_experts(means, precisions, torch.tensor([[1.0, 1.0]]))
    assert torch.allclose(var, torch.tensor([[1 / 4]]))  # prior 1 + 1 + 2
    assert torch.allclose(mean, torch.tensor([[(1 + 6) / 4]]))
    mean, var = product_of_experts(means, precisions, torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(var, torch.tensor([[0.5]])) and torch.allclose(mean, torch.tensor([[0.5]]))


def test_dropping_a_modality_equals_dropping_its_expert(cohort):
    config = cohort.config
    records = [r for r in cohort.records if r.imaging][:10]
    scalers = Scalers.fit(cohort.records, config)
    layout = layout_from_config(config)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LatentODE(layout).eval()
    full = make_batch(records, config, scalers)
    cutoff = torch.full((len(records),), 100.0)
    means, precisions, present = model.experts(full, cutoff)
    n_visits = full.times.shape[1]
    ct = [g.name for g in layout.groups].index("ct")
    present_without_ct = present.clone()
    present_without_ct[:, ct * n_visits : (ct + 1) * n_visits] = 0.0
    expected = product_of_experts(means, precisions, present_without_ct)
    without = make_batch([r.model_copy(update={"imaging": []}) for r in records], config, scalers)
    got = model.posterior(without, cutoff)
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])
    assert not torch.allclose(got[1], model.posterior(full, cutoff)[1])  # the CT expert did inform


# --------------------------------------------------------------------------- learning


def _continuous_mae(model: VirtualPatientModel, records) -> float:
    """Reconstruction error at observed visits, everything observed (standardised units)."""
    batch = make_batch(records, model.config, model.scalers)
    with torch.no_grad():
        mean, _ = model.network.posterior(batch, batch.followup_end)
        z = model.network.rollout(mean, batch).z(batch.times)
        pred = model.network.decoder.continuous_mean(z, model.network.offsets(mean), batch.times)
    mask = batch.continuous_mask * batch.visit_mask.unsqueeze(-1)
    return float(((pred - batch.continuous).abs() * mask).sum() / mask.sum())


@pytest.mark.slow
def test_overfits_a_handful_of_patients(cohort):
    records = cohort.records[:6]
    settings = TrainSettings(epochs=150, learning_rate=1e-2, validation_fraction=0.0, patience=1000, seed=0, batch_size=8)
    untrained = VirtualPatientModel.fit(records, cohort.config, replace(settings, epochs=0), progress=False)
    trained = VirtualPatientModel.fit(records, cohort.config, settings, progress=False)
    before, after = _continuous_mae(untrained, records), _continuous_mae(trained, records)
    floor = _noise_floor(cohort, records, trained)
    assert after < floor < before, (before, floor, after)  # below the noise: it memorised the patients
    assert trained.history.train_loss[-1] < 0.5 * trained.history.train_loss[0]


def _noise_floor(cohort, records, model: VirtualPatientModel) -> float:
    """MAE of the generator's noiseless truth against the same observed cells (standardised units)."""
    layout, errors = model.layout, []
    for r in records:
        truth = cohort.truth.observables_many(
            [r.subject_id], [cohort.truth.factual_exposures(r.subject_id)], np.asarray(r.visit_times())
        )
        truth = truth.set_index("time")
        for o in r.observations:
            if o.variable in layout.continuous:
                transform = cohort.config.variable(o.variable).transform
                gap = transforms.forward(o.value, transform) - transforms.forward(truth.loc[o.time, o.variable], transform)
                errors.append(abs(gap) / model.scalers.continuous_std[layout.continuous.index(o.variable)])
    return float(np.mean(errors))


@pytest.mark.slow
def test_short_training_beats_locf_on_held_out_patients(cohort):
    config = cohort.config
    eligible = [r for r in cohort.records if len(r.visit_times()) >= 4]
    train, test = eligible[:80], eligible[80:]
    model = VirtualPatientModel.fit(train, config, TrainSettings(epochs=60, patience=1000, seed=0), progress=False)
    locf = LOCF().fit(train, config, seed=0)
    variables = ["bilirubin", "alt", "albumin"]
    histories, targets = zip(*(landmark_split(r) for r in test), strict=True)
    queries = [target_frame(r.subject_id, t, config, variables) for r, t in zip(test, targets, strict=True)]
    import pandas as pd

    from vpatient.evaluate.forecaster import VirtualPatientForecaster

    cells = pd.concat([q for q in queries if len(q)], ignore_index=True)
    wmf = VirtualPatientForecaster(n_samples=64)
    wmf.model = model
    standardiser = Standardiser.fit(train, config, variables)
    errors = {}
    for name, method in (("vpatient", wmf), ("locf", locf)):
        answer = method.forecast(list(histories), cells[["subject_id", "time", "variable"]])
        merged = cells.merge(answer, on=["subject_id", "time", "variable"])
        scale = merged["variable"].map(standardiser.std)
        errors[name] = float((np.abs(merged["mean"] - merged["observed"]) / scale).mean())
    assert errors["vpatient"] < errors["locf"], errors


@pytest.mark.slow
def test_same_seed_same_model(cohort):
    settings = TrainSettings(epochs=3, seed=5)
    a = VirtualPatientModel.fit(cohort.records[:20], cohort.config, settings, progress=False)
    b = VirtualPatientModel.fit(cohort.records[:20], cohort.config, settings, progress=False)
    for key, value in a.network.state_dict().items():
        assert torch.equal(value, b.network.state_dict()[key]), key
    before = torch.random.get_rng_state()
    VirtualPatientModel.fit(cohort.records[:20], cohort.config, settings, progress=False)
    assert torch.equal(before, torch.random.get_rng_state())  # the global RNG is left alone


def test_scalers_are_fitted_on_training_patients_only(cohort):
    records = cohort.records[:40]
    model = VirtualPatientModel.fit(records, cohort.config, TrainSettings(epochs=1, validation_fraction=0.25), progress=False)
    held_out = set(model.history.validation_ids)
    assert len(held_out) == 10
    expected = Scalers.fit([r for r in records if r.subject_id not in held_out], cohort.config)
    np.testing.assert_allclose(model.scalers.continuous_mean, expected.continuous_mean)
    assert not np.allclose(model.scalers.continuous_mean, Scalers.fit(records, cohort.config).continuous_mean)


def test_forecast_cutoff_is_visit_ceil_half(cohort):
    batch = make_batch(cohort.records[:5], cohort.config, Scalers.fit(cohort.records, cohort.config))
    for b, record in enumerate(cohort.records[:5]):
        visits = record.visit_times()
        assert forecast_cutoffs(batch)[b].item() == pytest.approx(visits[math.ceil(len(visits) / 2) - 1])


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def small_model(cohort):
    return VirtualPatientModel.fit(cohort.records[:30], cohort.config, TrainSettings(epochs=2, seed=1), progress=False)


@pytest.mark.slow
def test_checkpoint_round_trip_gives_identical_forecasts(small_model, cohort, tmp_path):
    small_model.save(tmp_path / "m")
    loaded = VirtualPatientModel.load(tmp_path / "m")
    record = cohort.records[0]
    a = small_model.forecast(record, until=1.0, horizon=2.0, n_samples=16, seed=7)
    b = loaded.forecast(record, until=1.0, horizon=2.0, n_samples=16, seed=7)
    np.testing.assert_array_equal(a.paths.predictive, b.paths.predictive)
    np.testing.assert_array_equal(a.paths.survival, b.paths.survival)
    assert (tmp_path / "m" / "training_curve.png").stat().st_size > 5_000


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.slow
def test_pickled_or_corrupted_checkpoints_are_refused(small_model, tmp_path):
    small_model.save(tmp_path / "m")
    weights = tmp_path / "m" / "weights.pt"
    torch.save({"weights": _Payload()}, weights)
    with pytest.raises(CheckpointError, match=r"weights\.pt is corrupted"):
        VirtualPatientModel.load(tmp_path / "m")
    # A checkpoint written before ensembles and manifests records no digest: torch's weights_only loader is the guard.
    (tmp_path / "m" / "manifest.json").unlink()
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text())
    del meta["members"], meta["manifest"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="never unpickles"):
        VirtualPatientModel.load(tmp_path / "m")
    weights.write_bytes(pickle.dumps({"a": 1}, protocol=2)[:10])
    with pytest.raises(CheckpointError, match="not a plain tensor file"):
        VirtualPatientModel.load(tmp_path / "m")
    torch.save({"not.a.parameter": torch.zeros(2)}, weights)
    with pytest.raises(CheckpointError, match="do not fit the model"):
        VirtualPatientModel.load(tmp_path / "m")
    weights.unlink()
    with pytest.raises(CheckpointError, match=r"weights\.pt is missing"):
        VirtualPatientModel.load(tmp_path / "m")
    with pytest.raises(CheckpointError, match="no model directory"):
        VirtualPatientModel.load(tmp_path / "nowhere")


@pytest.mark.slow
def test_forecast_shapes_quantiles_and_survival(small_model, cohort):
    record = cohort.records[1]
    result = small_model.forecast(record, until=1.0, horizon=3.0, n_samples=32, seed=0)
    summary = result.summary()
    assert set(summary["variable"]) == set(small_model.layout.continuous)
    assert (summary["q05"] <= summary["median"]).all() and (summary["median"] <= summary["q95"]).all()
    surv = result.survival_summary()
    at_until = surv[np.isclose(surv["time"], 1.0)]
    np.testing.assert_allclose(at_until["survival"], 1.0)  # free of events at the forecast time, by definition
    later = surv[surv["time"] > 1.0].groupby("event")["survival"]
    assert (later.apply(lambda s: s.is_monotonic_decreasing)).all()
    with pytest.raises(Exception, match="horizon"):
        small_model.forecast(record, until=1.0, horizon=-1)


@pytest.mark.slow
def test_forecast_summary_scales_and_a_misspelt_one_is_refused(small_model, cohort):
    result = small_model.forecast(cohort.records[1], until=1.0, horizon=2.0, n_samples=16, seed=0)
    natural, model_scale = result.summary(Scale.NATURAL), result.summary(scale="model")
    assert natural.equals(result.summary())  # natural is the default
    log_lab = next(
        v.name for v in small_model.config.variables if v.transform == "log" and v.name in small_model.layout.continuous
    )
    rows = natural["variable"] == log_lab
    np.testing.assert_allclose(np.log(natural.loc[rows, "median"]), model_scale.loc[rows, "median"], rtol=1e-5)
    with pytest.raises(ValueError, match="unknown scale 'natual'; choose one of 'natural', 'model'"):
        result.summary(scale="natual")


@pytest.mark.slow
def test_settings_are_saved(small_model, tmp_path):
    small_model.save(tmp_path / "m")
    loaded = VirtualPatientModel.load(tmp_path / "m")
    assert loaded.network.settings == small_model.network.settings == ModelSettings()
    assert loaded.train_settings == small_model.train_settings
    assert json.loads((tmp_path / "m" / "model.json").read_text())["model_settings"]["solver"] == "rk4"
    assert loaded.network.settings.solver is Solver.RK4
    with pytest.raises(ValueError, match="'rk5' is not a valid Solver"):
        ModelSettings(solver="rk5")


@pytest.mark.slow
def test_plans_replace_the_future_with_common_random_numbers(small_model, cohort):
    from vpatient.data.timeline import truncate_record
    from vpatient.schemas import TreatmentExposure, TreatmentPlan

    treated = next(r for r in cohort.records if r.treatments and r.end_of_followup > 3)
    history = truncate_record(treated, 1.0)
    grid = [np.linspace(1.0, 3.0, 5)]
    dose = treated.treatments[0].dose
    same = TreatmentPlan(name="as given", exposures=[TreatmentExposure(treatment="drug", start=1.0, dose=dose)])
    withdraw = TreatmentPlan(name="withdraw")
    factual = small_model.simulate([history], grid, n_samples=16, seed=3)
    as_given = small_model.simulate([history], grid, n_samples=16, seed=3, plans=[same])
    again = small_model.simulate([history], grid, n_samples=16, seed=3, plans=[same])
    stopped = small_model.simulate([history], grid, n_samples=16, seed=3, plans=[withdraw])
    np.testing.assert_array_equal(as_given.expected, again.expected)  # identical plans: zero effect, exactly
    np.testing.assert_allclose(as_given.expected, factual.expected, atol=1e-4)  # the factual plan reproduces the forecast
    assert np.abs(stopped.expected - as_given.expected)[:, :, 1:].max() > 1e-6  # withdrawing the drug changes it
    np.testing.assert_allclose(stopped.expected[:, :, 0], as_given.expected[:, :, 0], atol=1e-4)  # not the past


def test_mixture_quantiles_are_exact_for_one_component_and_match_sampling_for_many():
    from scipy.stats import norm

    from vpatient.virtual_patient import mixture_quantiles

    one = mixture_quantiles(np.array([[1.5]]), np.array([2.0]), (0.05, 0.5, 0.95))
    np.testing.assert_allclose(one[:, 0], norm.ppf([0.05, 0.5, 0.95], loc=1.5, scale=2.0), atol=1e-8)
    rng = np.random.default_rng(0)
    means = rng.normal(size=(50, 3))
    sd = np.array([0.1, 0.5, 2.0])
    draws = means[rng.integers(50, size=400_000)] + rng.normal(size=(400_000, 3)) * sd
    np.testing.assert_allclose(
        mixture_quantiles(means, sd, (0.05, 0.25, 0.75)), np.quantile(draws, [0.05, 0.25, 0.75], axis=0), atol=0.02
    )


# --------------------------------------------------------------------------- time scale

DAYS_PER_YEAR = 365.25


def _in_days(record):
    """The same record with every time (visits, imaging, history, treatments, events, follow-up) in days instead of years."""
    data = record.model_dump()
    for key in ("observations", "imaging", "history", "events"):
        for entry in data[key]:
            entry["time"] *= DAYS_PER_YEAR
    for exposure in data["treatments"]:
        exposure["start"] *= DAYS_PER_YEAR
        exposure["stop"] = exposure["stop"] * DAYS_PER_YEAR if exposure["stop"] is not None else None
    data["end_of_followup"] *= DAYS_PER_YEAR
    return type(record).model_validate(data)


@pytest.mark.slow
def test_the_same_cohort_in_days_and_in_years_gives_the_same_forecasts(cohort):
    records = cohort.records[:24]
    in_years = cohort.config
    in_days = in_years.model_copy(update={"time_unit": TimeUnit.DAYS, "horizon": in_years.horizon * DAYS_PER_YEAR})
    settings = TrainSettings(epochs=3, seed=4)
    years = VirtualPatientModel.fit(records, in_years, settings, progress=False)
    days = VirtualPatientModel.fit([_in_days(r) for r in records], in_days, settings, progress=False)
    assert days.network.time_scale == pytest.approx(years.network.time_scale * DAYS_PER_YEAR, rel=1e-9)
    assert days.network.solver_step == pytest.approx(years.network.solver_step * DAYS_PER_YEAR, rel=1e-9)
    # An event's density per day is its density per year / 365.25: the losses differ by log(365.25) per
    # observed event, a constant that moves no gradient, so the two runs take the same steps.
    offset = np.asarray(days.history.train_loss) - np.asarray(years.history.train_loss)
    assert offset[0] > 0 and np.ptp(offset) < 1e-3
    record = cohort.records[30]  # not trained on
    a = years.forecast(record, until=1.0, n_samples=16, seed=7)
    b = days.forecast(_in_days(record), until=DAYS_PER_YEAR, n_samples=16, seed=7)
    np.testing.assert_allclose(b.times, a.times * DAYS_PER_YEAR, rtol=1e-6)
    # Measured: they agree to 3.5e-5 (float32 rounding of times 365.25 times larger, grown over training; 5e-7
    # without the covariates-only cut-offs, whose wide posteriors roll out further); 2e-4 leaves room for other CPUs.
    np.testing.assert_allclose(b.paths.predictive, a.paths.predictive, rtol=0, atol=2e-4)
    np.testing.assert_allclose(b.paths.survival, a.paths.survival, rtol=0, atol=2e-4)


def test_time_scale_is_the_median_visit_gap_and_round_trips_through_a_checkpoint(cohort, tmp_path):
    records = cohort.records[:12]
    scalers = Scalers.fit(records, cohort.config)
    gaps = np.concatenate([np.diff(r.visit_times()) for r in records])
    assert scalers.time_scale == pytest.approx(np.median(gaps[gaps > 0]))
    assert scalers.median_followup == pytest.approx(np.median([r.end_of_followup for r in records]))
    model = VirtualPatientModel.fit(records, cohort.config, TrainSettings(epochs=1), progress=False)
    assert model.network.time_scale == model.scalers.time_scale != 1.0
    model.save(tmp_path / "m")
    loaded = VirtualPatientModel.load(tmp_path / "m")
    assert loaded.network.time_scale == model.network.time_scale
    assert loaded.network.dynamics.time_scale == loaded.network.decoder.time_scale == model.network.time_scale
    # A checkpoint from before the time scale (and before manifests): its network keeps the data's unit as its own,
    # so its numbers do not change.
    (tmp_path / "m" / "manifest.json").unlink()
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    del meta["manifest"]
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    saved = json.loads((tmp_path / "m" / "scalers.json").read_text())
    del saved["time_scale"], saved["median_followup"]
    (tmp_path / "m" / "scalers.json").write_text(json.dumps(saved))
    old = VirtualPatientModel.load(tmp_path / "m")
    assert old.network.time_scale == 1.0 and old.scalers.median_followup is None
    saved["time_scale"] = -1.0
    (tmp_path / "m" / "scalers.json").write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match="time_scale"):
        VirtualPatientModel.load(tmp_path / "m")


def test_default_horizon_is_the_configs_else_the_median_follow_up(cohort):
    records = cohort.records[:12]
    model = VirtualPatientModel.fit(records, cohort.config, TrainSettings(epochs=1), progress=False)
    assert model.default_horizon == cohort.config.horizon == 5.0
    model.config = cohort.config.model_copy(update={"horizon": None})
    assert model.default_horizon == pytest.approx(np.median([r.end_of_followup for r in records]))
