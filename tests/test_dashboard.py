"""The what-if dashboard: its library side, and the Streamlit app driven by AppTest on a tiny PBC model."""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vpatient import virtual_patient as vp
from vpatient.dashboard import charts as vc
from vpatient.dashboard import command
from vpatient.dashboard import headlines as vh
from vpatient.dashboard import session as vs
from vpatient.dashboard import tables as vt
from vpatient.dashboard import views as vv
from vpatient.datasets import load_dataset
from vpatient.errors import RecordValidationError, VPatientError
from vpatient.formatting import SCIENTIFIC, number, percent, span, with_unit
from vpatient.policy import Target, recommend
from vpatient.report.patient import next_visit_gap
from vpatient.schemas import VariableKind
from vpatient.simulation import Simulator
from vpatient.train import TrainSettings
from vpatient.virtual_patient import VirtualPatientModel

APP = command.APP_PATH
PATIENT = "5"


@pytest.fixture(scope="module")
def cohort():
    return load_dataset("pbc2")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, pbc_two_epoch_model_dir) -> Path:
    """A 2-epoch PBC model (trained once per session): enough to exercise every panel."""
    return Path(shutil.copytree(pbc_two_epoch_model_dir, tmp_path_factory.mktemp("tiny-model"), dirs_exist_ok=True))


@pytest.fixture(scope="module")
def model(model_dir) -> VirtualPatientModel:
    return VirtualPatientModel.load(model_dir)


def app(model_dir: Path, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(vs.MODEL_ENV, str(model_dir))
    at = AppTest.from_file(str(APP), default_timeout=180)
    return at.run()


def show(at, view: str):
    """Open one of the app's views (a tab) and rerun: only the open view computes and draws."""
    at.session_state[vv.VIEW_KEY] = view
    return at.run()


def table_with(at, column: str) -> pd.DataFrame:
    """The first table (main area or sidebar) that has ``column``."""
    for table in [*at.table, *at.sidebar.table]:
        value = table.value
        if column in value.columns:
            return value
    raise AssertionError(f"no table with column {column!r}; tables: {[list(t.value.columns) for t in at.table]}")


# --------------------------------------------------------------------------- library side


def test_plan_spec_builds_validated_plans(cohort):
    record = cohort.subject(PATIENT)
    config = cohort.config
    treat = vs.PlanSpec("treat", "dose", "d_penicillamine", 0.5, 0.5).to_plan(record, 1.0, config)
    assert [(e.treatment, e.start, e.stop, e.dose) for e in treat.exposures][-1] == ("d_penicillamine", 1.5, None, 0.5)
    stop = vs.PlanSpec("stop", "stop", "d_penicillamine", 0.0).to_plan(record, 1.0, config)
    assert all(e.stop is not None and e.stop <= 1.0 for e in stop.exposures)
    with pytest.raises(RecordValidationError) as info:
        vs.PlanSpec("too much", "dose", "d_penicillamine", 0.0, 3.0).to_plan(record, 1.0, config)
    assert info.value.problems[0].field.endswith("dose")


def test_upload_parsing(cohort, tmp_path):
    record = cohort.subject(PATIENT)
    data = json.dumps(record.model_dump(mode="json")).encode()
    assert vs.parse_upload("p.json", data, cohort.config).subject_id == PATIENT
    with pytest.raises(vs.UploadError, match="limit"):
        vs.parse_upload("big.json", b" " * (vs.MAX_UPLOAD_BYTES + 1), cohort.config)
    with pytest.raises(vs.UploadError, match="unknown file type"):
        vs.parse_upload("p.xlsx", b"x", cohort.config)
    from vpatient.data.meds import write_meds

    write_meds([record], cohort.config, tmp_path / "meds")
    files = sorted((tmp_path / "meds").rglob("*.parquet"))
    if files:
        assert vs.parse_upload("one.parquet", files[0].read_bytes(), cohort.config).subject_id == PATIENT


@pytest.mark.slow
def test_demo_model_cache_location(monkeypatch, tmp_path, model_dir):
    monkeypatch.setenv(vs.HOME_ENV, str(tmp_path))
    monkeypatch.delenv(vs.MODEL_ENV, raising=False)
    assert vs.demo_model_dir() == tmp_path / "pbc2-model"
    # An existing complete checkpoint is used as it is, never retrained.
    import shutil

    shutil.copytree(model_dir, tmp_path / "pbc2-model")
    assert vs.ensure_demo_model(echo=pytest.fail) == tmp_path / "pbc2-model"
    assert vs.resolve_model_dir() == tmp_path / "pbc2-model"
    monkeypatch.setenv(vs.MODEL_ENV, str(model_dir))
    assert vs.resolve_model_dir() == model_dir


@pytest.mark.slow
def test_whatif_after_a_plan_edit_is_fast(model_dir):
    """Recomputing a what-if after a plan edit reuses the refined posterior, and the session adds little to the library.

    Timed as ratios of calls in this process (a loaded machine slows them alike): a
    recompute against the patient's first what-if (which refines its posterior, ~2 s),
    and against the plain ``Simulator.whatif`` call the session wraps (~110-150 ms on PBC).
    """
    session = vs.DashboardSession.load(model_dir)
    simulator = Simulator(session.model)
    record = session.record(PATIENT)
    at = session.last_visit(PATIENT)

    def request(dose: float) -> vs.WhatIfRequest:
        plans = (
            vs.PlanSpec("treat", "dose", "d_penicillamine", 0.0, dose),
            vs.PlanSpec("no treatment", "stop", "d_penicillamine"),
        )
        return vs.WhatIfRequest(PATIENT, plans, at, horizon=5.0, n_samples=200, seed=0)

    def timed(call) -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    first = timed(lambda: session.whatif(request(1.0)))
    edits, plain = [], []
    for dose in (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3):
        edited = request(dose)
        plans = session.plans(edited)
        plain.append(timed(lambda plans=plans: simulator.whatif(record, plans, 5.0, 200, 0, at)))
        edits.append(timed(lambda edited=edited: session.whatif(edited)))
    median, reference = statistics.median(edits), statistics.median(plain)
    print(
        f"what-if recompute after a plan edit: median {median * 1000:.0f} ms over {len(edits)} edits; "
        f"first what-if {first * 1000:.0f} ms; plain Simulator.whatif {reference * 1000:.0f} ms"
    )
    assert median < 0.5 * first, f"a recompute took {median:.3f} s (median), not much less than the first what-if ({first:.3f} s)"
    assert median < 2.0 * reference, f"a recompute took {median:.3f} s (median), over twice the plain call ({reference:.3f} s)"


@pytest.mark.slow
def test_model_card(model, model_dir):
    card = vt.model_card(model)
    assert card["training"]["trained on"] == "pbc2"
    assert "Intended use" in card["intended_use"] and "Limits" in card["limits"]
    assert card["notes"]
    empty = vt.model_card(model, results_dir=model_dir / "nowhere")
    assert len(empty["benchmarks"]) == 0 and "No benchmark results" in empty["notes"][0] and empty["recipe"] is None


# --------------------------------------------------------------------------- the model card describes this checkpoint (issue 18)

TINY_EPOCHS = 3


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, cohort) -> Path:
    """A model of 30 PBC patients trained for TINY_EPOCHS epochs (about a second), saved and so read back as a checkpoint is."""
    records = cohort.records[:30]
    model = VirtualPatientModel.fit(records, cohort.config, TrainSettings(epochs=TINY_EPOCHS, seed=0), progress=False)
    model.data_source = "pbc2"
    return model.save(tmp_path_factory.mktemp("tiny-card-model"))


def test_the_card_states_the_training_measured_on_this_checkpoint(tiny_dir):
    from vpatient.report.card import training_facts
    from vpatient.version import __version__

    model = VirtualPatientModel.load(tiny_dir)
    facts = vt.model_card(model)["training"]
    assert facts == training_facts(model) | {k: facts[k] for k in ("latent state dimension", "variables", "treatments", "events")}
    history = json.loads((tiny_dir / "training.json").read_text())  # what the checkpoint recorded of its own training
    assert facts["epochs run (best epoch)"] == f"{TINY_EPOCHS} ({history['best_epoch']})"
    assert facts["most epochs allowed"] == str(TINY_EPOCHS) and facts["stopped by"] == f"the epoch limit ({TINY_EPOCHS})"
    assert facts["patients (training / validation)"] == f"{history['n_train']} / {history['n_validation']}"
    assert facts["training time"] == f"{history['seconds']:.0f} s"
    assert facts["trained with"] == f"vpatient {__version__}" and facts["ensemble members"] == "1 (a single model)"
    # a model trained on a folder of data names the data by its config: the folder's path is the server's
    model.data_source = str(tiny_dir / "meds")
    assert training_facts(model)["trained on"] == model.config.name
    assert str(tiny_dir) not in vt.model_caption(model) and model.config.name in vt.model_caption(model)


def test_benchmark_figures_are_marked_as_the_default_recipes_when_this_checkpoint_was_trained_otherwise(tiny_dir, tmp_path):
    from vpatient.benchmarks.options import DEFAULT_MEMBERS
    from vpatient.report.card import recipe_note

    model = VirtualPatientModel.load(tiny_dir)
    results = tmp_path / "results"
    results.mkdir()
    (results / "forecast-pbc2.json").write_text(json.dumps({"vpatient_version": "0.1.0", "forecast": [], "survival": []}))
    recipe = vt.model_card(model, results_dir=results)["recipe"]
    assert recipe.differs and recipe == recipe_note(model)  # the dashboard's words are the HTML card's
    assert recipe.text.startswith("Not measured on this checkpoint.")
    assert f"This checkpoint: {TINY_EPOCHS} epochs, 1 member; the benchmark figures below: the default recipe" in recipe.text
    assert f"up to 400 epochs with early stopping, {DEFAULT_MEMBERS} members" in recipe.text
    assert f"epochs {TINY_EPOCHS} (there 400), members 1 (there {DEFAULT_MEMBERS})" in recipe.text
    # trained as the recipe says (another seed, other threads: the same recipe), the figures are that recipe's
    model.train_settings = TrainSettings(members=DEFAULT_MEMBERS, seed=7, threads=1)
    same = recipe_note(model)
    assert not same.differs and "was trained with the default recipe" in same.text
    # figures whose benchmark recorded its own settings are compared with those
    recorded = recipe_note(model, {"epochs": 400, "members": 1}, "the trial figures below")
    assert recorded.differs and f"members {DEFAULT_MEMBERS} (there 1)" in recorded.text and "recorded" in recorded.text


