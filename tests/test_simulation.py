"""Simulation: what-ifs with common random numbers, virtual cohorts, trials and the Dask engine."""

from __future__ import annotations

import json

import meds
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from vpatient import plots
from vpatient.cli import app
from vpatient.data.meds import read_meds, records_to_frame, write_meds
from vpatient.data.meds.write import meds_table
from vpatient.data.synthetic import synthetic_cohort
from vpatient.errors import RecordValidationError, VPatientError
from vpatient.schemas import TimeUnit, TreatmentExposure, TreatmentPlan, parse_plan
from vpatient.simulation import Population, Simulator
from vpatient.simulation.sampling import _first_events
from vpatient.simulation.virtual_cohort import cohort_layout
from vpatient.train import TrainSettings
from vpatient.virtual_patient import VirtualPatientModel

pytestmark = pytest.mark.slow  # every test but one reads a model trained in a module fixture


@pytest.fixture(scope="module")
def cohort():
    return synthetic_cohort(n=80, seed=11)


@pytest.fixture(scope="module")
def model_dir(cohort, tmp_path_factory):
    """A briefly trained synthetic model, saved with its population (as `vpatient train` does)."""
    path = tmp_path_factory.mktemp("model")
    model = VirtualPatientModel.fit(cohort.records, cohort.config, TrainSettings(epochs=3, seed=0), progress=False)
    model.data_source = "synthetic"
    model.save(path)
    Simulator(model, model_dir=path).fit_population(cohort.records, seed=0)
    return path


@pytest.fixture(scope="module")
def sim(model_dir):
    return Simulator.load(model_dir)


# --------------------------------------------------------------------------- what-if


def test_identical_plans_give_exactly_zero_effect(sim, cohort, none_plan, drug_plan):
    record = next(r for r in cohort.records if r.end_of_followup > 2)
    twin = none_plan.model_copy(update={"name": "no drug, again"})
    result = sim.whatif(record, [none_plan, twin, drug_plan], horizon=3.0, n_samples=40, seed=2)
    effects = result.effects()
    same = effects[effects["plan"] == "no drug, again"]
    assert len(same) and (same[["difference", "lower", "upper"]] == 0.0).all().all()
    drug = effects[effects["plan"] == "drug"]
    assert set(drug["horizon"]) == {1.0, 2.0, 3.0} or set(drug["horizon"]) == {1.0, 2.0}
    assert {"survival:death", "rmst:death"} <= set(drug["quantity"])
    assert (drug["lower"] <= drug["difference"]).all() and (drug["difference"] <= drug["upper"]).all()
    every = result.effects(pairs="all")  # the third pair: drug against the twin equals drug against no drug
    against_twin = every[(every["plan"] == "drug") & (every["reference"] == "no drug, again")]
    np.testing.assert_array_equal(against_twin["difference"].to_numpy(), drug["difference"].to_numpy())


def test_factual_plan_reproduces_the_forecast(sim, cohort):
    record = next(r for r in cohort.records if r.treatments and r.end_of_followup > 2)
    at = record.visit_times()[1]
    factual = TreatmentPlan(name="as given", exposures=[e.model_copy() for e in record.treatments])
    result = sim.whatif(record, [factual], horizon=2.0, n_samples=30, seed=4, at=at)
    forecast = sim.model.forecast(record, until=at, horizon=2.0, n_samples=30, seed=4)
    grid = forecast.times
    mine = result.forecasts["as given"]
    common = np.isin(np.round(mine.times, 9), np.round(grid, 9))
    np.testing.assert_allclose(mine.paths.expected[:, :, common], forecast.paths.expected, atol=1e-4)


def test_a_cached_posterior_gives_the_same_numbers_as_a_fresh_one(model_dir, cohort, none_plan, drug_plan):
    record = cohort.records[5]
    fresh = Simulator.load(model_dir).whatif(record, [none_plan, drug_plan], horizon=2.0, n_samples=20, seed=9)
    warm = Simulator.load(model_dir)
    warm.whatif(record, [drug_plan], horizon=2.0, n_samples=20, seed=9)  # infers and caches the posterior
    again = warm.whatif(record, [none_plan, drug_plan], horizon=2.0, n_samples=20, seed=9)
    for name in ("no drug", "drug"):
        np.testing.assert_array_equal(fresh.forecasts[name].paths.predictive, again.forecasts[name].paths.predictive)


