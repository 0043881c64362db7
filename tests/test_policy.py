"""Next-test selection: the EIG estimator against closed forms, and its behaviour on a trained model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vpatient.cli import app
from vpatient.data.synthetic import synthetic_cohort
from vpatient.errors import OptionError, VPatientError
from vpatient.policy import Distribution, Target, TargetKind, UpdateRule, eig_from_pool, recommend
from vpatient.quasirandom import sobol_normal, sobol_uniform
from vpatient.train import TrainSettings
from vpatient.virtual_patient import VirtualPatientModel


@pytest.mark.parametrize("noise_sd", [2.0, 0.8])
def test_linear_gaussian_gain_matches_the_closed_form(noise_sd):
    """z ~ N(0, V), y = H z + e, e ~ N(0, R): the gain about z is 0.5 log det(I + V H' R^-1 H)."""
    generator = torch.Generator().manual_seed(0)
    s = 3000
    v = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    h = torch.tensor([[1.0, 0.0], [0.5, 1.0], [0.0, 2.0]], dtype=torch.float64)
    r_inv = torch.eye(3, dtype=torch.float64) / noise_sd**2
    z = torch.randn((s, 2), generator=generator, dtype=torch.float64) @ torch.linalg.cholesky(v).T
    y = z @ h.T + noise_sd * torch.randn((s, 3), generator=generator, dtype=torch.float64)
    resid = y.unsqueeze(1) - (z @ h.T).unsqueeze(0)  # (outer, pool, 3)
    log_factor = -0.5 * torch.einsum("rsk,kl,rsl->rs", resid, r_inv, resid)
    eig, se = eig_from_pool(z, torch.zeros(s), log_factor, torch.arange(s), "gaussian")
    exact = 0.5 * math.log(float(torch.linalg.det(torch.eye(2, dtype=torch.float64) + v @ h.T @ r_inv @ h)))
    assert abs(eig - exact) < 3 * se + 0.02 * exact, (eig, se, exact)


def test_bernoulli_gain_is_the_mutual_information_of_a_binary_pair():
    """z in {0, 1} with p = 1/2, y = z flipped with probability 0.1: I(z; y) = log 2 - H(0.1)."""
    generator = torch.Generator().manual_seed(1)
    s = 4000
    z = (torch.rand(s, generator=generator) < 0.5).double()
    flip = (torch.rand(s, generator=generator) < 0.1).double()
    y = (z + flip) % 2
    log_factor = torch.where(y.unsqueeze(1) == z.unsqueeze(0), math.log(0.9), math.log(0.1))
    eig, se = eig_from_pool(z, torch.zeros(s), log_factor, torch.arange(s), "bernoulli")
    exact = math.log(2) + 0.1 * math.log(0.1) + 0.9 * math.log(0.9)
    assert abs(eig - exact) < 3 * se + 0.01, (eig, se, exact)


def _linear_gaussian_estimate(s: int, seed: int, variance_reduced: bool) -> float:
    """EIG about x = a'z + noise from y = b'z + e (z ~ N(0, I)), from a pool of s draws."""
    generator = torch.Generator().manual_seed(seed)
    if variance_reduced:
        z = sobol_normal(s, 2, generator, torch.float64)
    else:
        z = torch.randn((s, 2), generator=generator, dtype=torch.float64)
    a, b, tau2, sigma = torch.tensor([1.0, 0.5], dtype=torch.float64), torch.tensor([1.0, -0.3], dtype=torch.float64), 0.3, 1.0
    outer = torch.randperm(s, generator=generator)  # equal weights: systematic resampling is a permutation
    e = (
        sobol_normal(s, 1, generator, torch.float64)
        if variance_reduced
        else torch.randn((s, 1), generator=generator, dtype=torch.float64)
    )
    y = z[outer] @ b + sigma * e[:, 0]
    log_factor = -0.5 * ((y.unsqueeze(1) - (z @ b).unsqueeze(0)) / sigma) ** 2
    eig, _ = eig_from_pool(
        (z @ a).unsqueeze(1), torch.zeros(s), log_factor, outer, "gaussian", tau2, control_variate=variance_reduced
    )
    return eig


def _binary_estimate(s: int, seed: int, variance_reduced: bool) -> float:
    """EIG about a binary outcome (p 0.6 or 0.1 by a binary state z ~ Bernoulli(0.3)) from a binary test (0.8 or 0.25)."""
    generator = torch.Generator().manual_seed(seed)
    z = (torch.rand(s, generator=generator, dtype=torch.float64) < 0.3).double()
    p = torch.where(z > 0, 0.6, 0.1).double()
    q = torch.where(z > 0, 0.8, 0.25).double()
    outer = torch.randperm(s, generator=generator)
    u = (
        sobol_uniform(s, 1, generator, torch.float64)[:, 0]
        if variance_reduced
        else torch.rand(s, generator=generator, dtype=torch.float64)
    )
    y = (u < q[outer]).double().unsqueeze(1)
    log_factor = y * q.log().unsqueeze(0) + (1 - y) * torch.log1p(-q).unsqueeze(0)
    eig, _ = eig_from_pool(p, torch.zeros(s), log_factor, outer, "bernoulli", control_variate=variance_reduced)
    return eig


def _binary_exact() -> float:
    def h(x: float) -> float:
        return -(x * math.log(x) + (1 - x) * math.log(1 - x))

    prior, p, q = 0.3, {1: 0.6, 0: 0.1}, {1: 0.8, 0: 0.25}
    total = h(prior * p[1] + (1 - prior) * p[0])
    for y in (0, 1):
        joint = {z: (prior if z else 1 - prior) * (q[z] if y else 1 - q[z]) for z in (0, 1)}
        mass = joint[0] + joint[1]
        total -= mass * h((joint[1] * p[1] + joint[0] * p[0]) / mass)
    return total


@pytest.mark.parametrize("case", ["linear_gaussian", "binary"])
def test_the_variance_reduced_estimator_is_closer_to_the_closed_form_at_the_same_sample_size(case):
    """Quasi-random pool and results plus the control variate against pseudo-random draws without it: 256 draws, 40 seeds."""
    if case == "linear_gaussian":
        a, b, tau2, sigma = np.array([1.0, 0.5]), np.array([1.0, -0.3]), 0.3, 1.0
        posterior = np.eye(2) - np.outer(b, b) / (b @ b + sigma**2)
        exact = 0.5 * math.log((a @ a + tau2) / (a @ posterior @ a + tau2))
        estimate = _linear_gaussian_estimate
    else:
        exact, estimate = _binary_exact(), _binary_estimate
    error = {
        reduced: math.sqrt(np.mean([(estimate(256, seed, reduced) - exact) ** 2 for seed in range(40)]))
        for reduced in (False, True)
    }
    # measured: linear-Gaussian 0.017 -> 0.0025, binary 0.0065 -> 0.0004
    assert error[True] < 0.4 * error[False], error
    assert error[True] < 0.1 * exact, error


def test_the_control_variate_keeps_an_uninformative_test_at_zero():
    generator = torch.Generator().manual_seed(2)
    p = torch.rand(128, generator=generator, dtype=torch.float64)
    eig, se = eig_from_pool(p, torch.zeros(128), torch.zeros(128, 128), torch.arange(128), "bernoulli")
    assert abs(eig) < 1e-4 and se < 1e-4  # not exactly 0: each result leaves its own draw out


@pytest.fixture(scope="module")
def trained():
    cohort = synthetic_cohort(n=60, seed=5)
    model = VirtualPatientModel.fit(cohort.records, cohort.config, TrainSettings(epochs=4, seed=0), progress=False)
    return model, cohort


@pytest.mark.slow
def test_targets_are_parsed_and_bad_ones_named(trained):
    model, _ = trained
    assert Target.parse("risk:death:5", model.config) == Target("risk", event="death", horizon=5.0)
    assert str(Target.parse("forecast:bilirubin:2", model.config)) == "forecast:bilirubin:2"
    with pytest.raises(VPatientError, match="unknown event 'stroke'"):
        Target.parse("risk:stroke:5", model.config)
    with pytest.raises(VPatientError, match="not a continuous variable"):
        Target.parse("forecast:ascites:1", model.config)
    with pytest.raises(VPatientError, match="horizon"):
        Target.parse("risk:death:soon", model.config)


@pytest.mark.slow
def test_target_objects_are_built_checked_and_read_back(trained):
    model, _ = trained
    risk = Target.risk("death", 5)
    assert risk.kind is TargetKind.RISK and risk == Target("risk", event="death", horizon=5.0)
    assert Target.parse(str(risk), model.config) == risk  # the text form reads back as the same target
    assert str(Target.forecast("bilirubin", 2.5)) == "forecast:bilirubin:2.5"
    assert Target.latent() == Target.parse("latent", model.config) and str(Target.latent()) == "latent"
    assert Target.forecast("bilirubin", 2).check(model.config).variable == "bilirubin"
    with pytest.raises(VPatientError, match="unknown event 'stroke'"):
        Target.risk("stroke", 5).check(model.config)
    with pytest.raises(VPatientError, match="not a continuous variable"):
        Target.forecast("ascites", 1).check(model.config)
    with pytest.raises(OptionError, match="unknown target kind 'rsik'; choose one of 'latent', 'risk', 'forecast'"):
        Target("rsik", event="death", horizon=5.0)
    with pytest.raises(OptionError, match="horizon must be a time > 0"):
        Target.risk("death", 0)
    with pytest.raises(OptionError, match="names an event"):
        Target("risk", variable="bilirubin", horizon=1.0)
    with pytest.raises(ValueError, match="latent target names no event"):  # OptionError is also a ValueError
        Target("latent", event="death")


@pytest.mark.slow
def test_a_target_object_ranks_as_its_text_does_and_misspelt_options_are_refused(trained):
    model, cohort = trained
    record = cohort.records[1]
    by_text = recommend(model, record, target="risk:death:3", n_samples=32, seed=0)
    by_object = recommend(model, record, target=Target.risk("death", 3), n_samples=32, seed=0, update=UpdateRule.LIKELIHOOD)
    assert by_object.target == by_text.target and by_object.to_dict() == by_text.to_dict()
    with pytest.raises(VPatientError, match="unknown event 'stroke'"):
        recommend(model, record, target=Target.risk("stroke", 3), n_samples=32)
    with pytest.raises(OptionError, match="unknown update rule 'likelyhood'; choose one of 'likelihood', 'expert'"):
        recommend(model, record, target="latent", n_samples=32, update="likelyhood")
    one = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(OptionError, match="unknown target distribution 'bernouli'"):
        eig_from_pool(one, one, torch.zeros(4, 4), torch.arange(4), "bernouli")
    assert eig_from_pool(one + 0.5, one, torch.zeros(4, 4), torch.arange(4), Distribution.BERNOULLI)[0] == pytest.approx(0.0)


@pytest.mark.slow
def test_tests_done_at_the_decision_time_gain_nothing(trained):
    model, cohort = trained
    record = next(r for r in cohort.records if len(r.visit_times()) >= 3)
    at = record.visit_times()[1]
    done_now = {model.config.variable(o.variable).test for o in record.observations if o.time == at}
    result = recommend(model, record, target="latent", at=at, n_samples=64, seed=0)
    for gain in result.gains:
        assert gain.done == (gain.test in done_now)
        if gain.done:
            assert gain.eig == 0.0
    open_gains = [g for g in result.gains if not g.done]
    assert open_gains and all(g.eig > -4 * g.mc_error - 1e-3 for g in open_gains)
    ranked = [g.eig_per_cost for g in open_gains]
    assert ranked == sorted(ranked, reverse=True)


@pytest.mark.slow
def test_a_duplicated_test_adds_less_the_second_time(trained):
    model, cohort = trained
    record = cohort.records[2]
    at = record.end_of_followup + 0.25  # a new visit: nothing measured yet
    result = recommend(model, record, target="latent", at=at, n_samples=128, seed=0, tests=["panel_a", "panel_a"])
    first, second = result.sequence[0], result.sequence[1]
    alone = {g.test: g.eig for g in result.gains}
    assert alone["panel_a#2"] == pytest.approx(alone["panel_a"], abs=4 * max(g.mc_error for g in result.gains))
    assert second["marginal_eig"] < first["marginal_eig"]  # not double: the second order repeats what the first told
    assert second["cumulative_eig"] < 2 * first["marginal_eig"]


@pytest.mark.slow
def test_ranking_is_stable_across_seeds_within_monte_carlo_error(trained):
    model, cohort = trained
    record = cohort.records[3]
    at = record.end_of_followup + 0.25
    a = {g.test: g for g in recommend(model, record, target="latent", at=at, n_samples=256, seed=0).gains}
    b = {g.test: g for g in recommend(model, record, target="latent", at=at, n_samples=256, seed=1).gains}
    for name in a:
        assert abs(a[name].eig - b[name].eig) < 4 * math.hypot(a[name].mc_error, b[name].mc_error) + 1e-3
    same = recommend(model, record, target="latent", at=at, n_samples=256, seed=0)
    assert [g.eig for g in same.gains] == [a[g.test].eig for g in same.gains]  # same seed, same numbers


@pytest.mark.slow
def test_recommend_command_prints_the_table_and_json(trained, tmp_path):
    model, _ = trained
    model.data_source = "synthetic"
    model.save(tmp_path / "m")
    runner = CliRunner()
    out = runner.invoke(app, ["recommend", "--model", str(tmp_path / "m"), "--patient", "syn00002", "--target", "risk:death:3",
                              "--n-samples", "64", "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert {t["test"] for t in data["tests"]} == {t.name for t in model.config.tests}
    assert np.isfinite([t["eig"] for t in data["tests"]]).all()
    out = runner.invoke(app, ["recommend", "--model", str(tmp_path / "m"), "--patient", "syn00002", "--target", "risk:nothing:3"])
    assert out.exit_code != 0
