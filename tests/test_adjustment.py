"""Prognostic-score (PROCOVA) adjustment of a real trial: the analyses on simulated trials with a known effect,
the trial table, refusals of bad input, and a small cross-fitted run end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import jsonschema
import numpy as np
import pytest
from scipy import stats

from vpatient.benchmarks.trial_adjustment import TrialAdjustmentResult, run_trial_adjustment
from vpatient.data.cohort import Cohort
from vpatient.data.meds import write_meds
from vpatient.datasets import load_pbc2
from vpatient.errors import VPatientError
from vpatient.evaluate.fold_models import TrainingRun, fold_models
from vpatient.evaluate.protocol import forecast_folds
from vpatient.schema_export import rendered_files
from vpatient.schemas import PatientRecord
from vpatient.simulation.adjustment import (
    ancova_adjustment,
    baseline_arms,
    baseline_record,
    cox_adjustment,
    cross_fitted_scores,
    prognostic_scores,
    trial_table,
)
from vpatient.train import TrainSettings

TINY = TrainSettings(epochs=2)


def randomised_trial(n: int, seed: int, log_hr: float, difference: float) -> dict[str, np.ndarray]:
    """A two-arm randomised trial with one prognostic variable x (the ideal score) and known effects.

    Event times are exponential with hazard 0.1 exp(1.5 x + log_hr * treated) (uniform
    censoring), so ``log_hr`` is the conditional log hazard ratio given x. The lab at
    follow-up is 1 + 0.8 x + difference * treated + N(0, 0.5^2); its baseline is
    x + N(0, 0.5^2), a noisy view of the same prognosis.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    treated = rng.random(n) < 0.5
    event_time = rng.exponential(1 / (0.1 * np.exp(1.5 * x + log_hr * treated)))
    censor = rng.uniform(0, 8, n)
    return {
        "x": x,
        "treated": treated,
        "time": np.minimum(event_time, censor),
        "event": event_time <= censor,
        "baseline": x + rng.normal(scale=0.5, size=n),
        "lab": 1 + 0.8 * x + difference * treated + rng.normal(scale=0.5, size=n),
    }


# --------------------------------------------------------------------------- the analyses


def test_ancova_recovers_the_effect_and_narrows_its_ci():
    trial = randomised_trial(2000, seed=0, log_hr=0.0, difference=0.3)
    lab = trial["lab"].copy()
    lab[:100] = np.nan  # no follow-up value: left out and counted
    effect = ancova_adjustment(lab, trial["treated"], trial["x"], baseline=trial["baseline"], label="lab")
    assert effect.n_dropped == 100 and effect.n_patients == 1900
    for est in (effect.unadjusted, effect.adjusted):
        assert est.lower < 0.3 < est.upper
    assert effect.adjusted.upper - effect.adjusted.lower < effect.unadjusted.upper - effect.unadjusted.lower
    # Residual variance given the baseline: 0.8^2 var(x | baseline) + 0.25 = 0.64 * 0.2 + 0.25; given x: 0.25.
    expected = 1 - math.sqrt(0.25 / (0.64 * 0.2 + 0.25))
    assert effect.se_reduction == pytest.approx(expected, abs=0.04)
    assert effect.sample_size_saving == pytest.approx(1 - (1 - effect.se_reduction) ** 2)
    assert effect.score.estimate > 0 and effect.score.p < 1e-6
    assert effect.score_correlation > 0.7
    assert not effect.null_in_adjusted_ci


def test_ancova_without_baseline_is_the_pooled_t_test():
    trial = randomised_trial(300, seed=1, log_hr=0.0, difference=0.3)
    effect = ancova_adjustment(trial["lab"], trial["treated"], trial["x"])
    treated, control = trial["lab"][trial["treated"]], trial["lab"][~trial["treated"]]
    test = stats.ttest_ind(treated, control)
    assert effect.unadjusted_covariates == []
    assert effect.unadjusted.estimate == pytest.approx(treated.mean() - control.mean())
    assert effect.unadjusted.estimate / effect.unadjusted.se == pytest.approx(test.statistic)
    assert effect.unadjusted.p == pytest.approx(test.pvalue)