def test_whatif_refuses_bad_plans_naming_the_field(sim, cohort, none_plan):
    record = cohort.records[0]
    with pytest.raises(RecordValidationError, match=r"exposures\[0\]\.treatment"):
        sim.whatif(record, [TreatmentPlan(name="x", exposures=[TreatmentExposure(treatment="aspirin", start=0)])])
    with pytest.raises(RecordValidationError, match=r"exposures\[0\]\.dose"):
        sim.whatif(record, [TreatmentPlan(name="x", exposures=[TreatmentExposure(treatment="drug", start=0, dose=50)])])
    with pytest.raises(RecordValidationError, match=r"exposures\[0\]\.stop"):
        parse_plan({"name": "x", "exposures": [{"treatment": "drug", "start": 2, "stop": 1}]}, sim.model.config)
    with pytest.raises(VPatientError, match="unique"):
        sim.whatif(record, [none_plan, none_plan])


# --------------------------------------------------------------------------- population and cohorts


def test_population_round_trips_and_draws_plausible_covariates(sim, model_dir):
    pop = sim.population
    assert Population.load(model_dir / "population.json") == pop
    rng = np.random.default_rng(0)
    arms = pop.draw_arms(2000, rng)
    shares = pd.Series(arms).value_counts(normalize=True)
    for arm, share in pop.arms.items():
        assert abs(shares.get(arm, 0.0) - share) < 0.05
    from vpatient.simulation.sampling import draw_virtual_patients

    patients = draw_virtual_patients(pop, sim.model, 500, rng, years=4.0)
    sex = patients.static_natural[:, sim.model.layout.static.index("sex")]
    assert set(np.unique(sex)) <= {0.0, 1.0}
    age = patients.static_natural[:, sim.model.layout.static.index("age")]
    assert pop.static_low[0] <= age.min() and age.max() <= pop.static_high[0]


def test_first_event_times_invert_the_cumulative_hazard():
    grid = np.linspace(0.0, 10.0, 121)
    rates = np.array([0.2, 0.05])  # constant hazards of two kinds
    cumhaz = np.broadcast_to(grid[None, :, None] * rates, (20_000, len(grid), 2))
    rng = np.random.default_rng(1)
    time, kind = _first_events(grid, cumhaz, rng.exponential(size=20_000), rng.uniform(size=20_000))
    within = np.isfinite(time)
    assert abs(within.mean() - (1 - np.exp(-2.5))) < 0.01  # P(event by 10 years) = 1 - exp(-0.25 * 10)
    assert abs(np.median(time[within]) - np.quantile(np.where(within, time, np.inf), 0.5)) < 1.0
    assert abs((kind[within] == 0).mean() - 0.8) < 0.02  # the kinds' shares of the hazard


def test_cohort_is_valid_meds_that_reads_back(sim, tmp_path):
    result = sim.cohort(120, seed=3, years=4.0, out=tmp_path / "c", chunk_size=50, progress=False)
    records = read_meds(result.meds_dir)
    assert len(records) == 120 == result.n_patients
    # One MEDS writer in effect: the simulator's table is, dtypes and all (standard MEDS),
    # what the data side writes for the records it reads back; and they read back the same.
    shards = sorted((result.meds_dir / "data").glob("*.parquet"))
    for shard in shards:
        meds.DataSchema.validate(pq.read_table(shard))
    meds.DatasetMetadataSchema.validate(json.loads((result.meds_dir / meds.dataset_metadata_filepath).read_text()))
    written = pd.read_parquet(result.meds_dir / "data")
    assert written["subject_id"].dtype == np.int64
    standard = meds_table(records_to_frame(records, sim.model.config), cohort_layout(sim.model.config)).to_pandas()
    pd.testing.assert_frame_equal(written, standard, check_exact=True)
    rewritten = write_meds(records, sim.model.config, tmp_path / "rewritten")
    assert pq.read_schema(shards[0]).remove_metadata() == pq.read_schema(rewritten / "data" / "0.parquet").remove_metadata()
    assert read_meds(rewritten) == records  # lossless, times and values bit for bit
    events = result.events()
    assert len(events) == 120 and events["subject_id"].is_unique
    by_id = {r.subject_id: r for r in records}
    for row in events.itertuples():
        record = by_id[str(row.subject_id)]
        assert record.end_of_followup == pytest.approx(row.time)
        assert (row.event in {e.kind for e in record.events}) == bool(row.observed)
        assert all(t <= record.end_of_followup + 1e-9 for t in record.visit_times())
    manifest = json.loads((result.out_dir / "simulation.json").read_text())
    assert manifest["n"] == 120 and manifest["seed"] == 3
    again = sim.cohort(120, seed=3, years=4.0, out=tmp_path / "d", chunk_size=50, progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(result.meds_dir / "data"), pd.read_parquet(again.meds_dir / "data"))
    with pytest.raises(VPatientError, match="not empty"):
        sim.cohort(10, out=tmp_path / "c", progress=False)