def test_the_html_card_shows_the_same_training_facts_and_marks_the_training_benchmark(tiny_dir):
    from vpatient.report import model_card
    from vpatient.report.card import training_facts

    sim = Simulator.load(tiny_dir)
    html = model_card(sim, training=False).html
    for label, value in training_facts(sim.model).items():
        assert f"<th>training: {label}</th><td>{value}</td>" in html
    if (vt.RESULTS_DIR / "training-pbc2.json").is_file():  # the training benchmark's run is another model's, and says so
        assert "The training benchmark (training-pbc2.json: another model" in html and "not this checkpoint" in html
    if (vt.RESULTS_DIR / "forecast-pbc2.json").is_file():
        assert 'id="recipe">Not measured on this checkpoint.' in html


def test_the_html_card_and_the_dashboard_say_the_same_of_the_adjustment_beside_the_checkpoint(
    tiny_dir, tmp_path, simulated_trial_adjustment
):
    import html as html_text

    from vpatient.report import model_card

    own = shutil.copytree(tiny_dir, tmp_path / "model")  # a copy: the adjustment file stays out of the other tests' model
    simulated_trial_adjustment(with_lab=False).write(own)
    view = vt.trial_adjustment_view(own, "pbc2")
    assert len(view.sentences) == 2 and not view.problem  # the survival effect, then how the score was made
    card = html_text.unescape(model_card(Simulator.load(own), training=False).html)
    assert all(f"<p>{sentence}</p>" in card for sentence in view.sentences)


def test_plots_leave_the_backend_alone_and_draw_on_the_figure_given(cohort):
    probe = "import matplotlib, vpatient.plots; print(matplotlib.get_backend(auto_select=False))"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    chosen = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert chosen.stdout.strip() == "None"  # importing vpatient.plots selects no backend

    import matplotlib.pyplot as plt

    from vpatient import plots

    fig = plt.figure()
    try:
        assert plots.plot_timeline(cohort.subject(PATIENT), cohort.config, fig=fig) is fig
        assert fig.axes and fig.get_suptitle().startswith(f"subject {PATIENT}")
        ax = plt.figure().add_subplot()
        assert plots.plot_km_by_arm(cohort, ax=ax) is ax
    finally:
        plt.close("all")


