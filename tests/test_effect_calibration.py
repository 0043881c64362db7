"""The effect-calibration benchmark on tiny settings: both methods scored on the same split, results follow their schema."""

from __future__ import annotations

import json
from dataclasses import replace

import jsonschema
import numpy as np
import pytest

from vpatient.benchmarks.effect_calibration import (
    run_effect_calibration_pbc,
    run_effect_calibration_synthetic,
)
from vpatient.benchmarks.pbc_trial import observed_hazard_ratio
from vpatient.data.cohort import NO_TREATMENT_ARM
from vpatient.datasets import load_dataset
from vpatient.plots import survival_table
from vpatient.schema_export import rendered_files
from vpatient.train import TrainSettings

pytestmark = pytest.mark.slow  # both tests run the benchmark end to end

TINY = TrainSettings(epochs=2)


def _schema_valid(result, tmp_path):
    json_path = result.write(tmp_path)[0]
    schema = json.loads(rendered_files()["EffectCalibrationResult.schema.json"])
    jsonschema.validate(json.loads(json_path.read_text()), schema)


def test_synthetic_coverage_of_individual_effects(tmp_path):
    result = run_effect_calibration_synthetic(60, 0, (0.0,), 2, n_samples=8, train_settings=TINY, progress=False)
    methods = {c.method for c in result.coverage}
    assert methods == {"single model", "ensemble of 2"}
    quantities = {c.quantity for c in result.coverage}
    assert "survival +3" in quantities and "bilirubin +1" in quantities and "bilirubin +3" in quantities
    for c in result.coverage:
        assert 0.0 <= c.coverage <= 1.0 and c.n > 0 and c.mean_width >= 0
    width = {m: sum(c.mean_width for c in result.coverage if c.method == m) for m in methods}
    assert width["ensemble of 2"] > width["single model"]  # the members' disagreement widens the intervals
    assert "Individual effects against the synthetic truth" in result.to_markdown()
    _schema_valid(result, tmp_path)


def test_pbc_null_trial_single_and_ensemble(tmp_path):
    pbc = load_dataset("pbc2")
    cohort = replace(pbc, records=pbc.records[:120])  # a third of the trial keeps the test quick
    result = run_effect_calibration_pbc(
        cohort, 0, 2, 2, n_samples=8, draws_per_record=2, train_settings=TINY, cache_dir=tmp_path / "cache", progress=False
    )
    durations, died, baseline = survival_table(cohort, "death")
    observed_hr = observed_hazard_ratio(durations, died, np.array([a != NO_TREATMENT_ARM for a in baseline]))
    observed = result.trial[0]
    assert observed.setting == "observed" and observed.hazard_ratio == pytest.approx(observed_hr["hazard_ratio"])
    assert [(t.method, t.setting) for t in result.trial[1:]] == [
        ("single model", "in sample"),
        ("single model", "cross-validated"),
        ("ensemble of 2", "in sample"),
        ("ensemble of 2", "cross-validated"),
    ]
    shares = {s.method: s for s in result.null_share}
    assert shares["single model"].n_patients == 120
    assert shares["ensemble of 2"].mean_width > shares["single model"].mean_width
    assert [c.method for c in result.members_curve] == ["first 1", "first 2"]
    assert result.members_curve[-1].excluding_zero == shares["ensemble of 2"].excluding_zero
    _schema_valid(result, tmp_path)
