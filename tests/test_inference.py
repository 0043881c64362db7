"""Inference for one patient: point forecasts that are predictive medians, and posterior refinement that stops when converged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm

from vpatient import virtual_patient as vp
from vpatient.data.batching import Scalers, layout_from_config, make_batch
from vpatient.data.synthetic import synthetic_cohort
from vpatient.errors import VPatientError
from vpatient.model.latent_ode import LatentODE
from vpatient.virtual_patient import Forecast, SimulatedPaths


@pytest.fixture(scope="module")
def cohort():
    return synthetic_cohort(n=20, seed=3)


def _forecast_of(cohort, centres: np.ndarray, noise_sd: float, times: tuple[float, ...] = (0.0, 1.0)) -> Forecast:
    """A forecast whose paths are given: every continuous lab's decoder mean is ``centres`` (S,) at every time, model scale."""
    layout = layout_from_config(cohort.config)
    n_c, s, n_t = len(layout.continuous), len(centres), len(times)
    expected = np.broadcast_to(centres[None, :, None, None], (1, s, n_t, n_c)).copy()
    empty = np.zeros((1, s, n_t, 0))
    paths = SimulatedPaths(
        subject_ids=["p"],
        times=np.array([times], dtype=float),
        predictive=expected.copy(),
        expected=expected,
        binary_probability=empty,
        imaging=empty,
        survival=empty,
        incidence=empty,
        cutoff=np.zeros(1),
        effective_sample_size=np.full(1, float(s)),
        noise_sd=np.full((s, n_c), noise_sd),
        member=np.zeros(s, dtype=int),
    )
    return Forecast("p", 0.0, cohort.config, layout, paths)


def test_point_forecast_of_a_log_lab_is_the_predictive_median(cohort):
    """A log lab with large measurement noise: the point forecast is the predictive median, not the mean of exp(draws).

    The paths' log-scale means spread around log 10 and each has noise sd 1.5, so the mean of
    the natural-scale predictive is about 10 * exp(1.5**2 / 2), three times the median.
    """
    centres = np.log(10.0) + np.linspace(-0.3, 0.3, 41)
    summary = _forecast_of(cohort, centres, noise_sd=1.5).summary()
    assert list(summary.columns) == ["subject_id", "time", "variable", "median", "q05", "q25", "q75", "q95"]
    log_labs = [v.name for v in cohort.config.variables if v.transform == "log" and v.name in set(summary["variable"])]
    assert log_labs
    rows = summary[summary["variable"].isin(log_labs)]
    # the predictive CDF (an equal mixture of lognormals) at the reported median is 1/2, in closed form
    cdf = norm.cdf((np.log(rows["median"].to_numpy())[:, None] - centres[None, :]) / 1.5).mean(axis=1)
    np.testing.assert_allclose(cdf, 0.5, atol=1e-6)  # 40 bisection halvings of a ~10-sd bracket: far below 1e-6
    np.testing.assert_allclose(rows["median"], 10.0, rtol=1e-3)  # symmetric spread around log 10: the median is 10
    cdf_q05 = norm.cdf((np.log(rows["q05"].to_numpy())[:, None] - centres[None, :]) / 1.5).mean(axis=1)
    np.testing.assert_allclose(cdf_q05, 0.05, atol=1e-6)
    model_scale = _forecast_of(cohort, centres, noise_sd=1.5).summary(scale="model")
    np.testing.assert_allclose(np.exp(model_scale.loc[rows.index, "median"]), rows["median"], rtol=1e-9)


def test_a_summary_is_computed_once_and_since_computes_only_the_times_it_keeps(cohort, monkeypatch):
    """The dashboard's headline numbers, charts and table share one summary; a what-if's charts skip the history's times."""
    forecast = _forecast_of(cohort, np.zeros(30), noise_sd=0.4, times=tuple(np.linspace(0.0, 3.0, 13)))
    forecast.paths.expected[:] = np.random.default_rng(0).normal(size=forecast.paths.expected.shape)  # differs by time
    shapes = []
    real = vp.mixture_quantiles
    monkeypatch.setattr(vp, "mixture_quantiles", lambda means, *rest: shapes.append(means.shape) or real(means, *rest))
    whole = forecast.summary()
    labs = list(forecast.layout.continuous)
    part = forecast.summary(since=1.0, variables=[labs[-1], labs[0]])  # a grid point: it and the 8 after it are kept
    assert shapes == [(30, 13, len(labs)), (30, 9, 2)]  # the second computed only the 9 times and 2 labs it returns
    # the rows kept are the whole summary's, to the last bit, in its order
    kept = whole[(whole["time"] >= 1.0) & whole["variable"].isin([labs[0], labs[-1]])].reset_index(drop=True)
    pd.testing.assert_frame_equal(part, kept, check_exact=True)
    whole.loc[:, "median"] = -1.0  # a caller's edit of its copy ...
    again = forecast.summary()
    assert len(shapes) == 2  # ... served from the one computed, not recomputed
    assert (again["median"] != -1.0).all()  # ... and untouched by that edit
    pd.testing.assert_frame_equal(again, fresh(forecast).summary(), check_exact=True)
    with pytest.raises(VPatientError, match=r"\['weight'\] are not continuous variables of this model"):
        forecast.summary(variables=["weight"])