def _curves(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The cost-aware curves drawn on ``ax`` by order ("recommended", "random"): cost and information."""
    from vpatient.plots import COST_CURVE_ORDERS

    by_label = {line.get_label(): line for line in ax.get_lines()}
    drawn = {order: by_label[label] for order, label in COST_CURVE_ORDERS.items()}
    assert all(line.get_drawstyle() == "steps-post" for line in drawn.values())
    return {order: (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)) for order, line in drawn.items()}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "words"),
    [(Target.latent(), "the latent disease state"), (Target.forecast("bilirubin", 2.0), "bilirubin in 2 years")],
)
def test_cost_curve_plot_draws_the_recommended_and_random_orders_as_steps(model, cohort, target, words):
    import matplotlib.pyplot as plt

    from vpatient.plots import plot_cost_curve

    record = cohort.subject(PATIENT)
    # half a year after the last visit: nothing measured yet, every test open
    rec = recommend(model, record, target, max(record.visit_times()) + 0.5, 64, 0)
    assert rec.sequence, "the greedy order bought nothing"
    ax = plot_cost_curve(rec, unit="years")
    try:
        curves = _curves(ax)
        cost, information = curves["recommended"]
        # the recommended order rises at each test it buys, to its cumulative expected gain
        assert list(cost[: len(rec.sequence) + 1]) == [0.0] + [s["cumulative_cost"] for s in rec.sequence]
        assert information[-1] == pytest.approx(rec.sequence[-1]["cumulative_eig"], rel=1e-12)
        random_cost, random_information = curves["random"]
        assert (random_cost[0], random_information[0]) == (0.0, 0.0)
        assert (np.diff(random_cost) >= 0).all() and random_cost[-1] == pytest.approx(sum(g.cost for g in rec.gains))
        if len(rec.sequence) == len(rec.gains):  # both bought every test: the same joint gain at the end
            assert random_information[-1] == pytest.approx(information[-1], rel=1e-9)
        # each test bought is named beside its corner where the name has room (PBC's test names are short)
        names = [t.get_text() for t in ax.texts]
        assert names and names[0] == rec.sequence[0]["test"]
        assert names == [s["test"] for s in rec.sequence if s["test"] in names]
        for text in ax.texts:
            step = next(s for s in rec.sequence if s["test"] == text.get_text())
            assert text.xy == (step["cumulative_cost"], step["cumulative_eig"])
        assert ax.get_xlabel() == "cumulative cost (relative units)"
        assert " ".join(ax.get_ylabel().split()) == f"expected information about {words} (nats)"
        assert len(ax.get_legend().get_texts()) == 2
    finally:
        plt.close("all")


@pytest.mark.slow
def test_cost_curve_of_a_patient_whose_tests_were_all_done_is_a_point_at_cost_zero(model, cohort):
    import matplotlib.pyplot as plt

    from vpatient.plots import plot_cost_curve

    record = cohort.subject(PATIENT)
    rec = recommend(model, record, Target.risk("death", 5.0), max(record.visit_times()), 32, 0)
    assert all(g.done for g in rec.gains) and not rec.sequence
    ax = plot_cost_curve(rec)
    try:
        for cost, information in _curves(ax).values():
            assert set(cost) == {0.0} and set(information) == {0.0}
        assert "within 5 time units" in ax.get_ylabel()  # no unit given: the horizon still reads
    finally:
        plt.close("all")


def test_forecast_target_horizon_is_two_years_in_the_data_unit_where_the_panel_reaches_it():
    from vpatient.schemas import TimeUnit

    assert vt.forecast_target_horizon(TimeUnit.YEARS, 5.0) == 2.0
    assert vt.forecast_target_horizon(TimeUnit.MONTHS, 60.0) == pytest.approx(24.0)
    assert vt.forecast_target_horizon(TimeUnit.DAYS, 365.25) == pytest.approx(730.5)
    # a daily world followed for a month: two years is beyond the panel's range (4 horizons), its own horizon stays
    assert vt.forecast_target_horizon(TimeUnit.DAYS, 30.0) == 30.0
    least, most, step = vt.target_horizon_bounds(30.0)
    assert (least, most, step) == (3.0, 120.0, 3.0)


def test_target_kinds_offered_follow_the_config(config):
    assert list(vt.target_kinds(config).values()) == ["risk", "forecast", "latent"]
    no_events = config.model_copy(update={"variables": [v for v in config.variables if v.kind.value != "event"]})
    assert list(vt.target_kinds(no_events).values()) == ["forecast", "latent"]


@pytest.mark.slow
def test_next_test_requests_are_cached_by_their_target(model_dir, cohort):
    session = vs.DashboardSession.load(model_dir)
    at = max(cohort.subject(PATIENT).visit_times()) + 0.5
    targets = [Target.risk("death", 5.0), Target.risk("death", 2.0), Target.forecast("bilirubin", 2.0), Target.latent()]
    shown = [session.recommend(vs.NextTestRequest(PATIENT, t, at, 32, 0)) for t in targets]
    assert [r.target for r in shown] == targets
    again = session.recommend(vs.NextTestRequest(PATIENT, Target.forecast("bilirubin", 2.0), at, 32, 0))
    assert again is shown[2]  # the same request is served from the cache
    figures = {session.figure("cost_curve", vs.NextTestRequest(PATIENT, t, at, 32, 0)) for t in targets}
    assert len(figures) == len(targets) and all(f.startswith(b"\x89PNG") for f in figures)


def test_the_app_script_is_found_inside_the_package():
    import vpatient.dashboard

    package = Path(vpatient.dashboard.__file__).resolve().parent
    assert command.APP_PATH == package / "app.py" and command.APP_PATH.is_file()
    assert "dashboards" not in command.APP_PATH.parts


@pytest.mark.slow
def test_an_installed_package_ships_the_app_script(tmp_path):
    """A wheel built from a copy of the sources holds app.py, and the installed package finds its own."""
    repo = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"
    shutil.copytree(repo / "vpatient", source / "vpatient", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(source)],
                           capture_output=True, text=True)  # fmt: skip
    if built.returncode and "setuptools" in built.stderr:
        pytest.skip(f"cannot build a wheel here: {built.stderr.strip()[-200:]}")
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "wheel").glob("vpatient-*.whl"))
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = subprocess.run(
        [sys.executable, "-c", "from vpatient.dashboard.command import APP_PATH; print(APP_PATH, APP_PATH.is_file())"],
        cwd=elsewhere,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert found.stdout.split() == [str((site / "vpatient" / "dashboard" / "app.py").resolve()), "True"], found.stdout


# --------------------------------------------------------------------------- interactive charts and static figures (issue 18)

TREATED = "1"  # a PBC patient with a recorded treatment period (patient 5 has none)


def _layers(spec: dict, mark: str) -> list[dict]:
    return [layer for layer in spec["layer"] if layer["mark"]["type"] == mark]


@pytest.fixture(scope="module")
def untrained(untrained_model_dir) -> VirtualPatientModel:
    """The session's untrained PBC model (a second to build): its forecasts are meaningless, their shapes real.

    The charts and figures are checked against the library's own numbers, whatever they are.
    """
    model = VirtualPatientModel.load(untrained_model_dir)
    model.refine_steps = 0  # the amortised posterior as it is: refining an untrained model's would only take time
    return model


@pytest.fixture(scope="module")
def treated_forecast(untrained, cohort):
    record = cohort.subject(TREATED)
    return untrained.forecast(record, max(record.visit_times()), 5.0, 50, 0), record


@pytest.fixture(scope="module")
def identical_plans(untrained, cohort):
    """A what-if of two plans that are the same (both as recorded) under different names."""
    record = cohort.subject(TREATED)
    at = max(record.visit_times())
    plans = [vs.PlanSpec(name).to_plan(record, at, untrained.config) for name in ("plan A", "plan B")]
    return Simulator(untrained).whatif(record, plans, 5.0, 50, 0, at), record


def test_forecast_charts_carry_the_history_the_median_both_bands_and_the_treatment(treated_forecast):

    forecast, record = treated_forecast
    labs = vc.default_labs(forecast.config)
    assert labs == forecast.config.names(VariableKind.CONTINUOUS)[: vc.DEFAULT_LAB_COUNT]
    specs = vc.forecast_lab_charts(forecast, record, labs)
    summary = forecast.summary()
    for name, spec in zip(labs, specs, strict=True):
        unit = forecast.config.variable(name).unit
        assert spec["title"] == f"{name} ({unit})"
        data = spec["datasets"]
        seen = sorted((o.time, o.value) for o in record.observations if o.variable == name)
        assert seen and list(zip(data["history"]["time"], data["history"]["value"], strict=True)) == seen
        assert set(data["history"]["series"]) == {"observed"}  # forecast from the last visit: nothing held out
        lab = summary[summary["variable"] == name]
        np.testing.assert_array_equal(data["line"]["median"], lab["median"])
        for band, (low, high, _) in vc.BAND_LABELS.items():
            part = data["bands"][data["bands"]["band"] == band]
            np.testing.assert_array_equal(part["lower"], lab[low])
            np.testing.assert_array_equal(part["upper"], lab[high])
        assert list(vc.BAND_LABELS) == ["90% band", "50% band"]
        # the treatment period as recorded, the reference range and the forecast time, every one named in the legend
        exposure = record.treatments[0]
        assert data["periods"][["start", "series"]].values.tolist() == [[exposure.start, f"{exposure.treatment} (treatment)"]]
        assert (data["reference"][["low", "high"]].to_numpy() == forecast.config.variable(name).reference_range).all()
        assert data["forecast_time"]["time"].tolist() == [forecast.until]
        domain = _layers(spec, "line")[0]["encoding"]["color"]["scale"]["domain"]
        assert domain == ["median forecast", "observed", "reference range", "forecast time", f"{exposure.treatment} (treatment)"]
        (area,) = _layers(spec, "area")
        assert area["encoding"]["opacity"]["scale"]["domain"] == ["90% band", "50% band"]
        hover = _layers(spec, "circle")[0]["encoding"]["tooltip"]
        assert [t["field"] for t in hover] == ["series", "time", "median", "q05", "q25", "q75", "q95"]
        assert all(t["format"] == ".3~r" for t in hover[2:])  # three significant digits, never an exponent
    survival = vc.forecast_survival_chart(forecast)
    line = survival["datasets"]["line"]
    expected = forecast.survival_summary()
    expected = expected[expected["time"] >= forecast.until - 1e-9]
    np.testing.assert_array_equal(line["survival"], expected["survival"])
    assert set(line["series"]) == {f"free of {kind}" for kind in forecast.config.event_kinds}


def test_identical_plans_are_both_drawn_each_in_its_own_colour_and_dash(identical_plans):

    result, record = identical_plans
    lab_specs = vc.whatif_lab_charts(result, record, ["bilirubin"])
    survival_specs = vc.whatif_survival_charts(result)
    assert [s["title"] for s in survival_specs] == [f"free of {kind}" for kind in result.forecasts["plan A"].config.event_kinds]
    for spec in [*lab_specs, *survival_specs]:
        line = spec["datasets"]["line"]
        a, b = (
            line[line["series"] == name].drop(columns=["series", "band"], errors="ignore").to_numpy(float)
            for name in ("plan A", "plan B")
        )
        np.testing.assert_array_equal(a, b)  # the same forecast: drawn alike, one line would hide the other
        (drawn,) = _layers(spec, "line")
        colour, dash = drawn["encoding"]["color"]["scale"], drawn["encoding"]["strokeDash"]["scale"]
        assert colour["domain"][:2] == dash["domain"][:2] == ["plan A", "plan B"]
        assert colour["domain"] == dash["domain"]  # one domain: Vega-Lite merges them into one legend
        assert colour["range"][0] != colour["range"][1] and dash["range"][0] != dash["range"][1]
        assert line["time"].min() >= result.at - 1e-9  # plans from the decision time
    history = lab_specs[0]["datasets"]["history"]
    assert len(history) == sum(o.variable == "bilirubin" for o in record.observations)  # the history beside the plans
    periods = lab_specs[0]["datasets"]["periods"]
    # the treatment as recorded up to the decision time, then as each plan gives it
    recorded = periods[periods["label"].str.endswith("(as recorded)")]
    assert len(recorded) and (recorded["stop"] <= result.at + 1e-9).all()
    for name in ("plan A", "plan B"):
        planned = periods[periods["label"].str.endswith(f"(plan {name})")]
        assert len(planned) == len(result.plans[0].exposures) and (planned["start"] >= result.at - 1e-9).all()


def test_band_captions_say_whether_the_model_own_uncertainty_is_included():

    assert "measurement noise" in vc.band_caption(1) and "not the model's own uncertainty" in vc.band_caption(1)
    assert "5 ensemble members" in vc.band_caption(5) and "not the model's" not in vc.band_caption(5)
    assert "single trained model" in vc.survival_caption(1) and "5 ensemble members" in vc.survival_caption(5)


def _visible_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def _assert_tidy(fig, unit: str) -> None:
    """No empty panel, the time unit under every one, linear axes with plain tick labels."""
    fig.canvas.draw()
    for ax in _visible_axes(fig):
        assert ax.lines or ax.collections or ax.patches, f"empty panel {ax.get_title()!r}"
        assert ax.get_xlabel() == f"{unit} since index", ax.get_title()
        assert ax.get_yscale() == "linear"
        for axis in (ax.xaxis, ax.yaxis):
            assert axis.get_offset_text().get_text() == "", ax.get_title()
            ticks = [t.get_text() for t in axis.get_ticklabels()]
            assert not [t for t in ticks if re.search(r"e[+-]|10\^|×|\$", t)], (ax.get_title(), ticks)


def _legend_labels(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_static_forecast_figure_has_no_empty_panel_and_names_every_element(treated_forecast):
    import matplotlib.pyplot as plt

    from vpatient.plots import plot_forecast

    forecast, record = treated_forecast
    fig = plot_forecast(forecast, record)
    try:
        # seven labs and the survival panel in a 3 x 3 grid: the ninth is hidden, not an empty 0-1 frame
        assert len(fig.axes) == 9 and len(_visible_axes(fig)) == 8
        _assert_tidy(fig, "years")
        labels = _legend_labels(fig)
        for name in ("90% band", "50% band", "median forecast", "observed", "reference range", "forecast time"):
            assert name in labels
        assert "free of death" in labels and "free of death: 90% band" in labels
    finally:
        plt.close("all")


def test_static_whatif_and_timeline_figures_are_tidy_and_tell_identical_plans_apart(identical_plans, cohort):
    import matplotlib.pyplot as plt

    from vpatient.plots import plot_timeline, plot_whatif

    result, record = identical_plans
    try:
        fig = plot_whatif(result, record=record)
        _assert_tidy(fig, "years")
        labels = _legend_labels(fig)
        for name in ("plan A", "plan B", "plan A: 90% band", "plan B: 90% band", "observed", "reference range", "decision time"):
            assert name in labels
        styles = {line.get_label(): line.get_linestyle() for ax in fig.axes for line in ax.lines}
        assert styles["plan A"] != styles["plan B"]
        fig = plot_timeline(record, cohort.config)
        _assert_tidy(fig, "years")
        assert {"measured", "reference range"} <= set(_legend_labels(fig))
    finally:
        plt.close("all")


# --------------------------------------------------------------------------- the app (AppTest)


@pytest.mark.slow
def test_app_starts(model_dir, monkeypatch):
    at = app(model_dir, monkeypatch)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.title[0].value.startswith("Virtual patient")
    assert [t.label for t in at.tabs] == ["Timeline", "Forecast", "What-if", "Next test", "Model card", "Cohort & trial"]


@pytest.mark.slow
def test_selecting_a_patient_shows_its_forecast(model_dir, model, cohort, monkeypatch):
    at = app(model_dir, monkeypatch)
    at.sidebar.text_input(key="patient_query").set_value(PATIENT).run()
    at.selectbox(key="patient").set_value(PATIENT).run()
    show(at, "Forecast")
    assert not at.exception, at.exception
    assert any(f"Forecast of subject {PATIENT}" in h.value for h in at.subheader)
    record = cohort.subject(PATIENT)
    last = round(max(record.visit_times()), 2)
    shown = table_with(at, "median")
    expected = vt.forecast_table(model.forecast(record, last, 5.0, 200, 0))
    assert list(shown["variable"]) == list(expected["variable"])
    np.testing.assert_allclose(shown["median"].to_numpy(float), expected["median"].to_numpy(float), rtol=1e-5)


@pytest.mark.slow
def test_editing_a_plan_moves_the_effects_as_the_model_does(model_dir, model, cohort, monkeypatch):
    at = app(model_dir, monkeypatch)
    at.selectbox(key="patient").set_value(PATIENT).run()
    show(at, "What-if")
    before = table_with(at, "difference")
    # it says in plain words what the intervals include (a single model: not its own uncertainty)
    assert any("This is a single trained model" in c.value for c in at.caption)
    at.number_input(key="plan0_dose").set_value(0.5).run()
    assert not at.exception, at.exception
    after = table_with(at, "difference")
    record = cohort.subject(PATIENT)
    at_time = round(max(record.visit_times()), 2)

    def library(dose: float) -> pd.DataFrame:
        plans = [
            vs.PlanSpec("treat", "dose", "d_penicillamine", 0.0, dose).to_plan(record, at_time, model.config),
            vs.PlanSpec("no treatment", "stop", "d_penicillamine").to_plan(record, at_time, model.config),
        ]
        return vt.effect_table(Simulator(model).whatif(record, plans, 5.0, 200, 0, at_time))

    lib_before, lib_after = library(1.0), library(0.5)
    for shown, lib in ((before, lib_before), (after, lib_after)):
        assert list(shown["quantity"]) == list(lib["quantity"])
        np.testing.assert_allclose(shown["difference"].to_numpy(float), lib["difference"].to_numpy(float), rtol=1e-4, atol=1e-9)
    change = after["difference"].to_numpy(float) - before["difference"].to_numpy(float)
    lib_change = lib_after["difference"].to_numpy(float) - lib_before["difference"].to_numpy(float)
    assert np.abs(change).max() > 0, "editing the plan left the effect table unchanged"
    moved = np.abs(lib_change) > 1e-9
    assert (np.sign(change[moved]) == np.sign(lib_change[moved])).all()


def _chart_titles(panel) -> list[str]:
    return [json.loads(chart.proto.spec)["title"] for chart in panel.get("vega_lite_chart")]


@pytest.mark.slow
def test_forecast_and_whatif_tabs_draw_interactive_charts_of_the_labs_picked(model_dir, model, monkeypatch):

    at = show(app(model_dir, monkeypatch), "Forecast")
    assert not at.exception, at.exception
    config = model.config
    titles = [f"{name} ({config.variable(name).unit})" for name in vc.default_labs(config)]
    forecast_tab = at.tabs[1]
    assert _chart_titles(forecast_tab) == [*titles, "survival from the forecast time"]
    captions = [c.value for c in forecast_tab.caption]
    assert vc.band_caption(model.n_members) in captions and vc.survival_caption(model.n_members) in captions
    assert not forecast_tab.image  # the static figures stay for the reports
    whatif_tab = show(at, "What-if").tabs[2]
    assert _chart_titles(whatif_tab) == [*(f"free of {kind}" for kind in config.event_kinds), *titles]
    assert not whatif_tab.image
    assert vc.band_caption(model.n_members) in [c.value for c in whatif_tab.caption]
    # the plans are drawn in their own colours and dashes, the data sent beside the spec (as Arrow)
    chart = whatif_tab.get("vega_lite_chart")[0]
    line = next(layer for layer in json.loads(chart.proto.spec)["layer"] if layer["mark"]["type"] == "line")
    assert line["encoding"]["strokeDash"]["scale"]["domain"][:2] == ["treat", "no treatment"]
    assert {d.name for d in chart.proto.datasets} == {"line", "forecast_time"}

    show(at, "Forecast").multiselect(key="forecast_labs").set_value(["platelets", "albumin"]).run()
    assert not at.exception, at.exception
    picked = [f"{name} ({config.variable(name).unit})" for name in ("platelets", "albumin")]
    assert _chart_titles(at.tabs[1]) == [*picked, "survival from the forecast time"]
    assert _chart_titles(show(at, "What-if").tabs[2])[-len(titles) :] == titles  # the what-if tab keeps its own pick
    at.multiselect(key="whatif_labs").set_value([]).run()
    assert _chart_titles(at.tabs[2]) == [f"free of {kind}" for kind in config.event_kinds]


@pytest.mark.slow
def test_a_view_summarises_a_forecast_once_and_a_plan_edit_only_what_its_charts_draw(model_dir, model, cohort, monkeypatch):
    """What keeps a rerun fast (`vpatient benchmark dashboard-speed` times it): the predictive quantiles, the slow part of a
    summary, are computed once per forecast shown, and after a plan edit only from the decision time, for the labs charted."""
    st = pytest.importorskip("streamlit")
    st.cache_resource.clear()  # a fresh server: nothing computed by the tests before
    shapes = []
    real = vp.mixture_quantiles
    monkeypatch.setattr(vp, "mixture_quantiles", lambda means, *rest: shapes.append(means.shape) or real(means, *rest))
    at = show(app(model_dir, monkeypatch), "Forecast")
    assert not at.exception, at.exception
    assert len(shapes) == 1, shapes  # the headline numbers, the charts and the table share one summary
    show(at, "What-if")
    shapes.clear()
    at.number_input(key="plan0_dose").set_value(0.5).run()
    assert not at.exception, at.exception
    record = cohort.subject(at.selectbox(key="patient").value)
    times = whatif_of(model, record, round(max(record.visit_times()), 2), dose=0.5).forecasts["treat"].times
    from_decision = int((times >= round(max(record.visit_times()), 2) - 1e-9).sum())
    assert from_decision < len(times)  # the history's grid times are left out
    assert [shape[1:] for shape in shapes] == [(from_decision, len(vc.default_labs(model.config)))] * 2  # one per plan


@pytest.mark.slow
def test_invalid_plan_shows_problems_and_app_keeps_working(model_dir, monkeypatch):
    at = show(app(model_dir, monkeypatch), "What-if")
    at.number_input(key="plan0_dose").set_value(3.0).run()
    assert not at.exception, at.exception
    assert any("cannot be simulated" in e.value for e in at.error)
    assert "dose" in " ".join(table_with(at, "field")["field"])
    at.number_input(key="plan0_dose").set_value(0.5).run()
    assert not at.error
    table_with(at, "difference")


@pytest.mark.slow
def test_next_test_table_ranks_the_config_tests_by_eig_per_cost(model_dir, model, cohort, monkeypatch):
    at = show(app(model_dir, monkeypatch), "Next test")
    assert not at.exception, at.exception
    table = table_with(at, "gain per cost")
    assert sorted(table["test"]) == sorted(t.name for t in cohort.config.tests)
    # the widgets' target is a Target object, ranked as the library ranks it
    record = cohort.subject(at.selectbox(key="patient").value)
    # for the next visit, half the typical visit gap after the decision time (the patient report's default)
    visit = round(max(record.visit_times()), 2) + next_visit_gap(model)
    assert at.number_input(key="next_visit_after").value == pytest.approx(next_visit_gap(model))
    expected = vt.recommendation_table(recommend(model, record, Target.risk("death", 5.0), visit, 256, 0))
    assert list(table["test"]) == list(expected["test"])
    np.testing.assert_allclose(
        table[vt.GAIN_COLUMN].to_numpy(float), expected[vt.GAIN_COLUMN].to_numpy(float), rtol=1e-5, atol=1e-9
    )
    open_rows = table[~table["done at t"].astype(bool)]
    ratios = open_rows["gain per cost"].to_numpy(float)
    assert (np.diff(ratios) <= 1e-12).all(), ratios
    chosen = table["test"].iloc[-1]
    at.selectbox(key="next_test").set_value(chosen).run()
    assert any(chosen in i.value for i in at.info)


@pytest.mark.slow
def test_next_test_panel_ranks_for_a_forecast_and_for_the_latent_state(model_dir, model, cohort, monkeypatch):
    from vpatient.plots import COST_CURVE_CAPTION

    at = show(app(model_dir, monkeypatch), "Next test")
    record = cohort.subject(at.selectbox(key="patient").value)
    visit = round(max(record.visit_times()), 2) + next_visit_gap(model)
    panel = at.tabs[3]
    assert len(panel.image) == 1 and any(c.value == COST_CURVE_CAPTION for c in panel.caption)

    at.selectbox(key="target_kind").set_value("forecast of a variable").run()
    assert not at.exception, at.exception
    variable = at.selectbox(key="target_variable").value
    assert variable == model.config.names(VariableKind.CONTINUOUS)[0]
    assert at.number_input(key="target_ahead").value == 2.0  # two years: PBC's time unit is years
    expected = vt.recommendation_table(recommend(model, record, Target.forecast(variable, 2.0), visit, 256, 0))
    table = table_with(at, "gain per cost")
    assert list(table["test"]) == list(expected["test"])
    np.testing.assert_allclose(
        table[vt.GAIN_COLUMN].to_numpy(float), expected[vt.GAIN_COLUMN].to_numpy(float), rtol=1e-5, atol=1e-9
    )
    assert not table["done at t"].astype(bool).any() and (table[vt.GAIN_COLUMN] > 0).any()  # at the next visit all is open
    assert len(at.tabs[3].image) == 1
    chosen = table["test"].iloc[0]
    at.selectbox(key="next_test").set_value(chosen).run()
    assert any(chosen in i.value and f"{variable} in 2 years" in i.value for i in at.info)

    at.selectbox(key="target_kind").set_value("latent disease state").run()
    assert not at.exception, at.exception
    assert not at.error
    assert sorted(table_with(at, "gain per cost")["test"]) == sorted(t.name for t in cohort.config.tests)
    assert len(at.tabs[3].image) == 1 and any(c.value == COST_CURVE_CAPTION for c in at.tabs[3].caption)
    assert any("the latent disease state" in i.value for i in at.info)


@pytest.mark.slow
def test_invalid_upload_shows_the_problems_and_the_app_still_works(model_dir, cohort, monkeypatch):
    at = app(model_dir, monkeypatch)
    bad = cohort.subject(PATIENT).model_dump(mode="json")
    bad["observations"][0]["value"] = -4.0  # bilirubin is log-transformed: must be > 0
    bad["subject_id"] = "bad-1"
    at.sidebar.file_uploader(key="upload").upload("bad.json", json.dumps(bad).encode(), "application/json").run()
    assert not at.exception, at.exception
    assert any("not a valid record" in e.value for e in at.sidebar.error)
    problems = table_with(at, "field")
    assert (problems["subject"] == "bad-1").any() and problems["field"].str.contains("observations").any()
    # The rest of the app works on the dataset's patients.
    at.selectbox(key="patient").set_value(PATIENT).run()
    show(at, "Forecast")
    assert not at.exception
    assert any(f"Forecast of subject {PATIENT}" in h.value for h in at.subheader)
    show(at, "What-if")
    table_with(at, "difference")
    # A valid upload becomes the patient shown.
    good = cohort.subject(PATIENT).model_dump(mode="json") | {"subject_id": "uploaded-7"}
    at.sidebar.file_uploader(key="upload").upload("good.json", json.dumps(good).encode(), "application/json").run()
    show(at, "Forecast")
    assert not at.exception, at.exception
    assert any("Forecast of subject uploaded-7" in h.value for h in at.subheader)


@pytest.mark.slow
def test_model_card_shows_the_precomputed_trial_adjustment(model_dir, monkeypatch, tmp_path, simulated_trial_adjustment):
    import shutil

    from vpatient.report.procova import ADJUSTMENT_FILE, percent, precision_sentence
    from vpatient.report.render import num

    own = tmp_path / "model"  # a copy: the adjustment file must not leak into the other tests' model
    shutil.copytree(model_dir, own)
    at = show(app(own, monkeypatch), "Model card")
    assert not at.exception, at.exception
    # no result beside the model: a one-line hint with the command that writes it (no server path on the page)
    hint = [c.value for c in at.caption if ADJUSTMENT_FILE in c.value]
    assert hint and "vpatient trial adjust --data pbc2 --out MODEL_DIR" in hint[0]

    (own / ADJUSTMENT_FILE).write_text('{"data": "pbc2"}')
    at.run()
    assert not at.exception, at.exception
    assert any(f"{ADJUSTMENT_FILE} beside this model is not a valid trial adjustment result" in w.value for w in at.warning)
    assert not [text for text in _shown_text(at) if str(own) in text]

    result = simulated_trial_adjustment(with_lab=False)
    result.write(own)
    at.run()
    assert not at.exception, at.exception
    assert not at.warning
    assert any("Covariate adjustment of the real trial" in h.value for h in at.subheader)
    shown = table_with(at, "SE change")
    se_change = percent(-result.survival.se_reduction, signed=True)
    assert shown["SE change"].tolist() == [se_change]
    assert shown["sample-size saving"].tolist() == [percent(result.survival.sample_size_saving, signed=True)]
    assert shown["with the score"].iloc[0].startswith(f"{num(result.survival.adjusted.hazard_ratio)} (95% CI")
    words = " ".join(m.value for m in at.markdown)
    assert precision_sentence(result.survival) in words and se_change in words
    assert "cross-fitted" in words and "baseline data only" in words
    assert not [c for c in at.caption if ADJUSTMENT_FILE in c.value]  # the hint is gone


# --------------------------------------------------------------------------- hardening (issue 17)

HOSTILE_ID = "<script>alert(1)</script>"
HOSTILE_PLAN = "<img src=x onerror=alert(1)>"


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("garbage.parquet", b"garbage\x00\x01" * 10, "garbage.parquet: not a readable parquet file"),
        ("empty.parquet", b"", "empty.parquet: not a readable parquet file"),
        ("latin1.csv", "subject_id,time,code\n1,0,caf\xe9\n".encode("latin-1"), "latin1.csv: CSV file is not UTF-8"),
        ("deep.json", b"[" * 100_000, "deep.json: patient record file nests lists or objects too deeply"),
        ("utf16.json", "{}".encode("utf-16"), "utf16.json: patient record file is UTF-16"),
        ("none.json", b"[]", "none.json: holds 0 records"),
    ],
)
def test_a_garbage_upload_is_refused_with_the_parsers_message_naming_the_file(cohort, name, data, message):
    with pytest.raises(vs.UploadError) as info:
        vs.parse_upload(name, data, cohort.config)
    text = str(info.value)
    assert text.startswith(message), text
    assert "vpatient-upload-" not in text and "Arrow" not in text  # neither the scratch copy nor pyarrow's raw text


def test_serving_beyond_localhost_needs_a_token_unless_insecure(tmp_path, monkeypatch):
    monkeypatch.delenv(vs.TOKEN_ENV, raising=False)
    for local in ("localhost", "127.0.0.1", "::1"):
        assert vs.access_token(local, None, insecure=False) is None
    with pytest.raises(VPatientError, match=r"--address 0\.0\.0\.0 serves the dashboard beyond this machine"):
        vs.access_token("0.0.0.0", None, insecure=False)
    assert vs.access_token("0.0.0.0", None, insecure=True) is None
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-0123456789\n")
    assert vs.access_token("0.0.0.0", token_file, insecure=False) == "s3cret-token-0123456789"
    token_file.write_text("short\n")
    with pytest.raises(VPatientError, match="5 characters; use at least 16"):
        vs.access_token("0.0.0.0", token_file, insecure=False)
    monkeypatch.setenv(vs.TOKEN_ENV, "from-the-environment-42")
    assert vs.access_token("example.org", None, insecure=False) == "from-the-environment-42"
    assert vs.token_matches("from-the-environment-42 ", "from-the-environment-42")
    assert not vs.token_matches("from-the-environment-4", "from-the-environment-42") and not vs.token_matches(None, "x")


def test_the_dashboard_command_refuses_an_open_address_before_loading_anything(tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    from typer.testing import CliRunner

    from vpatient.cli import app as cli_app

    monkeypatch.delenv(vs.TOKEN_ENV, raising=False)
    result = CliRunner().invoke(cli_app, ["dashboard", "--host", "0.0.0.0", "--model", str(tmp_path / "no-such-model")])
    assert result.exit_code != 0
    assert "--token-file" in str(result.exception) and "no-such-model" not in str(result.exception)


def test_with_a_token_the_app_shows_nothing_until_it_is_given(tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(vs.TOKEN_ENV, "the-right-token-0123")
    monkeypatch.setenv(vs.MODEL_ENV, str(tmp_path / "never-loaded"))  # the gate comes before the model is read
    at = AppTest.from_file(str(APP), default_timeout=30).run()
    assert not at.exception, at.exception
    assert not at.title and not at.error
    at.text_input(key="access_token").set_value("a-wrong-token-01234").run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == ["Wrong access token."] and not at.title


def _shown_text(at) -> list[str]:
    """Every piece of markdown-rendered text on the page (main area and sidebar)."""
    kinds = ("title", "header", "subheader", "markdown", "caption", "error", "warning", "success", "info")
    return [e.value for kind in kinds for e in getattr(at, kind)]


@pytest.mark.slow
def test_hostile_ids_and_garbage_uploads_reach_the_page_only_as_plain_text(model_dir, cohort, monkeypatch, caplog):
    caplog.set_level("DEBUG")
    at = app(model_dir, monkeypatch)
    at.sidebar.file_uploader(key="upload").upload("garbage.parquet", b"garbage\x00" * 10, "application/octet-stream").run()
    assert not at.exception, at.exception
    assert [e.value for e in at.sidebar.error] == [
        "garbage.parquet: not a readable parquet file (Parquet magic bytes not found in footer. Either the file is "
        "corrupted or this is not a parquet file.)"
    ]
    hostile = cohort.subject(PATIENT).model_dump(mode="json") | {"subject_id": HOSTILE_ID}
    at.sidebar.file_uploader(key="upload").upload("hostile.json", json.dumps(hostile).encode(), "application/json").run()
    shown = _shown_text(at)  # the timeline, shown first
    show(at, "What-if").text_input(key="plan0_name").set_value(HOSTILE_PLAN).run()
    assert not at.exception, at.exception
    shown += _shown_text(at)
    assert r"Record of subject \<script\>alert(1)\</script\>" in shown
    assert r"Effects against plan '\<img src=x onerror=alert(1)\>' (90% intervals)" in shown
    assert not [text for text in shown if re.search(r"(?<!\\)<(script|img)", text)]  # never as markup
    assert not any(m.proto.allow_html for m in at.markdown)
    assert HOSTILE_ID not in caplog.text and "hostile" not in caplog.text  # no patient data in the logs


# --------------------------------------------------------------------------- headline answers (issue 18)


def whatif_of(model, record, at: float, dose: float = 1.0):
    """The app's default plans (treat at ``dose`` from the decision time, or stop), rolled out by the library."""
    plans = [
        vs.PlanSpec("treat", "dose", model.config.treatments[0], 0.0, dose).to_plan(record, at, model.config),
        vs.PlanSpec("no treatment", "stop", model.config.treatments[0]).to_plan(record, at, model.config),
    ]
    return Simulator(model).whatif(record, plans, model.default_horizon, 200, 0, at)


def test_forecast_headlines_are_the_library_s_numbers_at_the_horizon(model, cohort):
    record = cohort.subject(PATIENT)
    forecast = model.forecast(record, max(record.visit_times()), 5.0, 100, 0)
    labs = model.config.names(VariableKind.CONTINUOUS)[:2]
    shown = vh.forecast_headlines(forecast, labs)
    assert [h.label for h in shown] == [f"{v} in 5 years" for v in labs] + [
        f"free of {e} in 5 years" for e in model.config.event_kinds
    ]
    end = forecast.times.max()
    summary = forecast.summary()
    for h, lab in zip(shown, labs, strict=False):
        row = summary[(summary["variable"] == lab) & np.isclose(summary["time"], end)].iloc[0]
        unit = model.config.variable(lab).unit
        assert (h.value, h.delta) == (
            with_unit(number(row["median"]), unit),
            f"90% range {with_unit(span(row['q05'], row['q95']), unit)}",
        )
    survival = forecast.survival_summary()
    for h, event in zip(shown[len(labs) :], model.config.event_kinds, strict=True):
        row = survival[(survival["event"] == event) & np.isclose(survival["time"], end)].iloc[0]
        assert h.value == percent(row["survival"]) and h.value.endswith("%")
    assert vh.forecast_headlines(forecast, labs=[labs[-1]])[0].label == f"{labs[-1]} in 5 years"


def test_whatif_headlines_give_survival_per_plan_and_differences_worded_by_their_interval(model, cohort):
    record = cohort.subject(PATIENT)
    result = whatif_of(model, record, max(record.visit_times()))
    shown = vh.whatif_headlines(result)
    assert shown.horizons == ["1 year", "2 years", "5 years"]  # PBC's unit is years: the 1-, 2- and 5-year marks
    survival, effects = result.survival(), result.effects()
    for event, rows in shown.by_event.items():
        for h, row in zip(result.effect_horizons, rows, strict=True):
            reference, other = row
            s = survival[
                (survival["plan"] == "treat") & (survival["event"] == event) & np.isclose(survival["time"], result.at + h)
            ]
            assert reference.value.startswith(percent(s["survival"].iloc[0])) and reference.delta is None
            e = effects[(effects["quantity"] == f"survival:{event}") & np.isclose(effects["horizon"], h)].iloc[0]
            assert other.delta.startswith(f"{vh.percentage_points(e['difference'])} vs treat")
            assert other.tone == ("off" if e["lower"] <= 0 <= e["upper"] else "normal")
        assert len(shown.verdicts[event]) == 1
    # the full table: chances in percentage points (the library's probabilities times 100), times in the data's unit
    table = vt.effect_table(result)
    chances = effects[effects["kind"] == "probability"]
    in_table = table[table["unit"] == "percentage points"]
    np.testing.assert_allclose(in_table["difference"].to_numpy(float), 100 * chances["difference"].to_numpy(float))
    assert list(in_table["quantity"]) == [f"chance free of {q.removeprefix('survival:')}" for q in chances["quantity"]]
    # the verdict follows the interval: spanning zero, it says the model cannot tell the plans apart
    assert "no difference the model can tell apart" in vh.verdict("b", "a", "death", "5 years", 0.01, -0.02, 0.04)
    assert "higher chance than a" in vh.verdict("b", "a", "death", "5 years", 0.03, 0.01, 0.05)
    assert "lower chance than a" in vh.verdict("b", "a", "death", "5 years", -0.03, -0.05, -0.01)
    assert "(-3 pp, 90% interval -5 to -1 pp)" in vh.verdict("b", "a", "death", "5 years", -0.03, -0.05, -0.01)


def test_horizons_read_in_years_from_a_year_on():
    from vpatient.schemas import TimeUnit

    assert vh.horizon_words(5.0, TimeUnit.YEARS) == "5 years" and vh.horizon_words(1.0, TimeUnit.YEARS) == "1 year"
    assert vh.horizon_words(0.5, TimeUnit.YEARS) == "0.5 years"
    assert vh.horizon_words(730.5, TimeUnit.DAYS) == "2 years" and vh.horizon_words(30.0, TimeUnit.DAYS) == "30 days"
    assert vh.horizon_words(24.0, TimeUnit.MONTHS) == "2 years"


def test_next_test_headline_names_the_best_test_and_how_far_its_result_could_move_the_risk(model, cohort):
    record = cohort.subject(PATIENT)
    rec = recommend(model, record, Target.risk("death", 5.0), max(record.visit_times()) + 0.5, 64, 0)
    shown = vh.next_test_headlines(rec, model.config.time_unit)
    informative = [g for g in rec.gains if not g.done and not vt.within_mc_error(g)]
    assert shown.metrics[0].label == "risk of death within 5 years, now" and shown.metrics[0].value == percent(rec.risk_now)
    if informative:
        assert shown.sentence.startswith(
            f"{informative[0].test} is the most informative test per cost for this patient's risk of death"
        )
    for g, metric in zip(informative, shown.metrics[1:], strict=True):
        lower, upper = g.updated_risk
        # the likelihood update keeps the expected posterior at the prior: the risk now lies inside the spread of the
        # updated risks (the slack is the leave-one-out estimate's: one pool draw in 64 left out of each result's weights)
        assert lower - 0.01 <= rec.risk_now <= upper + 0.01
        assert metric.value == vh.risk_range(lower, upper)
    # a test within Monte Carlo error says so, not a signed number
    unclear = vt.within_mc_error(type(rec.gains[0])("x", 1.0, -1e-4, 2e-4, False))
    assert unclear and not vt.within_mc_error(type(rec.gains[0])("x", 1.0, 1e-2, 2e-4, False))
    latent = vh.next_test_headlines(
        recommend(model, record, Target.latent(), max(record.visit_times()) + 0.5, 32, 0), model.config.time_unit
    )
    assert all(m.value.endswith(" nats") for m in latent.metrics)


def displayed_cells(table) -> list[str]:
    """What a table shows: the Styler's display values where it is styled, else the data."""
    from streamlit import dataframe_util

    styler = table.proto.arrow_data.styler
    frame = dataframe_util.convert_arrow_bytes_to_pandas_df(styler.display_values) if styler.display_values else table.value
    return [str(v) for v in frame.to_numpy().ravel()]


@pytest.mark.slow
def test_each_tab_opens_with_the_library_s_headline_numbers_in_plain_notation(model_dir, model, cohort, monkeypatch):
    at = app(model_dir, monkeypatch)
    assert not at.exception, at.exception
    record = cohort.subject(at.selectbox(key="patient").value)
    last = round(max(record.visit_times()), 2)
    horizon = model.default_horizon

    def shown(tab) -> list[tuple[str, str, str]]:
        return [(m.label, m.value, m.delta) for m in tab.metric]

    def expected(headlines) -> list[tuple[str, str, str]]:
        return [(h.label, h.value, h.delta or "") for h in headlines]

    texts = []  # what a clinician reads in each view: headlines and the cells of its tables

    def read(tab) -> None:
        texts.extend(t for m in tab.metric for t in (m.label, m.value, m.delta))
        texts.extend(cell for table in tab.table for cell in displayed_cells(table))

    forecast = model.forecast(record, last, horizon, 200, 0)
    show(at, "Forecast")
    assert shown(at.tabs[1]) == expected(vh.forecast_headlines(forecast, vc.default_labs(model.config)))
    read(at.tabs[1])
    show(at, "What-if")
    whatif = vh.whatif_headlines(whatif_of(model, record, last))
    assert shown(at.tabs[2]) == expected([h for rows in whatif.by_event.values() for row in rows for h in row])
    words = " ".join(m.value for m in at.tabs[2].markdown)
    assert all(vt.plain_markdown(v) in words for verdicts in whatif.verdicts.values() for v in verdicts)
    read(at.tabs[2])
    assert at.tabs[2].get("download_button"), "the what-if's effects are offered as CSV"
    show(at, "Next test")
    rec = recommend(model, record, Target.risk("death", 5.0), last + next_visit_gap(model), 256, 0)
    nexttest = vh.next_test_headlines(rec, model.config.time_unit)
    assert shown(at.tabs[3]) == expected(nexttest.metrics)
    assert any(m.value == vt.plain_markdown(nexttest.sentence) for m in at.tabs[3].markdown)
    read(at.tabs[3])
    # nothing a clinician reads, in the headlines or the tables, is in scientific notation
    assert texts and not [t for t in texts if SCIENTIFIC.search(t)]
    # a headline lab chosen by the user
    show(at, "Forecast")
    lab = model.config.names(VariableKind.CONTINUOUS)[-1]
    at.multiselect(key="forecast_labs").set_value([lab]).run()
    assert shown(at.tabs[1])[0][0] == f"{lab} in 5 years"


def test_the_dose_box_names_its_unit_and_allowed_range(cohort):
    config = cohort.config
    assert vt.dose_hint(config, "d_penicillamine") == " (relative dose, 0-1 allowed)"  # PBC states no dose unit
    in_mg = config.model_copy(
        update={
            "variables": [
                v.model_copy(update={"unit": "mg", "plausible_range": (0.0, 2500.0)}) if v.name == "d_penicillamine" else v
                for v in config.variables
            ]
        }
    )
    assert vt.dose_hint(in_mg, "d_penicillamine") == " (mg, 0-2,500 allowed)" and vt.dose_hint(in_mg, None) == ""


# --------------------------------------------------------------------------- only what is shown; nothing of the server (issue 18)


def _page_text(at) -> str:
    """Everything the page shows as text: markdown-rendered elements, tables' cells, widgets' labels and values."""
    tables = [t.value.to_string() for t in [*at.table, *at.sidebar.table]]
    widgets = [
        f"{w.label} {w.value}"
        for kind in ("selectbox", "number_input", "text_input", "slider", "select_slider")
        for w in getattr(at, kind)
    ]
    return "\n".join([*_shown_text(at), *tables, *widgets, *(t.label for t in at.tabs)])


def _app_with_its_session(model_dir: Path, monkeypatch, tmp_path: Path):
    """The app on a copy of ``model_dir`` (its own server-wide session, not one cached by another test) and that session."""
    own = shutil.copytree(model_dir, tmp_path / "served-model")
    loaded: list[vs.DashboardSession] = []
    load = vs.DashboardSession.load

    def load_and_keep(directory):
        loaded.append(load(directory))
        return loaded[-1]

    monkeypatch.setattr(vs.DashboardSession, "load", load_and_keep)
    at = app(own, monkeypatch)
    assert not at.exception, at.exception
    assert len(loaded) == 1
    return at, loaded[0], own


@pytest.mark.slow
def test_a_rerun_after_a_plan_edit_computes_only_the_view_shown(model_dir, monkeypatch, tmp_path):
    at, session, _ = _app_with_its_session(model_dir, monkeypatch, tmp_path)
    assert set(session.computed) == {"timeline figure"}  # the first view, the timeline: no forecast, what-if or ranking
    at.select_slider(key="n_samples").set_value(50).run()  # fewer sample paths: the same work to count, done faster
    assert set(session.computed) == {"timeline figure"}
    show(at, "What-if")
    assert session.computed["whatif"] == 1
    session.computed.clear()
    at.number_input(key="plan0_dose").set_value(0.5).run()
    assert not at.exception, at.exception
    assert session.computed["whatif"] == 1 and set(session.computed) <= {"whatif", "charts"}, session.computed
    # the edited plan is kept while another view is open, and served from the cache when its view returns
    show(at, "Forecast")
    assert set(session.computed) - {"whatif", "charts"} <= {"forecast", "charts"}
    session.computed.clear()
    show(at, "What-if")
    assert at.number_input(key="plan0_dose").value == 0.5 and not session.computed
    # switching patients computes the open view for the new patient, and nothing else
    at.selectbox(key="patient").set_value("32").run()
    assert not at.exception, at.exception
    assert session.computed["whatif"] == 1 and set(session.computed) <= {"whatif", "charts"}, session.computed


@pytest.mark.slow
def test_no_view_shows_a_path_of_the_server(model_dir, monkeypatch, tmp_path):
    from vpatient.version import __version__

    at, _, served = _app_with_its_session(model_dir, monkeypatch, tmp_path)
    caption = at.caption[0].value
    assert "pbc2" in caption and f"trained with vpatient {__version__}" in caption and "a single model" in caption
    for view in vv.VIEWS:
        text = _page_text(show(at, view)).replace("\\", "")  # markdown escapes dropped: \_ reads _ on the page
        assert not at.exception, (view, at.exception)
        for path in {served, served.resolve(), tmp_path}:
            assert str(path) not in text, f"{view} shows the server path {path}"


# --------------------------------------------------------------------------- cohort and trial view (issue 18)

TRIAL_N = 60  # two chunks of the dashboard's trial (vs.TRIAL_CHUNK_SIZE = 50): a second on the tiny model


def trial_arms_of(config) -> tuple[vs.PlanSpec, ...]:
    """The trial view's default arms: the treatment at dose 1 from enrolment against none."""
    treatment = config.treatments[0]
    return (vs.PlanSpec("treat", "dose", treatment, 0.0, 1.0), vs.PlanSpec("no treatment", "stop", treatment))


def library_trial(model, cohort, arms: tuple[vs.PlanSpec, ...], n: int, years: float = 5.0, seed: int = 0):
    """The library's own trial of ``arms``: a Simulator with the population fitted on the training data, as the CLI does."""
    simulator = Simulator(model)
    simulator.fit_population(cohort.records, save=False)
    plans = {spec.name: spec.to_plan(None, 0.0, model.config) for spec in arms}
    return simulator.trial(plans, n=n, seed=seed, years=years, chunk_size=vs.TRIAL_CHUNK_SIZE, progress=False)


@pytest.fixture(scope="module")
def trial_session(model_dir) -> vs.DashboardSession:
    return vs.DashboardSession.load(model_dir)


def test_a_trial_runs_in_chunks_reports_its_progress_is_cached_and_equals_the_library_s(trial_session, model, cohort):
    request = vs.TrialRequest(trial_arms_of(model.config), n=TRIAL_N, years=5.0, seed=3)
    assert trial_session.cached_trial(request) is None
    stop_after_first = []

    def stop(done: int, total: int) -> None:  # what Streamlit does when Stop is pressed: raise at the next update
        stop_after_first.append((done, total))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trial_session.trial(request, on_chunk=stop)
    assert stop_after_first == [(1, 2)] and trial_session.cached_trial(request) is None  # stopped between chunks, nothing kept
    progress = []
    result = trial_session.trial(request, on_chunk=lambda done, total: progress.append((done, total)))
    assert progress == [(1, 2), (2, 2)]
    assert trial_session.cached_trial(request) is result and trial_session.trial(request) is result
    assert trial_session.computed["trial"] == 2 and trial_session.computed["population"] == 1  # the population fitted once
    expected = library_trial(model, cohort, request.arms, TRIAL_N, seed=3)
    pd.testing.assert_frame_equal(result.hazard_ratios, expected.hazard_ratios)
    pd.testing.assert_frame_equal(result.rmst, expected.rmst)
    pd.testing.assert_frame_equal(result.kaplan_meier, expected.kaplan_meier)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n": 0}, "0 patients per arm: simulate between 1 and 2,000"),
        ({"n": vs.TRIAL_PATIENTS[1] + 1}, "2,001 patients per arm"),
        ({"years": 0.0}, "follow-up 0 years: it must be more than 0"),
        ({"arms": ()}, "a trial needs at least one arm: add an arm"),
        ({"arms": "same names"}, "two plans share this name"),
    ],
)
def test_a_trial_request_that_cannot_run_is_refused_in_words_before_anything_runs(trial_session, model, change, message):
    arms = trial_arms_of(model.config)
    if change.get("arms") == "same names":
        change = {"arms": (arms[0], vs.PlanSpec("treat", "stop", arms[1].treatment))}
    request = vs.TrialRequest(**{"arms": arms, "n": 10, **change})
    before = dict(trial_session.computed)
    with pytest.raises(VPatientError) as info:
        trial_session.trial(request)
    shown = str(info.value) + " ".join(p.message for p in getattr(info.value, "problems", []))
    assert message in shown and "Traceback" not in shown
    assert dict(trial_session.computed) == before


