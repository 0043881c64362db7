"""The synthetic noise floor and the imaging references of the forecasting benchmark."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vpatient import transforms
from vpatient.data.synthetic import synthetic_cohort
from vpatient.evaluate.imaging import imaging_targets, reference_forecasts, score_imaging, training_moments
from vpatient.evaluate.oracle import SyntheticOracle
from vpatient.evaluate.protocol import landmark_split


@pytest.fixture(scope="module")
def cohort():
    return synthetic_cohort(n=60, seed=11)


def test_oracle_residuals_have_the_generators_noise(cohort):
    oracle = SyntheticOracle(cohort.truth).fit(cohort.records, cohort.config, seed=0)
    rows = [
        (r.subject_id, o.time, o.variable, o.value) for r in cohort.records for o in r.observations if o.variable == "bilirubin"
    ]
    cells = pd.DataFrame(rows, columns=["subject_id", "time", "variable", "value"])
    answer = oracle.forecast([], cells[["subject_id", "time", "variable"]])
    residual = (
        transforms.forward(cells["value"].to_numpy(), cohort.config.variable("bilirubin").transform) - answer["mean"].to_numpy()
    )
    assert np.std(residual) == pytest.approx(cohort.truth.noise_sd["bilirubin"], rel=0.1)
    inside = (answer["q05"] <= answer["mean"] + residual) & (answer["mean"] + residual <= answer["q95"])
    assert inside.mean() == pytest.approx(0.9, abs=0.04)


def test_oracle_risk_is_the_true_conditional_risk(cohort):
    oracle = SyntheticOracle(cohort.truth)
    record = cohort.records[0]
    risk = oracle.risk([record], landmark=1.0, windows=[2.0], event="death")["risk"].iloc[0]
    h = cohort.truth.cumulative_hazard(record.subject_id, cohort.truth.factual_exposures(record.subject_id), np.array([1.0, 3.0]))
    assert risk == pytest.approx(1 - np.exp(-(h[1] - h[0])))


def test_imaging_references_and_oracle_floor(cohort):
    eligible = [r for r in cohort.records if len(r.visit_times()) >= 2]
    train, test = eligible[:40], eligible[40:]
    histories = [landmark_split(r)[0] for r in test]
    queries, observed = imaging_targets(test, histories)
    assert len(queries) and observed.shape == (len(queries), 32)
    assert all(
        t > h.end_of_followup
        for t, h in zip(
            queries["time"], [next(h for h in histories if h.subject_id == s) for s in queries["subject_id"]], strict=True
        )
    )
    mean, sd = training_moments(train, "ct")
    refs = reference_forecasts(histories, queries, mean)
    floor = score_imaging(SyntheticOracle(cohort.truth).forecast_imaging(histories, queries), observed, mean, sd)
    for name, predicted in refs.items():
        assert score_imaging(predicted, observed, mean, sd) > floor, name
    assert score_imaging(observed, observed, mean, sd) == 0.0
