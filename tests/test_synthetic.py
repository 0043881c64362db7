"""The synthetic generator: determinism, validity, and that its ground truth is the truth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.linalg import expm

from vpatient.data.synthetic import (
    CONTINUOUS_LABS,
    LOG_LABS,
    SyntheticCohort,
    SyntheticParams,
    initial_state_prior,
    synthetic_cohort,
)
from vpatient.plans import exposures_under_plan
from vpatient.schemas import (
    OBSERVED_KINDS,
    PatientRecord,
    TreatmentExposure,
    TreatmentPlan,
    VariableKind,
    parse_records,
)

NO_DRUG = TreatmentPlan(name="no drug")


def drug(dose: float, start: float = 0.0, stop: float | None = None) -> TreatmentExposure:
    return TreatmentExposure(treatment="drug", start=start, stop=stop, dose=dose)


@pytest.fixture(scope="module")
def cohort() -> SyntheticCohort:
    return synthetic_cohort(n=400, seed=7)


def padded_visit_times(records: list[PatientRecord]) -> np.ndarray:
    """Visit times per subject (n, V_max), NaN-padded."""
    visits = [r.visit_times() for r in records]
    out = np.full((len(visits), max(map(len, visits))), np.nan)
    for i, v in enumerate(visits):
        out[i, : len(v)] = v
    return out


# --------------------------------------------------------------------------- determinism and validity


def test_same_seed_same_records_and_different_seed_different() -> None:
    a, b, c = synthetic_cohort(40, seed=11), synthetic_cohort(40, seed=11), synthetic_cohort(40, seed=12)
    assert a.records == b.records
    np.testing.assert_array_equal(a.truth.z0, b.truth.z0)
    assert a.records != c.records
    assert not np.allclose(a.truth.z0, c.truth.z0)


def test_records_validate_against_config_in_canonical_order(cohort: SyntheticCohort) -> None:
    cfg = cohort.config
    assert cfg.name == "synthetic" and cohort.citation is None and cohort.name == "synthetic"
    again = parse_records([r.model_dump() for r in cohort.records], cfg)
    assert again == cohort.records
    assert all(r.in_canonical_order(cfg) == r for r in cohort.records)
    # every observed or imaging variable belongs to exactly one test, which lists it
    measured = cfg.of_kind(*OBSERVED_KINDS, VariableKind.IMAGING_EMBEDDING)
    for var in measured:
        assert [t.name for t in cfg.tests if var.name in t.variables] == [var.test]
    assert {k.value for k in {v.kind for v in cfg.variables}} == {k.value for k in VariableKind}


def test_all_modalities_present_and_counts_sane(cohort: SyntheticCohort) -> None:
    records, cfg = cohort.records, cohort.config
    assert len(records) == 400 and len({r.subject_id for r in records}) == 400
    seen = {o.variable for r in records for o in r.observations}
    assert seen == set(cfg.names(*OBSERVED_KINDS))
    studies = [s for r in records for s in r.imaging]
    assert studies and all(s.modality == "ct" and len(s.embedding) == 32 for s in studies)
    assert {h.code for r in records for h in r.history} == {"diabetes", "hypertension"}
    assert all(h.time < 0 for r in records for h in r.history)
    assert {e.kind for r in records for e in r.events} == {"death", "progression"}
    assert all(len({e.kind for e in r.events}) == len(r.events) for r in records)  # each event at most once
    for r in records:
        died = [e.time for e in r.events if e.kind == "death"]
        assert r.end_of_followup <= 6.0 and (not died or died[0] == r.end_of_followup)
        assert r.visit_times()[0] == 0.0
        assert {o.variable for o in r.observations if o.time == 0.0} == set(cfg.names(*OBSERVED_KINDS))  # routine tests
    visits = np.array([len(r.visit_times()) for r in records])
    assert 5 < visits.mean() < 15
    deaths = np.mean([any(e.kind == "death" for e in r.events) for r in records])
    treated = np.mean([bool(r.treatments) for r in records])
    assert 0.05 < deaths < 0.6 and 0.4 < treated < 0.6
    assert {e.dose for r in records for e in r.treatments} == {1.0, 2.0}


def test_years_is_administrative_censoring() -> None:
    short = synthetic_cohort(60, seed=3, years=2.0, imaging_dim=8)
    assert max(r.end_of_followup for r in short.records) <= 2.0
    assert short.config.variable("ct").dimension == 8
    assert all(len(s.embedding) == 8 for r in short.records for s in r.imaging)


# --------------------------------------------------------------------------- the truth reproduces the records


def test_truth_starts_at_z0_and_z0_comes_from_its_prior(cohort: SyntheticCohort) -> None:
    truth = cohort.truth
    ids = list(truth.subject_ids)
    z = truth.latent_many(ids, [truth.factual_exposures(s) for s in ids], [0.0])
    np.testing.assert_array_equal(z[:, 0], truth.z0)
    # standardised by each subject's own prior, z0 is standard normal
    resid = []
    for sid, z0 in zip(ids, truth.z0, strict=True):
        mean, cov = truth.prior(sid)
        resid.append(np.linalg.solve(np.linalg.cholesky(cov), z0 - mean))
    resid = np.array(resid)
    assert np.all(np.abs(resid.mean(0)) < 0.15) and np.all(np.abs(resid.std(0) - 1) < 0.1)
    mean, _ = initial_state_prior({"age": 75.0, "sex": 0.0, "subtype": 0.0}, ["diabetes"])
    mean0, _ = initial_state_prior({"age": 45.0, "sex": 0.0, "subtype": 0.0}, [])
    assert mean[0] > mean0[0]  # older and diabetic: more severe at baseline


def test_observations_are_noiseless_truth_plus_stated_noise(cohort: SyntheticCohort) -> None:
    truth, records = cohort.truth, cohort.records
    ids = [r.subject_id for r in records]
    times = padded_visit_times(records)
    means = truth.observables_many(ids, [truth.factual_exposures(s) for s in ids], times).dropna(subset=["time"])
    lookup = means.set_index(["subject_id", "time"])
    obs = [(r.subject_id, o.time, o.variable, o.value) for r in records for o in r.observations]
    sd = truth.noise_sd
    for name in CONTINUOUS_LABS:
        rows = [(s, t, v) for s, t, var, v in obs if var == name]
        mu = lookup.loc[[(s, t) for s, t, _ in rows], name].to_numpy()
        y = np.array([v for *_, v in rows])
        resid = np.log(y) - np.log(mu) if name in LOG_LABS else y - mu
        assert abs(resid.mean()) < 4 * sd[name] / np.sqrt(len(y)), name
        assert abs(resid.std() / sd[name] - 1) < 0.05, name
    for name in ("ascites", "stage"):  # binary: probability; ordinal: expected level
        rows = [(s, t, v) for s, t, var, v in obs if var == name]
        mu = lookup.loc[[(s, t) for s, t, _ in rows], name].to_numpy()
        y = np.array([v for *_, v in rows])
        assert abs((y - mu).mean()) < 4 * (y - mu).std() / np.sqrt(len(y)), name
    studies = [(r.subject_id, s.time, s.embedding) for r in records for s in r.imaging]
    cols = [f"ct_{j}" for j in range(32)]
    mu = lookup.loc[[(s, t) for s, t, _ in studies], cols].to_numpy()
    resid = np.array([e for *_, e in studies]) - mu
    assert abs(resid.std() / sd["ct"] - 1) < 0.05


def test_one_subject_and_many_subjects_agree(cohort: SyntheticCohort) -> None:
    truth = cohort.truth
    ids = list(truth.subject_ids[:8])
    exps = [truth.factual_exposures(s) for s in ids]
    t = np.array([0.0, 0.3, 2.71, 5.0])
    many = truth.latent_many(ids, exps, t)
    for i, sid in enumerate(ids):
        np.testing.assert_allclose(truth.latent(sid, exps[i], t), many[i], rtol=0, atol=1e-12)
    frame = truth.observables(ids[0], exps[0], t)
    assert list(frame.columns[:8]) == ["time", *CONTINUOUS_LABS, "ascites", "stage"] and frame.shape == (4, 8 + 32)


def test_no_drug_plan_equals_untreated_path_exactly(cohort: SyntheticCohort) -> None:
    truth = cohort.truth
    t = np.linspace(0.0, 6.0, 13)
    untreated = [r for r in cohort.records if not r.treatments]
    ids = [r.subject_id for r in untreated]
    what_ifs = [exposures_under_plan(r.treatments, NO_DRUG, 0.0) for r in untreated]
    assert what_ifs == [[] for _ in untreated]
    np.testing.assert_array_equal(
        truth.states_many(ids, what_ifs, t), truth.states_many(ids, [r.treatments for r in untreated], t)
    )
    # the same subjects, given the drug from t=0, would have done better
    on = [exposures_under_plan(r.treatments, TreatmentPlan(name="drug", exposures=[drug(1.0)]), 0.0) for r in untreated]
    assert np.all(truth.latent_many(ids, on, t[1:])[..., 0] < truth.latent_many(ids, what_ifs, t[1:])[..., 0])


def test_stopping_the_drug_changes_only_the_future(cohort: SyntheticCohort) -> None:
    truth = cohort.truth
    r = next(r for r in cohort.records if r.treatments and cohort.truth.static(r.subject_id)["subtype"] == 1.0)
    s = 1.2345  # between grid nodes: the solver splits the step there
    stopped = exposures_under_plan(r.treatments, NO_DRUG, s)
    assert stopped == [drug(r.treatments[0].dose, 0.0, s)]
    t = np.array([0.0, 0.5, 1.0, s, 1.5, 3.0, 6.0])
    factual, what_if = truth.latent(r.subject_id, r.treatments, t), truth.latent(r.subject_id, stopped, t)
    np.testing.assert_array_equal(what_if[:4], factual[:4])
    assert np.all(what_if[4:, 0] > factual[4:, 0])


def test_more_drug_slows_progression_more_in_subtype_1(cohort: SyntheticCohort) -> None:
    truth = cohort.truth
    ids = list(truth.subject_ids)
    z1 = np.stack([truth.latent_many(ids, [[drug(d)] if d else []] * len(ids), [3.0])[:, 0, 0] for d in (0, 1, 2)])
    assert np.all(z1[0] > z1[1]) and np.all(z1[1] > z1[2])
    subtype = truth.covariates["subtype"].to_numpy() == 1
    effect = z1[0] - z1[2]
    assert effect[subtype].mean() > 2 * effect[~subtype].mean()
    for event in ("death", "progression"):
        surv = np.stack([truth.survival_many(ids, [[drug(d)] if d else []] * len(ids), [5.0], event)[:, 0] for d in (0, 1, 2)])
        assert np.all(surv[2] > surv[1]) and np.all(surv[1] > surv[0])
        assert np.all((surv > 0) & (surv < 1))


def test_event_counts_match_the_true_cumulative_hazard(cohort: SyntheticCohort) -> None:
    """E[#events] = E[sum of H over the time at risk]: the event draws invert the truth's hazard."""
    truth, records = cohort.truth, cohort.records
    ids = [r.subject_id for r in records]
    exps = [r.treatments for r in records]
    end = np.array([r.end_of_followup for r in records])
    deaths = sum(e.kind == "death" for r in records for e in r.events)
    expected = truth.cumulative_hazard_many(ids, exps, end[:, None], "death")[:, 0].sum()
    assert abs(deaths - expected) < 4 * np.sqrt(expected)
    at_risk = np.array([min([e.time for e in r.events if e.kind == "progression"], default=r.end_of_followup) for r in records])
    progressions = sum(e.kind == "progression" for r in records for e in r.events)
    expected = truth.cumulative_hazard_many(ids, exps, at_risk[:, None], "progression")[:, 0].sum()
    assert abs(progressions - expected) < 4 * np.sqrt(expected)


def test_truth_refuses_bad_input(cohort: SyntheticCohort) -> None:
    truth = cohort.truth
    sid = truth.subject_ids[0]
    with pytest.raises(KeyError, match="no subject"):
        truth.latent("nobody", [], [1.0])
    with pytest.raises(ValueError, match="unknown treatment"):
        truth.latent(sid, [TreatmentExposure(treatment="aspirin", start=0.0)], [1.0])
    with pytest.raises(ValueError, match=">= 0"):
        truth.latent(sid, [], [-1.0])
    with pytest.raises(ValueError, match="unknown event"):
        truth.survival(sid, [], [1.0], event="transplant")


# --------------------------------------------------------------------------- the solver


def _truth(step: float, nonlinearity: float = 1.0):
    return synthetic_cohort(20, seed=5, params=SyntheticParams(solver_step=step, nonlinearity=nonlinearity)).truth


def test_rk4_converges_at_fourth_order_across_a_dose_change() -> None:
    h = 1.0 / 24.0
    truths = [_truth(h / 2**k) for k in range(4)]
    ids = list(truths[0].subject_ids)
    exps = [[drug(2.0, 0.0, 1.2345), drug(1.0, 2.5)]] * len(ids)  # changes inside grid steps
    t = np.array([0.7, 1.2345, 2.0, 4.321])
    z = [tr.states_many(ids, exps, t) for tr in truths]
    errors = [np.abs(zk - z[-1]).max() for zk in z[:-1]]
    assert errors[1] / errors[2] > 12  # ~16 for a fourth-order method
    default = _truth(1.0 / 120.0).states_many(ids, exps, t)
    finer = _truth(1.0 / 240.0).states_many(ids, exps, t)
    assert np.abs(default - finer).max() < 1e-8


def test_linear_special_case_matches_the_matrix_exponential() -> None:
    truth = _truth(1.0 / 120.0, nonlinearity=0.0)
    sid = truth.subject_ids[0]
    t = np.array([0.0, 0.5, 1.7, 3.0])

    def affine(dose: float) -> np.ndarray:
        """The 3x3 generator [[A, b], [0, 0]] read off the (affine) vector field."""
        b = truth.vector_field(sid, np.zeros(2), dose)[0]
        A = truth.vector_field(sid, np.eye(2), dose).T - b[:, None]
        z = np.random.default_rng(0).normal(size=(5, 2))
        np.testing.assert_allclose(truth.vector_field(sid, z, dose), z @ A.T + b, atol=1e-12)
        M = np.zeros((3, 3))
        M[:2, :2], M[:2, 2] = A, b
        return M

    x0 = np.append(truth.z0[truth.row(sid)], 1.0)
    on, off = affine(2.0), affine(0.0)
    exact = np.array([(expm(on * tk) @ x0)[:2] for tk in t])
    np.testing.assert_allclose(truth.latent(sid, [drug(2.0)], t), exact, rtol=0, atol=1e-9)
    # stop at s (between grid nodes): the exact solution composes two exponentials
    s = 1.1111
    exact = np.array([(expm(off * max(tk - s, 0)) @ expm(on * min(tk, s)) @ x0)[:2] for tk in t])
    np.testing.assert_allclose(truth.latent(sid, [drug(2.0, 0.0, s)], t), exact, rtol=0, atol=1e-9)


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="solver_step"):
        SyntheticParams(solver_step=0.0)
    assert dataclasses.replace(SyntheticParams(), nonlinearity=0.0).nonlinearity == 0.0