@pytest.fixture(scope="module")
def small_trial(model, cohort):
    """The library's trial of the view's default arms, TRIAL_N virtual patients per arm, 5 years, seed 0."""
    return library_trial(model, cohort, trial_arms_of(model.config), TRIAL_N)


def test_trial_headlines_are_the_library_s_hazard_ratio_and_rmst_worded_by_their_intervals(small_trial):
    result = small_trial
    shown = vh.trial_headlines(result)
    km = result.survival_at([5.0]).set_index("arm")
    hr, rmst = result.hazard_ratios.iloc[0], result.rmst.iloc[0]
    assert [(h.label, h.value) for h in shown.metrics] == [
        ("treat: free of death in 5 years", percent(km.loc["treat", "survival"])),
        ("no treatment: free of death in 5 years", percent(km.loc["no treatment", "survival"])),
        ("hazard ratio of death, no treatment vs treat", number(hr["hazard_ratio"])),
        (
            "years free of death within 5 years (RMST), no treatment vs treat",
            f"{number(rmst['difference'], 2, signed=True)} years",
        ),
    ]
    assert shown.metrics[2].delta == f"95% interval {span(hr['lower'], hr['upper'])}"
    assert shown.metrics[3].delta == f"95% interval {span(rmst['lower'], rmst['upper'], lambda d: number(d, 2, signed=True))}"
    hr_side = "higher hazard" if hr["lower"] > 1 else "lower hazard" if hr["upper"] < 1 else vh.NO_DIFFERENCE
    rmst_side = "more time" if rmst["lower"] > 0 else "less time" if rmst["upper"] < 0 else vh.NO_DIFFERENCE
    assert hr_side in shown.verdicts[0] and rmst_side in shown.verdicts[1]
    assert not [t for h in shown.metrics for t in (h.value, h.delta) if SCIENTIFIC.search(t)]