def test_cox_recovers_the_conditional_log_hazard_ratio():
    trial = randomised_trial(2000, seed=1, log_hr=-0.7, difference=0.0)
    effect = cox_adjustment(trial["time"], trial["event"], trial["treated"], trial["x"], outcome="death")
    assert effect.n_events == int(trial["event"].sum()) and effect.n_dropped == 0
    assert effect.adjusted.lower < -0.7 < effect.adjusted.upper
    assert effect.adjusted.hazard_ratio == pytest.approx(math.exp(effect.adjusted.estimate))
    # Non-collapsibility: without the score the (marginal) log HR is pulled towards 0 and its SE barely differs,
    # so the adjusted analysis gains as a larger effect relative to its SE, not as a narrower CI.
    assert effect.adjusted.estimate < effect.unadjusted.estimate < 0
    assert abs(effect.se_reduction) < 0.05
    assert abs(effect.adjusted.estimate / effect.adjusted.se) > abs(effect.unadjusted.estimate / effect.unadjusted.se)
    assert 0.3 < effect.score_correlation < 1  # Somers' D: a higher score, an earlier event


def test_cox_under_the_null_stays_null():
    trial = randomised_trial(1000, seed=2, log_hr=0.0, difference=0.0)
    effect = cox_adjustment(trial["time"], trial["event"], trial["treated"], trial["x"], outcome="death")
    assert effect.null_in_adjusted_ci
    assert effect.unadjusted.lower < 0 < effect.unadjusted.upper


def test_analyses_refuse_one_arm_and_no_events():
    trial = randomised_trial(100, seed=3, log_hr=0.0, difference=0.0)
    with pytest.raises(VPatientError, match="only one arm"):
        ancova_adjustment(trial["lab"], np.ones(100, bool), trial["x"])
    with pytest.raises(VPatientError, match="no death events"):
        cox_adjustment(trial["time"], np.zeros(100, bool), trial["treated"], trial["x"], outcome="death")


# --------------------------------------------------------------------------- the trial as observed


def _record(subject_id: str, treated: bool, bilirubin: dict[float, float], death: float | None) -> PatientRecord:
    return PatientRecord.model_validate(
        {
            "subject_id": subject_id,
            "observations": [{"time": t, "variable": "bilirubin", "value": v} for t, v in bilirubin.items()],
            "treatments": [{"treatment": "drug", "start": 0.0, "dose": 1.0}] if treated else [],
            "events": [{"time": death, "kind": "death"}] if death is not None else [],
            "end_of_followup": death if death is not None else 4.0,
        }
    )


def test_trial_table_picks_baseline_and_the_visit_nearest_the_time(config):
    records = [
        _record("a", True, {0.0: 1.2, 1.6: 2.0, 2.3: 3.0}, death=None),  # 2.3 is nearer 2 than 1.6
        _record("b", False, {0.0: 1.0, 2.9: 5.0}, death=3.0),  # no visit within 2 +- 0.5
        _record("c", False, {1.0: 1.0, 2.0: 1.5}, death=None),  # no baseline value
    ]
    table = trial_table(Cohort("toy", records, config), "death", "bilirubin", at=2.0, window=0.5).set_index("subject_id")
    assert table["treated"].tolist() == [True, False, False]
    assert table["event"].tolist() == [False, True, False]
    assert table.loc["b", "time"] == 3.0
    assert table.loc["a", "baseline"] == pytest.approx(math.log(1.2))  # modelling scale: log bilirubin
    assert table.loc["a", "outcome"] == pytest.approx(math.log(3.0))
    assert math.isnan(table.loc["b", "outcome"]) and math.isnan(table.loc["c", "baseline"])
    assert table.loc["c", "outcome"] == pytest.approx(math.log(1.5))


def test_baseline_arms_needs_two_arms_one_untreated(config):
    arms, treated = baseline_arms([_record("a", True, {0.0: 1.0}, None), _record("b", False, {0.0: 1.0}, None)])
    assert treated == "drug" and list(arms) == ["drug", "none"]
    with pytest.raises(VPatientError, match=r"the data have 1 arm\(s\): drug \(2 patients\)"):
        baseline_arms([_record("a", True, {0.0: 1.0}, None), _record("b", True, {0.0: 1.0}, None)])