def test_an_interrupted_cohort_leaves_nothing_behind(sim, tmp_path, monkeypatch):
    from vpatient.simulation import simulator

    real = simulator.cohort_chunk

    def failing(chunk, **kwargs):
        if chunk.index == 1:
            raise RuntimeError("disk full")
        return real(chunk, **kwargs)

    monkeypatch.setattr(simulator, "cohort_chunk", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        sim.cohort(60, seed=1, years=2.0, out=tmp_path / "c", chunk_size=30, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the cohort folder nor its staging folder


def test_cohort_schedules_follow_their_rules(sim, tmp_path):
    regular = sim.cohort(40, seed=0, years=3.0, schedule="regular", visit_interval=0.5, progress=False)
    for record in regular.records():
        t = np.asarray(record.visit_times())
        assert np.allclose(np.diff(t), 0.5) and t[0] == 0.0
    with pytest.raises(VPatientError, match="schedule 'weekly'"):
        sim.cohort(10, schedule="weekly", progress=False)


def test_dask_local_cluster_gives_the_same_cohort(sim, model_dir, tmp_path):
    local = sim.cohort(90, seed=8, years=3.0, out=tmp_path / "local", chunk_size=30, progress=False)
    dask = sim.cohort(90, seed=8, years=3.0, out=tmp_path / "dask", chunk_size=30, engine="dask", n_workers=2, progress=False)
    assert sorted(p.name for p in (dask.meds_dir / "data").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    pd.testing.assert_frame_equal(pd.read_parquet(local.meds_dir / "data"), pd.read_parquet(dask.meds_dir / "data"))
    pd.testing.assert_frame_equal(local.events(), dask.events())


# --------------------------------------------------------------------------- trials


def test_trial_with_identical_arms_has_no_effect(sim, none_plan):
    twin = none_plan.model_copy(update={"name": "no drug, again"})
    result = sim.trial({"a": none_plan, "b": twin}, n=150, years=4.0, seed=1, chunk_size=60, progress=False)
    assert result.hazard_ratios["hazard_ratio"].iloc[0] == pytest.approx(1.0, abs=1e-9)
    assert result.rmst["difference"].iloc[0] == 0.0
    km = result.kaplan_meier
    np.testing.assert_array_equal(km[km["arm"] == "a"]["survival"].to_numpy(), km[km["arm"] == "b"]["survival"].to_numpy())


def test_trial_on_a_dask_cluster_matches_the_local_engine(sim, tmp_path, none_plan, drug_plan):
    arms = {"no drug": none_plan, "drug": drug_plan}
    local = sim.trial(arms, n=80, years=3.0, seed=5, chunk_size=40, progress=False)
    dask = sim.trial(arms, n=80, years=3.0, seed=5, chunk_size=40, engine="dask", out=tmp_path / "t", progress=False)
    assert len(list((tmp_path / "t" / "simulation" / "patients").iterdir())) == 2  # one part per chunk, by the workers
    pd.testing.assert_frame_equal(local.hazard_ratios, dask.hazard_ratios)
    pd.testing.assert_frame_equal(local.rmst, dask.rmst)


def test_trial_on_real_records_and_its_files(sim, cohort, tmp_path, none_plan, drug_plan):
    result = sim.trial(
        {"none": none_plan, "drug": drug_plan}, population=cohort.records[:40], years=3.0, out=tmp_path / "t", progress=False
    )
    assert result.n_patients == 40
    assert {"none", "drug"} == set(result.kaplan_meier["arm"])
    assert (
        0
        < result.hazard_ratios["lower"].iloc[0]
        <= result.hazard_ratios["hazard_ratio"].iloc[0]
        <= result.hazard_ratios["upper"].iloc[0]
    )
    surv = result.model_survival
    assert (surv["survival"].between(0, 1)).all()
    for name in ("trial.json", "trial.md", "kaplan_meier.csv", "trajectories.csv"):
        assert (tmp_path / "t" / name).stat().st_size > 0
    with pytest.raises(VPatientError, match="at least one arm"):
        sim.trial({}, n=10, progress=False)


def test_a_one_arm_trial_is_a_virtual_cohort_s_survival_without_a_comparison(sim, none_plan, drug_plan, tmp_path):
    one = sim.trial({"none": none_plan}, n=40, years=4.0, seed=2, chunk_size=20, progress=False)
    two = sim.trial({"none": none_plan, "drug": drug_plan}, n=40, years=4.0, seed=2, chunk_size=20, progress=False)
    # the same virtual patients as the first arm of a trial with the same seed: the arm's curve, not a new cohort's
    pd.testing.assert_frame_equal(one.kaplan_meier, two.kaplan_meier[two.kaplan_meier["arm"] == "none"].reset_index(drop=True))
    assert one.arms == ["none"] and one.n_patients == 40
    assert one.hazard_ratios.empty and one.rmst.empty and list(one.rmst.columns) == list(two.rmst.columns)
    assert "no arm to compare" in one.to_markdown() and "Hazard ratios" not in one.to_markdown()
    median, lower, upper = one.median_time("none")
    km = one.kaplan_meier
    if np.isfinite(median):  # the first month the curve is at one half or below
        assert km.loc[km["time"] == median, "survival"].iloc[0] <= 0.5 < km.loc[km["time"] < median, "survival"].min()
    assert not (lower > median or median > upper)  # NaN (not reached) compares False
    with pytest.raises(VPatientError, match="unknown arm 'drug'"):
        one.median_time("drug")
    one.save(tmp_path)  # what `vpatient simulate trial` writes with one --arm
    assert json.loads((tmp_path / "trial.json").read_text())["hazard_ratios"] == []
    plots.plot_trial(one, tmp_path / "trial.png")
    assert (tmp_path / "trial.png").stat().st_size > 0


# --------------------------------------------------------------------------- command line


def _plan_file(path, plan: TreatmentPlan):
    path.write_text(plan.model_dump_json())
    return str(path)


def test_cli_whatif_cohort_and_trial(model_dir, tmp_path, none_plan, drug_plan):
    runner = CliRunner()
    a = _plan_file(tmp_path / "none.json", none_plan)
    b = _plan_file(tmp_path / "drug.json", drug_plan)
    out = runner.invoke(
        app,
        ["whatif", "--model", str(model_dir), "--patient", "syn00003", "--plan", a, "--plan", b, "--n-samples", "20", "--json"],
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["plans"][1]["name"] == "drug" and data["effects"]

    def simulate(command: str, n: int, *options: str):
        """``vpatient simulate COMMAND`` of ``n`` patients over 2 years, written to tmp_path / COMMAND."""
        args = ["--model", str(model_dir), "--n", str(n), "--years", "2", "--out", str(tmp_path / command), "--no-progress"]
        return runner.invoke(app, ["simulate", command, *args, *options])

    out = simulate("cohort", 30)
    assert out.exit_code == 0, out.output
    assert "30 virtual patients" in out.stdout
    out = simulate("trial", 40, "--arm", f"none={a}", "--arm", f"drug={b}")
    assert out.exit_code == 0, out.output
    assert "Hazard ratios" in out.stdout
    assert (tmp_path / "trial" / "trial.png").stat().st_size > 0  # the command draws the figure; TrialResult.save does not


def test_cli_refuses_a_bad_plan_with_the_field_named(model_dir, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "double", "exposures": [{"treatment": "drug", "start": 0, "dose": 99}]}))
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from vpatient.cli import run; run()",
            "whatif",
            "--model",
            str(model_dir),
            "--patient",
            "syn00003",
            "--plan",
            str(bad),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "exposures[0].dose" in result.stderr and "Traceback" not in result.stderr


def test_cli_whatif_reads_a_meds_export_without_a_config_given_one(model_dir, cohort, tmp_path, none_plan, drug_plan):
    """Your own MEDS data, with no vpatient config inside: --config says how to read it, in the model's time unit."""
    from vpatient.data.meds.codes import CONFIG_FILE, METADATA_DIR

    meds = write_meds(cohort.records[:5], cohort.config, tmp_path / "meds")
    (meds / METADATA_DIR / CONFIG_FILE).unlink()
    config_path = tmp_path / "config.json"
    cohort.config.save(config_path)
    runner = CliRunner()
    plans = ["--plan", _plan_file(tmp_path / "none.json", none_plan), "--plan", _plan_file(tmp_path / "drug.json", drug_plan)]
    base = ["whatif", "--model", str(model_dir), "--patient", "syn00003", *plans, "--n-samples", "16"]
    out = runner.invoke(app, [*base, "--data", str(meds), "--config", str(config_path)])
    assert out.exit_code == 0, out.output
    assert "what-if from t = " in out.stdout and "horizon 5 years" in out.stdout  # the config's horizon and unit
    fallback = runner.invoke(app, [*base, "--data", str(meds)])  # no config given or stored: the model's own reads it
    assert fallback.exit_code == 0 and fallback.stdout == out.stdout
    cohort.config.model_copy(update={"time_unit": TimeUnit.DAYS}).save(config_path)
    out = runner.invoke(app, [*base, "--data", str(meds), "--config", str(config_path)])
    assert isinstance(out.exception, VPatientError)  # `vpatient` prints it as one line, as for every VPatientError
    assert "times are in days but the model's are in years" in str(out.exception)