def test_one_arm_is_a_virtual_cohort_whose_survival_and_median_equal_the_library_s(trial_session, model, cohort):
    request = vs.TrialRequest(trial_arms_of(model.config)[:1], n=TRIAL_N, years=5.0, seed=4)
    progress = []
    result = trial_session.trial(request, on_chunk=lambda done, total: progress.append((done, total)))
    assert progress == [(1, 2), (2, 2)] and trial_session.cached_trial(request) is result  # as a trial: chunks, cache
    expected = library_trial(model, cohort, request.arms, TRIAL_N, seed=4)
    pd.testing.assert_frame_equal(result.kaplan_meier, expected.kaplan_meier)
    shown = vh.trial_headlines(result)
    km = expected.survival_at([5.0]).iloc[0]
    median, lower, upper = expected.median_time("treat")
    assert [(h.label, h.value) for h in shown.metrics] == [
        ("treat: free of death in 5 years", percent(km["survival"])),
        ("treat: median time free of death", f"{number(median, 2)} years" if np.isfinite(median) else "not reached in 5 years"),
    ]
    assert shown.metrics[0].delta == f"95% interval {span(km['lower'], km['upper'], percent)} (Kaplan-Meier)"
    if np.isfinite(lower) and np.isfinite(upper):
        assert shown.metrics[1].delta == f"95% interval {span(lower, upper, lambda t: number(t, 2))} years"
    assert shown.verdicts == [
        "One arm: a virtual cohort under treat, with no arm to compare (no hazard ratio, no RMST difference)."
    ]
    assert not [h for h in shown.metrics if "hazard" in h.label or "RMST" in h.label]
    line = vc.trial_survival_chart(result)["datasets"]["line"]
    assert list(dict.fromkeys(line["series"])) == ["treat"]  # one series: the cohort's curve
    np.testing.assert_array_equal(line["survival"], expected.kaplan_meier["survival"])


