"""Ensembles: the model's own uncertainty in forecasts, what-ifs, trials, cohorts and test selection."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from vpatient.data.batching import Scalers
from vpatient.data.synthetic import synthetic_cohort
from vpatient.policy import recommend
from vpatient.simulation import Simulator
from vpatient.simulation.pooling import pool
from vpatient.train import TrainSettings, fit_latent_ode
from vpatient.virtual_patient import CheckpointError, VirtualPatientModel, member_slices


@pytest.fixture(scope="module")
def cohort():
    return synthetic_cohort(n=60, seed=3)


@pytest.fixture(scope="module")
def members(cohort):
    """Two members trained in this process on the same scalers with different seeds (different weights)."""
    scalers = Scalers.fit(cohort.records, cohort.config)
    worlds = []
    for seed in (0, 1):
        world, _, _ = fit_latent_ode(
            cohort.records, cohort.config, TrainSettings(epochs=3, seed=seed), progress=False, scalers=scalers, bootstrap=True
        )
        worlds.append(world)
    return worlds, scalers


@pytest.fixture(scope="module")
def record(cohort):
    return next(r for r in cohort.records if r.end_of_followup > 2)


def test_member_slices_split_samples_evenly():
    assert member_slices(10, 3) == [slice(0, 4), slice(4, 7), slice(7, 10)]
    assert member_slices(5, 1) == [slice(0, 5)]


@pytest.mark.slow
def test_identical_members_give_the_single_members_answer(cohort, members, record, none_plan, drug_plan):
    (world, _), scalers = members
    single = VirtualPatientModel(world, cohort.config, scalers)
    triple = VirtualPatientModel([world, world, world], cohort.config, scalers)
    a = single.forecast(record, until=1.0, horizon=2.0, n_samples=30, seed=4)
    b = triple.forecast(record, until=1.0, horizon=2.0, n_samples=30, seed=4)
    np.testing.assert_allclose(b.paths.predictive, a.paths.predictive, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.paths.survival, a.paths.survival, rtol=1e-6, atol=1e-6)
    assert list(b.paths.member) == [0] * 10 + [1] * 10 + [2] * 10
    summary_a, summary_b = a.summary(), b.summary()
    np.testing.assert_allclose(summary_b[["q05", "median", "q95"]], summary_a[["q05", "median", "q95"]], rtol=1e-5)
    # the trial analysis of identical members has no between-member spread
    effects_a = Simulator(single).whatif(record, [none_plan, drug_plan], horizon=2.0, n_samples=30, seed=4).effects()
    effects_b = Simulator(triple).whatif(record, [none_plan, drug_plan], horizon=2.0, n_samples=30, seed=4).effects()
    np.testing.assert_allclose(
        effects_b[["difference", "lower", "upper"]], effects_a[["difference", "lower", "upper"]], atol=1e-5
    )


@pytest.mark.slow
def test_different_members_widen_the_effect_interval(cohort, members, record, none_plan, drug_plan):
    worlds, scalers = members
    width = {}
    for name, model in {
        "first": VirtualPatientModel(worlds[0], cohort.config, scalers),
        "second": VirtualPatientModel(worlds[1], cohort.config, scalers),
        "both": VirtualPatientModel(worlds, cohort.config, scalers),
    }.items():
        effects = Simulator(model).whatif(record, [none_plan, drug_plan], horizon=2.0, n_samples=60, seed=1).effects()
        rows = effects[effects["quantity"] != "survival:death"]
        width[name] = float((rows["upper"] - rows["lower"]).mean())
    assert width["both"] > 1.2 * min(width["first"], width["second"])


def test_rubins_rules_against_a_hand_computation():
    estimates, variances = [0.10, -0.05, 0.02, 0.08], [0.010, 0.012, 0.011, 0.009]
    pooled = pool(estimates, variances)
    k, q, u = 4, np.mean(estimates), np.mean(variances)
    b = np.var(estimates, ddof=1)
    total = u + (1 + 1 / k) * b
    df = (k - 1) * (1 + u / ((1 + 1 / k) * b)) ** 2
    assert pooled.estimate == pytest.approx(q)
    assert pooled.se == pytest.approx(math.sqrt(total))
    assert pooled.df == pytest.approx(df)
    low, high = pooled.interval()
    assert high - q == pytest.approx(stats.t.ppf(0.975, df) * math.sqrt(total))
    assert q - low == pytest.approx(high - q)
    single = pool([0.3], [0.04])  # one member: the plain normal interval
    assert single.interval() == pytest.approx((0.3 - 1.959964 * 0.2, 0.3 + 1.959964 * 0.2), rel=1e-6)
    # members on disjoint patients: sampling variance of the mean W/K, model variance what B holds beyond W
    split = pool(estimates, variances, disjoint=True)
    model_var = max(b - u, 0.0)
    assert split.within_se == pytest.approx(math.sqrt(u / k))
    assert split.se == pytest.approx(math.sqrt(u / k + (1 + 1 / k) * model_var))
    agreeing = pool([0.1, 0.1001, 0.0999], [0.01, 0.01, 0.01], disjoint=True)
    assert agreeing.between_sd == 0.0 and math.isinf(agreeing.df) and agreeing.se == pytest.approx(math.sqrt(0.01 / 3))
    with pytest.raises(ValueError, match="one variance per estimate"):
        pool([0.1, 0.2], [0.01])


@pytest.mark.slow
def test_ensemble_trains_in_processes_round_trips_and_refuses_a_corrupted_member(cohort, tmp_path, record):
    settings = TrainSettings(epochs=2, seed=5, members=2)
    model = VirtualPatientModel.fit(cohort.records[:40], cohort.config, settings, progress=False, workers=2)
    assert model.n_members == 2 and len(model.member_histories) == 2
    weights = [next(iter(m.state_dict().values())) for m in model.members]
    assert not np.allclose(weights[0].numpy(), weights[1].numpy())  # bootstrap and seed differ
    again = VirtualPatientModel.fit(cohort.records[:40], cohort.config, settings, progress=False, workers=1)
    for a, b in zip(model.members, again.members, strict=True):  # one process or two: the same members
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert np.array_equal(x.numpy(), y.numpy()), name
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "weights-1.pt").is_file()
    loaded = VirtualPatientModel.load(tmp_path / "m")
    a = model.forecast(record, until=1.0, horizon=1.0, n_samples=10, seed=3)
    b = loaded.forecast(record, until=1.0, horizon=1.0, n_samples=10, seed=3)
    np.testing.assert_array_equal(a.paths.predictive, b.paths.predictive)
    data = bytearray((tmp_path / "m" / "weights-1.pt").read_bytes())
    data[-20] ^= 0xFF
    (tmp_path / "m" / "weights-1.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"weights-1\.pt is corrupted"):
        VirtualPatientModel.load(tmp_path / "m")
    (tmp_path / "m" / "weights-1.pt").unlink()
    with pytest.raises(CheckpointError, match=r"weights-1\.pt is missing"):
        VirtualPatientModel.load(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert [m["file"] for m in meta["members"]] == ["weights.pt", "weights-1.pt"]


@pytest.mark.slow
def test_trials_cohorts_and_test_selection_draw_from_every_member(cohort, members, tmp_path, none_plan, drug_plan):
    worlds, scalers = members
    model = VirtualPatientModel(worlds, cohort.config, scalers)
    sim = Simulator(model)
    population = sim.fit_population(cohort.records, seed=0)
    assert population.n_members == 2
    trial = sim.trial({"none": none_plan, "drug": drug_plan}, n=80, seed=0, years=3.0, progress=False)
    hr = trial.hazard_ratios.iloc[0]
    # the spread between members' HRs is reported (0 where a 3-epoch model's drug barely moves the hazard)
    assert hr["members"] == 2 and hr["between_member_sd"] >= 0
    follow_up = trial.patients.groupby("member")["time"].mean()
    assert follow_up[0] != follow_up[1]  # each member realises its own virtual patients
    assert hr["se"] >= hr["sampling_se"]  # members realise disjoint virtual patients: only spread beyond sampling widens
    assert set(trial.patients["member"]) == {0, 1}
    from_records = sim.trial(
        {"none": none_plan, "drug": drug_plan},
        seed=0,
        years=3.0,
        population=cohort.records[:20],
        draws_per_record=4,
        progress=False,
    )
    counts = from_records.patients.groupby(["source", "member"]).size()
    assert (counts == 2 * 2).all()  # every real patient replayed by both members, 2 draws each, in both arms
    result = sim.cohort(n=30, seed=1, years=2.0, out=tmp_path / "virtual", progress=False)
    assert result.n_patients == 30 and result.n_rows > 30
    single = recommend(VirtualPatientModel(worlds[0], cohort.config, scalers), cohort.records[0], n_samples=64, seed=0)
    twice = recommend(
        VirtualPatientModel([worlds[0], worlds[0]], cohort.config, scalers), cohort.records[0], n_samples=64, seed=0
    )
    assert [g.test for g in twice.gains] == [g.test for g in single.gains]
    # Each member draws its own quasi-random sequence, so a member listed twice gives the single
    # member's gains within Monte Carlo error, no longer to the last digit.
    for a, b in zip(twice.gains, single.gains, strict=True):
        assert abs(a.eig - b.eig) <= 4 * math.hypot(a.mc_error, b.mc_error) + 1e-6, (a, b)
    both = recommend(model, cohort.records[0], n_samples=64, seed=0)
    assert all(math.isfinite(g.eig) for g in both.gains)
