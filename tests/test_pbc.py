"""The embedded PBC trial: counts from the literature, coding, and the packaged copy."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from vpatient.data.cohort import arm_of
from vpatient.data.summary import summarize
from vpatient.datasets import load_pbc2
from vpatient.schemas import Transform, VariableKind

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbc2.csv"


@pytest.fixture(scope="module")
def pbc():
    return load_pbc2()


def test_counts_match_the_trial(pbc):
    assert len(pbc.records) == 312
    assert sum(len(r.visit_times()) for r in pbc.records) == 1945
    assert sum(any(e.kind == "death" for e in r.events) for r in pbc.records) == 140
    assert sum(any(e.kind == "transplant" for e in r.events) for r in pbc.records) == 29
    arms = pd.Series([arm_of(r) for r in pbc.records]).value_counts().to_dict()
    assert arms == {"d_penicillamine": 158, "none": 154}


def test_summary_reports_the_same_counts(pbc):
    summary = summarize(pbc)
    assert summary.overview.loc["subjects", "value"] == 312
    assert summary.overview.loc["visits", "value"] == 1945
    assert summary.events.loc["death", "subjects"] == 140
    assert summary.arms.loc["none", "subjects"] == 154
    assert summary.variables.loc["cholesterol", "measured"] == 1124  # the most often missing lab
    assert "| death | 140 |" in summary.to_markdown()


def test_coding_of_variables(pbc):
    config = pbc.config
    logged = {v.name for v in config.variables if v.transform == Transform.LOG}
    assert logged == {"bilirubin", "alkaline_phosphatase", "sgot", "cholesterol", "prothrombin"}
    assert set(config.names(VariableKind.BINARY)) == {"ascites", "hepatomegaly", "spiders"}
    assert set(config.names(VariableKind.ORDINAL)) == {"edema", "histologic_stage"}
    assert config.event_kinds == ["death", "transplant"]
    assert {t.name for t in config.tests} == {"liver_panel", "coagulation", "blood_count", "physical_exam", "liver_biopsy"}
    assert config.test("liver_biopsy").cost > config.test("liver_panel").cost
    assert pbc.citation and "Fleming" in pbc.citation


def test_first_subject_reads_as_in_the_source(pbc):
    first = pbc.subject(1)
    assert first.static == {"age": pytest.approx(58.7668382433468), "sex": 0.0}
    baseline = {o.variable: o.value for o in first.observations if o.time == 0.0}
    assert baseline["bilirubin"] == 14.5
    assert baseline["edema"] == 1.0  # "edema despite diuretics"
    assert baseline["histologic_stage"] == 4
    assert [e.kind for e in first.events] == ["death"]
    assert first.events[0].time == first.end_of_followup == pytest.approx(1.09517029898149)
    assert first.treatments[0].treatment == "d_penicillamine" and first.treatments[0].stop is None


def test_records_are_in_canonical_order(pbc):
    for record in pbc.records[:50]:
        assert record == record.in_canonical_order(pbc.config)


@pytest.mark.skipif(not REFERENCE.is_file(), reason="reference copy of pbc2.csv not beside the repository")
def test_packaged_copy_equals_the_reference():
    from importlib import resources

    packaged = (resources.files("vpatient.data") / "files" / "pbc2.csv").read_bytes()
    assert packaged == REFERENCE.read_bytes()
    assert load_pbc2(REFERENCE).records == load_pbc2().records


def test_a_size_for_the_fixed_pbc_dataset_is_refused() -> None:
    from vpatient.datasets import load_dataset
    from vpatient.errors import ConfigError

    with pytest.raises(ConfigError, match="fixed size"):
        load_dataset("pbc2", n=50)