def test_a_median_not_reached_is_said_in_words(small_trial):
    import dataclasses

    free = small_trial.kaplan_meier.assign(survival=0.9, lower=0.8, upper=0.95)  # more than half free throughout
    one = dataclasses.replace(small_trial, arms=["treat"], kaplan_meier=free[free["arm"] == "treat"])
    median = vh.trial_headlines(one).metrics[1]
    assert (median.value, median.delta) == ("not reached in 5 years", "95% interval: not reached in 5 years")
    half = free.assign(lower=np.where(free["time"] >= 2.0, 0.4, 0.8))  # only the band's lower bound falls to one half
    one = dataclasses.replace(one, kaplan_meier=half[half["arm"] == "treat"])
    median = vh.trial_headlines(one).metrics[1]
    assert median.value == "not reached in 5 years" and median.delta == "95% interval: from 2 years"


def test_a_trial_without_events_says_so_instead_of_a_hazard_ratio(small_trial):
    import dataclasses

    none = small_trial.hazard_ratios.assign(hazard_ratio=np.nan, lower=np.nan, upper=np.nan)  # what lifelines leaves then
    shown = vh.trial_headlines(dataclasses.replace(small_trial, hazard_ratios=none))
    assert shown.metrics[2].delta == "no death simulated"
    assert shown.verdicts[0] == "no treatment against treat: no death in the simulated trial, so no hazard ratio."