# --------------------------------------------------------------------------- who gets treated, who gets tested


def _severity_gap(confounding: float) -> float:
    c = synthetic_cohort(1000, seed=2, confounding=confounding)
    treated = np.array([bool(r.treatments) for r in c.records])
    z1 = c.truth.z0[:, 0]
    return (z1[treated].mean() - z1[~treated].mean()) / z1.std()


def test_confounding_makes_the_treated_sicker_at_baseline() -> None:
    assert _severity_gap(4.0) > 0.8
    assert abs(_severity_gap(0.0)) < 0.2


def test_tests_are_ordered_more_often_when_sicker(cohort: SyntheticCohort) -> None:
    truth, cfg, records = cohort.truth, cohort.config, cohort.records
    test_of = {v.name: v.test for v in cfg.variables if v.test}
    counts, times = [], padded_visit_times(records)
    for r, row in zip(records, times, strict=True):
        by_time: dict[float, set[str]] = {}
        for o in r.observations:
            by_time.setdefault(o.time, set()).add(test_of[o.variable])
        for s in r.imaging:
            by_time.setdefault(s.time, set()).add(test_of[s.modality])
        counts.append([len(by_time[t]) if t in by_time else np.nan for t in row])
    counts = np.array(counts)
    ids = [r.subject_id for r in records]
    z1 = truth.latent_many(ids, [r.treatments for r in records], times)[..., 0]
    later = ~np.isnan(times) & (times > 0)  # the baseline visit gets every routine test
    rho = np.corrcoef(z1[later], counts[later])[0, 1]
    assert rho > 0.1


def test_synthetic_stream_draws_chunks_with_unique_ids_reproducibly():
    from vpatient.data.synthetic import synthetic_stream

    records = list(synthetic_stream(25, seed=3, chunk_size=10))
    assert [r.subject_id for r in records] == [f"syn{i:07d}" for i in range(25)]
    assert records == list(synthetic_stream(25, seed=3, chunk_size=10))
    # chunks are independent draws: the second chunk is not the first again under new ids
    assert [r.static for r in records[:10]] != [r.static for r in records[10:20]]
    assert records != list(synthetic_stream(25, seed=4, chunk_size=10))
