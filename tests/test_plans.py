"""What-if plans: the recorded past is kept, the plan replaces the future."""

from __future__ import annotations

import numpy as np

from vpatient.plans import control_breakpoints, dose_at, exposures_under_plan
from vpatient.schemas import TreatmentExposure, TreatmentPlan


def test_plan_replaces_the_future_only():
    recorded = [TreatmentExposure(treatment="drug", start=0.0, dose=1.0)]
    plan = TreatmentPlan(name="double from 2y", exposures=[TreatmentExposure(treatment="drug", start=0.0, stop=5.0, dose=2.0)])
    combined = exposures_under_plan(recorded, plan, from_time=2.0)
    assert [(e.start, e.stop, e.dose) for e in combined] == [(0.0, 2.0, 1.0), (2.0, 5.0, 2.0)]
    np.testing.assert_array_equal(dose_at(combined, "drug", [0.0, 1.99, 2.0, 4.9, 5.0, 9.0]), [1, 1, 2, 2, 0, 0])
    assert control_breakpoints(combined, 0.0, 10.0) == [2.0, 5.0]


def test_empty_plan_withdraws_treatment():
    recorded = [TreatmentExposure(treatment="drug", start=0.0, dose=1.0)]
    combined = exposures_under_plan(recorded, TreatmentPlan(name="withdraw"), from_time=1.0)
    np.testing.assert_array_equal(dose_at(combined, "drug", [0.5, 1.0, 3.0]), [1, 0, 0])


def test_past_plan_exposures_are_dropped():
    plan = TreatmentPlan(name="late", exposures=[TreatmentExposure(treatment="drug", start=0.0, stop=1.0, dose=1.0)])
    assert exposures_under_plan([], plan, from_time=2.0) == []