def test_bad_input_is_refused_before_any_training(tmp_path):
    pbc = load_pbc2()
    with pytest.raises(VPatientError, match="unknown lab 'nosuch': the continuous variables of config 'pbc2' are bilirubin"):
        run_trial_adjustment(pbc, lab="nosuch", cache_dir=tmp_path)
    with pytest.raises(VPatientError, match="unknown event 'stroke': config 'pbc2' has death, transplant"):
        run_trial_adjustment(pbc, event="stroke", cache_dir=tmp_path)
    with pytest.raises(VPatientError, match="horizon = -1"):
        run_trial_adjustment(pbc, horizon=-1, cache_dir=tmp_path)
    no_deaths = Cohort("pbc2", [r.model_copy(update={"events": []}) for r in pbc.records], pbc.config)
    with pytest.raises(VPatientError, match="no death events in data 'pbc2'"):
        run_trial_adjustment(no_deaths, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing was trained


def vp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vpatient.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_refuses_bad_input_with_a_message(tmp_path):
    pbc = load_pbc2()
    unknown = vp("trial", "adjust", "--data", "pbc2", "--lab", "nosuch", "--cache-dir", str(tmp_path / "cache"))
    assert unknown.returncode == 1
    assert "error: unknown lab 'nosuch'" in unknown.stderr and "Traceback" not in unknown.stderr

    treated_only = [r for r in pbc.records if r.treatments][:30]
    meds = write_meds(treated_only, pbc.config, tmp_path / "one-arm")
    one_arm = vp("trial", "adjust", "--data", str(meds), "--cache-dir", str(tmp_path / "cache"))
    assert one_arm.returncode == 1
    assert "needs a randomised trial of two arms" in one_arm.stderr and "d_penicillamine (30 patients)" in one_arm.stderr
    assert "Traceback" not in one_arm.stderr
    assert not (tmp_path / "cache").exists()

    assert vp("benchmark", "trial-adjustment", "--help").returncode == 0


# --------------------------------------------------------------------------- end to end, tiny


@pytest.fixture(scope="module")
def small_trial() -> Cohort:
    pbc = load_pbc2()
    return Cohort("pbc2-small", pbc.records[:40], pbc.config)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def result(small_trial, cache) -> TrialAdjustmentResult:
    return run_trial_adjustment(small_trial, n_folds=2, seed=0, n_samples=8, train_settings=TINY, cache_dir=cache)


@pytest.mark.slow
def test_end_to_end_result_is_consistent(result, small_trial, tmp_path):
    deaths = sum(any(e.kind == "death" for e in r.events) for r in small_trial.records)
    assert result.n_patients == 40 and sum(result.arm_sizes.values()) == 40
    assert (result.event, result.lab, result.horizon, result.lab_at) == ("death", "bilirubin", 5.0, 2.0)
    assert result.survival.n_patients == 40 and result.survival.n_events == deaths
    assert result.lab_effect is not None
    assert result.lab_effect.n_patients + result.lab_effect.n_dropped == 40
    assert result.lab_effect.outcome == "log(bilirubin) at 2 years"
    paths = result.write(tmp_path)
    assert [p.name for p in paths] == ["trial-adjustment.json", "trial-adjustment.md"]
    data = json.loads(paths[0].read_text())
    jsonschema.validate(data, json.loads(rendered_files()["TrialAdjustmentResult.schema.json"]))
    assert TrialAdjustmentResult.model_validate(data) == result
    text = paths[1].read_text()
    assert "## Survival: death (Cox)" in text and "## Lab: log(bilirubin) at 2 years (ANCOVA)" in text


@pytest.mark.slow
def test_scores_are_cross_fitted(small_trial, cache):
    scores = cross_fitted_scores(small_trial, 2, 0, lab="bilirubin", n_samples=8, train_settings=TINY, cache_dir=cache)
    assert sorted(scores["subject_id"]) == sorted(small_trial.subject_ids())  # every patient once
    train_ids = {fold.index: set(fold.train_ids) for fold in forecast_folds(small_trial, 2, 0)}
    assert not any(sid in train_ids[fold] for sid, fold in zip(scores["subject_id"], scores["fold"], strict=True))
    assert np.isfinite(scores[["survival_score", "lab_score"]].to_numpy()).all()


@pytest.mark.slow
def test_score_ignores_the_treatment_given(small_trial, cache):
    """Scored from enrolment data without the assigned treatment, under the control plan: a treated patient
    scores exactly as the same patient untreated, so the score is a pre-treatment covariate."""
    model = fold_models(small_trial, 2, TrainingRun(0, cache, TINY))[0].model
    treated = next(r for r in small_trial.records if r.treatments)
    untreated = treated.model_copy(update={"treatments": []})
    assert baseline_record(treated) == baseline_record(untreated)
    kwargs = {"event": "death", "horizon": 5.0, "lab": "bilirubin", "at": 2.0, "n_samples": 8, "seed": 3}
    a = prognostic_scores(model, [treated], **kwargs)
    b = prognostic_scores(model, [untreated], **kwargs)
    columns = ["survival_score", "lab_score"]
    np.testing.assert_array_equal(a[columns].to_numpy(), b[columns].to_numpy())