def test_survival_summary_gives_each_time_s_mean_and_90_percent_interval_of_the_draws(cohort):
    forecast = _forecast_of(cohort, np.zeros(40), noise_sd=0.4, times=tuple(np.linspace(0.0, 3.0, 7)))
    rng = np.random.default_rng(1)
    kinds = forecast.layout.events
    assert kinds
    forecast.paths.survival = np.sort(rng.uniform(size=(1, 40, 7, len(kinds))), axis=2)[:, :, ::-1]
    forecast.paths.incidence = 1.0 - forecast.paths.survival
    summary = forecast.survival_summary()
    assert summary is not forecast.survival_summary()  # a copy each time, of the one computed
    for k, kind in enumerate(kinds):
        rows = summary[summary["event"] == kind]
        draws = forecast.paths.survival[0, :, :, k]
        for i, (_, row) in enumerate(rows.iterrows()):
            assert row["survival"] == draws[:, i].mean()
            assert (row["survival_q05"], row["survival_q95"]) == (np.quantile(draws[:, i], 0.05), np.quantile(draws[:, i], 0.95))
            assert row["incidence"] == forecast.paths.incidence[0, :, i, k].mean()


def fresh(forecast: Forecast) -> Forecast:
    """A new forecast of the same paths (nothing kept from the summaries of ``forecast``)."""
    return Forecast(forecast.subject_id, forecast.until, forecast.config, forecast.layout, forecast.paths)


def _prior_only_patient(cohort):
    """A batch of one patient with no observations, events or treatments: q(z0)'s optimum is the prior N(0, I)."""
    record = cohort.records[0].model_copy(update={"observations": [], "events": [], "treatments": [], "end_of_followup": 0.5})
    scalers = Scalers.fit(cohort.records, cohort.config)
    return make_batch([record], cohort.config, scalers)


def test_refinement_stops_early_when_converged_and_is_deterministic(cohort):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        network = LatentODE(layout_from_config(cohort.config))
    batch = _prior_only_patient(cohort)
    start_mean, start_var = torch.full((1, network.posterior_dim), 0.5), torch.full((1, network.posterior_dim), 0.6)

    def refine(steps: int, seed: int = 0, tolerance: float = 0.05):
        generator = torch.Generator().manual_seed(seed)
        return network.refine_posterior(batch, start_mean, start_var, steps=steps, generator=generator, tolerance=tolerance)

    mean, var, taken = refine(200)
    assert taken < 200 and taken % 5 == 0  # stopped at a convergence check, long before the cap
    # the optimum is the prior; Adam at lr 0.05 with 4 draws a step gets within MC noise of it
    assert float(mean.abs().max()) < 0.15 and float((var.log()).abs().max()) < 0.3
    again = refine(200)
    assert again[2] == taken and torch.equal(again[0], mean) and torch.equal(again[1], var)  # same seed, same answer
    capped = refine(taken - 5)
    assert capped[2] == taken - 5  # the maximum is kept
    assert refine(taken + 10, tolerance=float("-inf"))[2] == taken + 10  # never converged: runs to the cap


@pytest.mark.slow
def test_training_benchmark_times_a_new_patients_whatif(cohort):
    """At a tiny size (2 members, 2 epochs): the new-patient what-if time and the refinement steps are measured and shown."""
    from vpatient.benchmarks.training import TrainingBenchmarkResult, run_training_benchmark
    from vpatient.errors import VPatientError

    result, model = run_training_benchmark(cohort, seed=0, members=2, whatif_horizon=2.0, epochs=2)
    assert result.whatif_new_patient_ms is not None and result.whatif_new_patient_ms > 0
    assert result.whatif_edit_ms is not None and result.whatif_edit_ms > 0
    assert result.refine_steps is not None and 0 < result.refine_steps <= model.refine_steps
    assert result.whatif_horizon == 2.0
    markdown = result.to_markdown()
    assert "| what-if for a new patient, ms |" in markdown and "| posterior refinement steps (median) |" in markdown
    # a result from before these fields reloads and shows none of their rows
    older = TrainingBenchmarkResult.model_validate(
        result.model_dump(exclude={"whatif_new_patient_ms", "refine_steps", "whatif_horizon"})
    )
    assert "new patient" not in older.to_markdown() and "refinement" not in older.to_markdown()
    with pytest.raises(VPatientError, match="horizon must be > 0"):
        run_training_benchmark(cohort, members=2, whatif_horizon=0.0, epochs=1)


def test_members_refined_together_match_each_refined_alone(cohort):
    """One vectorised refinement of two members gives each member's own refinement (same draws, same steps)."""
    layout = layout_from_config(cohort.config)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        members = [LatentODE(layout), LatentODE(layout)]
    record = cohort.records[0]
    batch = make_batch([record], cohort.config, Scalers.fit(cohort.records, cohort.config))
    starts = [m.posterior(batch, batch.followup_end) for m in members]
    alone = [
        m.refine_posterior(batch, mean, var, steps=10, generator=torch.Generator().manual_seed(0), tolerance=float("-inf"))
        for m, (mean, var) in zip(members, starts, strict=True)
    ]
    means, variances = torch.stack([s[0] for s in starts]), torch.stack([s[1] for s in starts])
    mean, var, taken = members[0].refine_posterior(
        batch, means, variances, steps=10, generator=torch.Generator().manual_seed(0), tolerance=float("-inf"), members=members
    )
    assert taken == 10
    for k, (m_k, v_k, _) in enumerate(alone):
        # float32 sums in another order; Adam's normalised steps can amplify that a little over 10 steps
        torch.testing.assert_close(mean[k], m_k, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(var[k], v_k, atol=1e-4, rtol=1e-4)
