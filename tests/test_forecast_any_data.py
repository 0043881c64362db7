"""The forecasting benchmark on a user's own data: peers chosen by the data, optional events, derived landmarks, resuming."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from vpatient.benchmarks.cli import benchmark_app
from vpatient.benchmarks.forecast import ForecastBenchmarkResult
from vpatient.data.meds import write_meds
from vpatient.evaluate.baselines import LOCF
from vpatient.evaluate.methods import METHODS, default_methods
from vpatient.evaluate.protocol import ProtocolError, event_to_score, round_significant, survival_landmark
from vpatient.schemas import DatasetConfig, PatientRecord

SCORES = ("motor", "memory", "mood")


def _clinic_config(with_death: bool) -> DatasetConfig:
    """A config that is neither PBC nor synthetic: three scores in months, no treatment, death optional."""
    variables = [{"name": "age", "codes": ["AGE"], "kind": "static"}]
    variables += [{"name": s, "codes": [f"SCORE//{s.upper()}"], "kind": "continuous"} for s in SCORES]
    if with_death:
        variables.append({"name": "death", "codes": ["MEDS_DEATH"], "kind": "event"})
    return DatasetConfig.model_validate({"name": "clinic-scores", "time_unit": "months", "variables": variables})


def _clinic_records(n: int = 30, visits: int = 5, gap: float = 6.0, with_death: bool = False, seed: int = 0):
    """``n`` subjects seen every ``gap`` months, each score on its own linear trend plus noise.

    With deaths, a subject whose motor score climbs fast dies between the third and the last
    visit (visits after death dropped).
    """
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        base, slope = rng.normal(20.0, 3.0, len(SCORES)), rng.normal(0.5, 0.2, len(SCORES))
        end = float(visits * gap)
        dies = with_death and slope[0] > 0.5
        death = float(rng.uniform(2 * gap + 1.0, (visits - 1) * gap - 1.0)) if dies else end
        times = np.arange(visits)[np.arange(visits) * gap < death] * gap
        observations = [
            {"time": float(t), "variable": name, "value": float(base[j] + slope[j] * t + rng.normal(0.0, 1.0))}
            for t in times
            for j, name in enumerate(SCORES)
        ]
        events = [{"time": death, "kind": "death"}] if dies else []
        records.append(
            PatientRecord.model_validate(
                {
                    "subject_id": f"s{i:02d}",
                    "static": {"age": float(rng.uniform(40.0, 80.0))},
                    "observations": observations,
                    "events": events,
                    "end_of_followup": death,
                }
            )
        )
    return records


def _write_clinic(tmp_path, with_death: bool = False, **kwargs):
    config = _clinic_config(with_death)
    data = write_meds(_clinic_records(with_death=with_death, **kwargs), config, tmp_path / "clinic")
    config_path = tmp_path / "clinic-config.json"
    config.save(config_path)
    return data, config_path


def _forecast(data, config_path, out_dir, *extra: str):
    args = ["forecast", "--data", str(data), "--config", str(config_path), "--folds", "2", "--seed", "0"]
    return CliRunner().invoke(benchmark_app, [*args, "--out-dir", str(out_dir), "--no-progress", *extra])


# --------------------------------------------------------------------------- events and landmarks


def test_the_event_is_death_else_the_first_kind_else_none():
    records = _clinic_records(n=6, with_death=True)
    assert event_to_score(_clinic_config(with_death=True), records) == ("death", None)
    assert event_to_score(_clinic_config(with_death=False), records) == (None, "config 'clinic-scores' declares no event kind")
    survivors = _clinic_records(n=6, with_death=False)
    assert event_to_score(_clinic_config(with_death=True), survivors) == (None, "no subject has a 'death' event")
    with pytest.raises(ProtocolError, match="'relapse' is not an event kind"):
        event_to_score(_clinic_config(with_death=True), records, "relapse")


def test_landmarks_and_windows_come_from_the_data_unless_given():
    # exams 0, 6, ..., 24 (six apart, in any unit) and follow-up to 30: pooled visit-time quartiles 6, 12, 18;
    # windows 1/4 and 1/2 of the median follow-up of 30 -> 7.5 and 15
    records = _clinic_records(n=12, visits=5, gap=6.0)
    config = _clinic_config(with_death=False)
    assert survival_landmark(config, records=records) == ([6.0, 12.0, 18.0], [7.5, 15.0])
    assert survival_landmark(config, [1.0, 3.0], None, records) == ([1.0, 3.0], [7.5, 15.0])
    assert survival_landmark(config, [1.0], [2.0]) == ([1.0], [2.0])
    # the embedded PBC keeps the grid of its committed results; in another time unit it is just another dataset
    pbc_like = config.model_copy(update={"name": "pbc2", "time_unit": "years"})
    assert survival_landmark(pbc_like, records=records) == ([1.0, 3.0, 5.0], [1.0, 3.0, 5.0])
    assert survival_landmark(pbc_like.model_copy(update={"time_unit": "days"}), records=records)[0] == [6.0, 12.0, 18.0]
    assert [round_significant(x) for x in (4.37, 0.08374, 137.0, 0.0)] == [4.4, 0.084, 140.0, 0.0]


# --------------------------------------------------------------------------- methods chosen by the data


def test_help_lists_every_default_method():
    result = CliRunner().invoke(benchmark_app, ["forecast", "--help"], env={"COLUMNS": "300"})
    text = " ".join(result.output.split())
    assert result.exit_code == 0
    assert default_methods()[0] == "vpatient" and set(default_methods()) == set(METHODS)
    assert f"({', '.join(default_methods())})" in text


def test_an_explicit_method_that_does_not_apply_is_refused_before_training(tmp_path, monkeypatch):
    data, config_path = _write_clinic(tmp_path)
    fits = []
    monkeypatch.setattr(LOCF, "fit", lambda self, *a: fits.append(1) or self)
    result = _forecast(data, config_path, tmp_path / "out", "--methods", "locf,last-bilirubin,landmark-cox")
    assert isinstance(result.exception, ProtocolError)
    message = str(result.exception)
    assert "last-bilirubin: config 'clinic-scores' has no continuous variable 'bilirubin'" in message
    assert "landmark-cox: predicts risk only, and there is no event to score" in message
    assert fits == [] and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_forecast_benchmark_runs_on_own_data_without_events_or_treatments(tmp_path):
    # the world model trained as `vpatient train` would, here for 2 epochs, one member (the command's own options:
    # it builds the world model from them, so a variant put in METHODS would not be the one that runs)
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"epochs": 2}))
    data, config_path = _write_clinic(tmp_path)
    out = tmp_path / "out"
    result = _forecast(data, config_path, out, "--settings", str(settings), "--members", "1")  # the default methods
    assert result.exit_code == 0, result.output
    saved = ForecastBenchmarkResult.model_validate_json((out / "forecast-clinic.json").read_text())
    markdown = (out / "forecast-clinic.md").read_text()
    assert saved.variables == list(SCORES) and saved.n_subjects == 30
    forecasting = [m for m in default_methods() if METHODS[m]().forecasts]
    assert saved.methods == forecasting and [f.method for f in saved.forecast] == forecasting
    assert all(f.n_cells == 30 * 2 * 3 for f in saved.forecast)  # 5 visits: 3 observed, 2 forecast, 3 scores each
    for method in ("vpatient", "locf", "lmm", "mean-only"):
        assert f"| {method} |" in markdown
    assert saved.settings.event is None and saved.survival == [] and saved.settings.landmarks == []
    assert saved.survival_skipped == "config 'clinic-scores' declares no event kind"
    assert "## Survival\n\nNot scored: config 'clinic-scores' declares no event kind." in markdown
    assert "Harrell's C" not in markdown
    assert saved.skipped_methods["last-bilirubin"] == "config 'clinic-scores' has no continuous variable 'bilirubin'"
    assert saved.skipped_methods["landmark-cox"] == "predicts risk only, and there is no event to score"
    assert "Methods not run (they do not apply to these data): " in markdown and "last-bilirubin (config" in markdown


# --------------------------------------------------------------------------- resuming


def test_a_resumed_run_gives_the_result_of_an_uninterrupted_one(tmp_path, monkeypatch):
    data, config_path = _write_clinic(tmp_path, with_death=True, n=40)
    out = tmp_path / "out"
    args = ("--methods", "locf,landmark-cox", "--predictions", str(tmp_path / "p.parquet"), "--landmarks", "6,12")
    fits = []
    real_fit = LOCF.fit
    monkeypatch.setattr(LOCF, "fit", lambda self, *a: fits.append(1) or real_fit(self, *a))

    first = _forecast(data, config_path, out, *args)
    assert first.exit_code == 0, first.output
    whole = json.loads((out / "forecast-clinic.json").read_text())
    whole_predictions = pd.read_parquet(tmp_path / "p.parquet")
    parts = sorted((out / ".forecast-clinic.parts").glob("*.json"))
    assert [p.name.split("-")[0] for p in parts] == ["fold0", "fold0", "fold1", "fold1"] and len(fits) == 2
    assert whole["settings"]["event"] == "death" and any(x["c_index_mean"] is not None for x in whole["survival"])

    # a run stopped during the second fold: its locf part was never written
    next(p for p in parts if p.name.startswith("fold1-locf")).unlink()
    resumed = _forecast(data, config_path, out, *args)
    assert resumed.exit_code == 0, resumed.output
    assert len(fits) == 3  # only the missing part ran again
    again = json.loads((out / "forecast-clinic.json").read_text())
    assert {k: v for k, v in again.items() if k != "runtime_seconds"} == {
        k: v for k, v in whole.items() if k != "runtime_seconds"
    }
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "p.parquet"), whole_predictions)

    assert _forecast(data, config_path, out, *args, "--fresh").exit_code == 0
    assert len(fits) == 5  # --fresh recomputes both folds
    # other settings never reuse these parts
    assert _forecast(data, config_path, out, *args, "--min-events", "1000").exit_code == 0
    assert len(fits) == 7


def test_cells_with_too_few_events_are_noted(tmp_path):
    data, config_path = _write_clinic(tmp_path, with_death=True, n=40)
    out = tmp_path / "out"
    args = ("--methods", "mean-only,landmark-cox", "--landmarks", "6,25", "--windows", "0.5")
    result = _forecast(data, config_path, out, *args)
    assert result.exit_code == 0, result.output
    saved = ForecastBenchmarkResult.model_validate_json((out / "forecast-clinic.json").read_text())
    # every death falls between months 13 and 23: none within 6 + 0.5, and nobody dies after 25, so that
    # landmark's Cox model has no event to learn from (risk 0) and the run still ends
    early, late = saved.survival
    assert (early.landmark, early.window, early.deaths, early.folds_scored) == (6.0, 0.5, 0, 0)
    assert (late.landmark, late.deaths, late.folds_scored) == (25.0, 0, 0) and late.n_at_risk > 0
    assert saved.notes == [
        f"s={c.landmark:g} w=0.5: fewer than 5 death events in 2 of 2 folds (0 pooled over folds, {c.n_at_risk} at risk): "
        "not scored."
        for c in (early, late)
    ]
    assert "## Notes\n\n- s=6 w=0.5: fewer than 5 death events" in (out / "forecast-clinic.md").read_text()


def test_mae_by_visits_ahead_ranks_each_subjects_forecast_times() -> None:
    from vpatient.benchmarks.forecast import mae_by_visits_ahead

    rows = []
    for subject, offset in (("a", 0.0), ("b", 10.0)):
        for k, t in enumerate([1.0, 2.0, 4.0, 8.0], start=1):  # visits 1, 2, 3, 4 ahead (times differ by subject)
            rows.append({"method": "m", "subject_id": subject, "time": offset + t, "observed": 0.0, "mean": float(k)})
    table = pd.DataFrame(rows)
    assert mae_by_visits_ahead(table) == {"m": {"1": 1.0, "2": 2.0, "3-5": 3.5}}
    assert mae_by_visits_ahead(table.iloc[:0]) == {}