def test_verdicts_are_worded_by_which_side_of_no_effect_the_interval_lies():
    words = ("above", "below", "neither")
    assert vh.by_interval(0.1, 0.3, *words) == "above" and vh.by_interval(-0.3, -0.1, *words) == "below"
    assert vh.by_interval(-0.1, 0.3, *words) == "neither" and vh.by_interval(np.nan, np.nan, *words) == "neither"
    assert vh.by_interval(0.8, 0.95, *words, null=1.0) == "below" and vh.by_interval(0.9, 1.1, *words, null=1.0) == "neither"
    assert vh.NO_DIFFERENCE in vh.verdict("B", "A", "death", "5 years", 0.01, -0.02, 0.04)


def test_the_trial_chart_draws_each_arm_s_kaplan_meier_steps_and_band(small_trial):
    result = small_trial
    spec = vc.trial_survival_chart(result)
    line = spec["datasets"]["line"]
    assert list(dict.fromkeys(line["series"])) == result.arms  # one series per arm, nothing else
    np.testing.assert_array_equal(line["survival"], result.kaplan_meier["survival"])
    np.testing.assert_array_equal(line["survival_q05"], result.kaplan_meier["lower"])
    area, centre = _layers(spec, "area")[0], _layers(spec, "line")[0]
    assert area["mark"]["interpolate"] == centre["mark"]["interpolate"] == "step-after"
    assert centre["encoding"]["strokeDash"]["scale"]["domain"] == result.arms  # arms differ in colour and dash; no forecast time
    assert "forecast_time" not in spec["datasets"] and not _layers(spec, "rule")
    assert set(line["band"]) == {"95% interval"}


