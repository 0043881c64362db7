"""Peer methods: the mixed model recovers known parameters and covers 90%; the peers order as expected on PBC."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vpatient.benchmarks.forecast import run_forecast_benchmark
from vpatient.data.pbc import load_pbc2
from vpatient.evaluate.baselines import LOCF, LandmarkCox, LastValueRisk, LinearMixedModel, MeanOnly, fit_mixed_model
from vpatient.evaluate.methods import METHODS, PEERS
from vpatient.evaluate.protocol import Forecaster, forecast_folds, landmark_split, target_frame

BETA = np.array([1.0, 0.5, -0.3])  # intercept, time, a subject-level covariate
D = np.array([[1.0, 0.2], [0.2, 0.25]])
SIGMA2 = 0.3


@pytest.fixture(scope="module")
def pbc():
    return load_pbc2()


def _simulate(n_subjects: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Subjects from the mixed model: (x (n, 3), z (n, 2), y (n,)) with 2-8 visits over 6 years."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_subjects):
        n = int(rng.integers(2, 9))
        t = np.sort(rng.uniform(0, 6, n))
        x = np.column_stack([np.ones(n), t, np.full(n, rng.normal())])
        z = x[:, :2]
        b = rng.multivariate_normal([0.0, 0.0], D)
        out.append((x, z, x @ BETA + z @ b + rng.normal(0, np.sqrt(SIGMA2), n)))
    return out


def test_mixed_model_recovers_known_parameters_and_covers_90_percent():
    subjects = _simulate(500, seed=5)
    x = np.vstack([s[0] for s in subjects])
    z = np.vstack([s[1] for s in subjects])
    y = np.concatenate([s[2] for s in subjects])
    groups = np.repeat(np.arange(len(subjects)), [len(s[2]) for s in subjects])
    fit = fit_mixed_model(x, z, y, groups)
    assert fit.converged
    se = np.sqrt(np.diag(fit.beta_cov))
    assert np.all(np.abs(fit.beta - BETA) < 3 * se), (fit.beta, se)
    assert fit.sigma2 == pytest.approx(SIGMA2, rel=0.1)
    np.testing.assert_allclose(fit.random_cov, D, atol=0.12)
    # forecast new subjects' later visits from their first half
    inside = []
    for xs, zs, ys in _simulate(600, seed=6):
        k = int(np.ceil(len(ys) / 2))
        if k == len(ys):
            continue
        mean, sd = fit.predict(xs[:k], zs[:k], ys[:k], xs[k:], zs[k:])
        inside += list(np.abs(ys[k:] - mean) <= 1.6449 * sd)
    assert len(inside) > 800
    assert np.mean(inside) == pytest.approx(0.9, abs=0.03)


def test_mixed_model_without_history_predicts_the_population_mean():
    subjects = _simulate(200, seed=7)
    fit = fit_mixed_model(
        np.vstack([s[0] for s in subjects]),
        np.vstack([s[1] for s in subjects]),
        np.concatenate([s[2] for s in subjects]),
        np.repeat(np.arange(200), [len(s[2]) for s in subjects]),
    )
    x_new = np.array([[1.0, 2.0, 0.5]])
    z_new = x_new[:, :2]
    mean, sd = fit.predict(np.empty((0, 3)), np.empty((0, 2)), np.empty(0), x_new, z_new)
    assert mean[0] == pytest.approx(float(x_new[0] @ fit.beta))
    expected = float(x_new[0] @ fit.beta_cov @ x_new[0] + z_new[0] @ fit.random_cov @ z_new[0] + fit.sigma2)
    assert sd[0] ** 2 == pytest.approx(expected)


def test_every_registered_method_is_a_forecaster():
    for name in PEERS:
        assert isinstance(METHODS[name](), Forecaster), name


def test_locf_carries_the_last_history_value_forward(pbc):
    train, test = pbc.records[:200], pbc.records[200:230]
    method = LOCF().fit(train, pbc.config, seed=0)
    histories, truth = [], []
    for r in test:
        if len(r.visit_times()) >= 2:
            h, later = landmark_split(r)
            histories.append(h)
            truth.append(target_frame(r.subject_id, later, pbc.config, ["bilirubin"]))
    queries = pd.concat(truth, ignore_index=True)[["subject_id", "time", "variable"]]
    answer = method.forecast(histories, queries)
    last = {h.subject_id: np.log([o.value for o in h.observations if o.variable == "bilirubin"][-1]) for h in histories}
    np.testing.assert_allclose(answer["mean"], answer["subject_id"].map(last))
    assert (answer["q05"] < answer["mean"]).all() and (answer["mean"] < answer["q95"]).all()


@pytest.mark.slow
def test_locf_and_the_mixed_model_beat_the_mean_on_pbc(pbc):
    methods = {"mean-only": MeanOnly, "locf": LOCF, "lmm": LinearMixedModel}
    result, _ = run_forecast_benchmark(pbc, methods, n_folds=2, seed=0, landmarks=[1.0], windows=[3.0], progress=False)
    scores = {f.method: f for f in result.forecast}
    assert scores["locf"].mae_mean < scores["mean-only"].mae_mean - 0.1
    assert scores["lmm"].mae_mean < scores["locf"].mae_mean
    assert 0.85 < scores["lmm"].coverage_mean < 0.95
    assert 0.8 < scores["locf"].coverage_mean < 0.95


def test_landmark_cox_ranks_death_risk_on_pbc(pbc):
    methods = {"landmark-cox": LandmarkCox, "last-bilirubin": lambda: LastValueRisk("bilirubin")}
    result, _ = run_forecast_benchmark(pbc, methods, n_folds=2, seed=0, landmarks=[1.0], windows=[3.0], progress=False)
    cox = next(s for s in result.survival if s.method == "landmark-cox")
    assert cox.folds_scored == 2 and cox.c_index_mean > 0.7
    assert 0.0 < cox.brier_mean < 0.2
    bili = next(s for s in result.survival if s.method == "last-bilirubin")
    assert bili.c_index_mean > 0.7 and bili.brier_mean is None


def test_landmark_cox_risk_grows_with_the_window(pbc):
    fold = forecast_folds(pbc, 5, 0)[0]
    cox = LandmarkCox().fit(fold.train, pbc.config, seed=0)
    from vpatient.data.timeline import truncate_record

    histories = [truncate_record(r, 1.0) for r in fold.test if r.end_of_followup > 1.0]
    risk = cox.risk(histories, 1.0, [1.0, 3.0, 5.0], "death").pivot(index="subject_id", columns="window", values="risk")
    assert ((risk[1.0] <= risk[3.0]) & (risk[3.0] <= risk[5.0])).all()
    assert risk.to_numpy().min() >= 0 and risk.to_numpy().max() <= 1