@pytest.mark.slow
def test_the_trial_view_runs_only_when_asked_and_shows_the_library_s_answer(model_dir, small_trial, monkeypatch, tmp_path):
    at, session, _ = _app_with_its_session(model_dir, monkeypatch, tmp_path)
    tab = show(at, "Cohort & trial").tabs[vv.VIEWS.index("Cohort & trial")]
    assert not at.exception, at.exception
    assert not tab.metric and not tab.get("vega_lite_chart") and at.button(key="run_trial")
    assert not {"trial", "population"} & set(session.computed)  # nothing computed before Run
    at.number_input(key="trial_n").set_value(TRIAL_N).run()
    assert not {"trial", "population"} & set(session.computed)
    at.button(key="run_trial").click().run()
    assert not at.exception, at.exception
    tab = at.tabs[vv.VIEWS.index("Cohort & trial")]
    expected = vh.trial_headlines(small_trial)
    assert [(m.label, m.value, m.delta) for m in tab.metric] == [(h.label, h.value, h.delta) for h in expected.metrics]
    assert all(vt.plain_markdown(v) in [m.value for m in tab.markdown] for v in expected.verdicts)
    charts = tab.get("vega_lite_chart")
    assert _chart_titles(tab) == ["free of death (Kaplan-Meier)"]
    line = next(layer for layer in json.loads(charts[0].proto.spec)["layer"] if layer["mark"]["type"] == "line")
    assert line["encoding"]["strokeDash"]["scale"]["domain"] == ["treat", "no treatment"]
    # kept for these inputs: a rerun, or a look at another view and back, shows it without running again
    show(at, "Forecast")
    tab = show(at, "Cohort & trial").tabs[vv.VIEWS.index("Cohort & trial")]
    assert session.computed["trial"] == 1 and len(tab.metric) == len(expected.metrics)
    # bad input: a clear error on the page, no traceback, nothing run
    at.number_input(key="trial_n").set_value(0).run()
    assert not at.exception and at.error, at.exception
    assert not at.tabs[vv.VIEWS.index("Cohort & trial")].metric
    at.number_input(key="trial_n").set_value(TRIAL_N).run()
    # one arm: a virtual cohort under its plan, its survival and median, no hazard ratio or RMST, one curve
    at.number_input(key="trial_arm_count").set_value(1).run()
    at.button(key="run_trial").click().run()
    assert not at.exception, at.exception
    tab = at.tabs[vv.VIEWS.index("Cohort & trial")]
    cohort_alone = vh.trial_headlines(library_trial(session.model, session.cohort, trial_arms_of(session.config)[:1], TRIAL_N))
    assert [(m.label, m.value, m.delta) for m in tab.metric] == [(h.label, h.value, h.delta) for h in cohort_alone.metrics]
    assert not [m for m in tab.metric if "hazard" in m.label or "RMST" in m.label] and not tab.table
    assert vt.plain_markdown(cohort_alone.verdicts[0]) in [m.value for m in tab.markdown]
    assert tab.subheader[0].value == f"{TRIAL_N} virtual patients, followed 5 years (seed 0)"
    line = next(
        layer for layer in json.loads(tab.get("vega_lite_chart")[0].proto.spec)["layer"] if layer["mark"]["type"] == "line"
    )
    assert line["encoding"]["strokeDash"]["scale"]["domain"] == ["treat"]
    at.number_input(key="trial_arm_count").set_value(2).run()
    at.text_input(key="trial_arm1_name").set_value("treat").run()
    assert not at.exception and "The arms cannot be simulated" in at.error[0].value
    assert any("share this name" in t.value.to_string() for t in at.table)
    assert session.computed["trial"] == 2  # the two-arm trial and the one-arm cohort


def test_dashboard_speed_result_renders_its_targets_and_ratios():
    from vpatient.benchmarks.dashboard_speed import DashboardSpeedResult, TimingRow
    from vpatient.benchmarks.registry import BENCHMARKS

    rows = [
        TimingRow(measurement="rerun after a plan edit, What-if, patient 1", median_seconds=0.4, max_seconds=0.5,
                  runs=[0.4, 0.5, 0.3], forecasts=2.0, target_seconds=1.0),
        TimingRow(measurement="switching patients, Forecast open", median_seconds=3.5, max_seconds=4.0, runs=[3.5],
                  forecasts=17.5, target_seconds=3.0),
        TimingRow(measurement="server start", median_seconds=1.4, max_seconds=1.4, runs=[1.4], forecasts=7.0,
                  target_seconds=None),
    ]  # fmt: skip
    result = DashboardSpeedResult(
        model="m", seed=0, switched_to=["2"], edited=["1"], reference_forecast_seconds=0.2, rows=rows, runtime_seconds=9.0
    )
    assert BENCHMARKS["dashboard-speed"] is DashboardSpeedResult and not result.passed
    md = result.to_markdown()
    assert md.count("| pass |") == 1 and md.count("| miss |") == 1  # the server start has no target
    assert "| 17.5 |" in md and "one forecast of a patient takes 0.200 s" in md
    assert DashboardSpeedResult.model_validate_json(result.model_dump_json()) == result


def test_headlines_and_charts_of_a_model_without_events_in_days(config, record_data):
    """A user's config with no events and another time unit: the forecast and what-if views still answer (the forecast's
    survival table was a frame without columns, and the forecast headline raised KeyError on it)."""
    import torch

    from vpatient.data.batching import Scalers, layout_from_config
    from vpatient.model.latent_ode import LatentODE, ModelSettings
    from vpatient.schemas import TimeUnit, TreatmentExposure, TreatmentPlan, parse_record
    from vpatient.simulation import Simulator
    from vpatient.virtual_patient import VirtualPatientModel

    days = config.model_copy(
        update={"time_unit": TimeUnit.DAYS, "variables": [v for v in config.variables if v.kind != VariableKind.EVENT]}
    )
    record = parse_record({**record_data, "events": []}, days)
    scalers = Scalers.fit([record, record], days)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        network = LatentODE(layout_from_config(days), ModelSettings(latent_dim=4, hidden=16), scalers.time_scale)
    model = VirtualPatientModel(network, days, scalers)
    at = record.visit_times()[-1]
    forecast = model.forecast(record, at, 30.0, 20, 0)
    assert list(forecast.survival_summary().columns)[:3] == ["subject_id", "time", "event"]
    shown = vh.forecast_headlines(forecast, ["bilirubin"])
    assert [h.label for h in shown] == ["bilirubin in 30 days"]  # no event, so no survival headline
    assert vc.forecast_survival_chart(forecast) is None and len(vc.forecast_lab_charts(forecast, record, ["bilirubin"])) == 1
    plans = [
        TreatmentPlan(name="drug", exposures=[TreatmentExposure(treatment="drug", start=at, dose=1.0)]),
        TreatmentPlan(name="none"),
    ]
    whatif = Simulator(model).whatif(record, plans, 30.0, 20, 0, at)
    assert vh.whatif_headlines(whatif).by_event == {} and vc.whatif_survival_charts(whatif) == []
    assert len(vc.whatif_lab_charts(whatif, record, ["bilirubin", "albumin"])) == 2
