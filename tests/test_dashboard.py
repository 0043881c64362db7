"""The what-if dashboard: its library side, and the Streamlit app driven by AppTest on a tiny PBC model."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vpatient.dashboard import command
from vpatient.dashboard import session as vs
from vpatient.dashboard import tables as vt
from vpatient.datasets import load_dataset
from vpatient.errors import RecordValidationError
from vpatient.policy import Target, recommend
from vpatient.simulation import Simulator
from vpatient.train import TrainSettings
from vpatient.virtual_patient import VirtualPatientModel

APP = command.APP_PATH
PATIENT = "5"


@pytest.fixture(scope="module")
def cohort():
    return load_dataset("pbc2")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, cohort) -> Path:
    """A 2-epoch PBC model (a few seconds): enough to exercise every panel."""
    model = VirtualPatientModel.fit(cohort.records, cohort.config, TrainSettings(epochs=2, seed=0), progress=False)
    model.data_source = "pbc2"
    return model.save(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def model(model_dir) -> VirtualPatientModel:
    return VirtualPatientModel.load(model_dir)


def app(model_dir: Path, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(vs.MODEL_ENV, str(model_dir))
    at = AppTest.from_file(str(APP), default_timeout=180)
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
    card = vt.model_card(model, model_dir)
    assert card["training"]["trained on"] == "pbc2"
    assert "Intended use" in card["intended_use"] and "Limits" in card["limits"]
    assert card["notes"]
    empty = vt.model_card(model, model_dir, results_dir=model_dir / "nowhere")
    assert len(empty["benchmarks"]) == 0 and "No benchmark results" in empty["notes"][0]


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


# --------------------------------------------------------------------------- the app (AppTest)


@pytest.mark.slow
def test_app_starts(model_dir, monkeypatch):
    at = app(model_dir, monkeypatch)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.title[0].value.startswith("Virtual patient")
    assert [t.label for t in at.tabs] == ["Timeline", "Forecast", "What-if", "Next test", "Model card"]


@pytest.mark.slow
def test_selecting_a_patient_shows_its_forecast(model_dir, model, cohort, monkeypatch):
    at = app(model_dir, monkeypatch)
    at.sidebar.text_input(key="patient_query").set_value(PATIENT).run()
    at.selectbox(key="patient").set_value(PATIENT).run()
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


@pytest.mark.slow
def test_invalid_plan_shows_problems_and_app_keeps_working(model_dir, monkeypatch):
    at = app(model_dir, monkeypatch)
    at.number_input(key="plan0_dose").set_value(3.0).run()
    assert not at.exception, at.exception
    assert any("cannot be simulated" in e.value for e in at.error)
    assert "dose" in " ".join(table_with(at, "field")["field"])
    at.number_input(key="plan0_dose").set_value(0.5).run()
    assert not at.error
    table_with(at, "difference")


@pytest.mark.slow
def test_next_test_table_ranks_the_config_tests_by_eig_per_cost(model_dir, model, cohort, monkeypatch):
    at = app(model_dir, monkeypatch)
    assert not at.exception, at.exception
    table = table_with(at, "EIG per cost")
    assert sorted(table["test"]) == sorted(t.name for t in cohort.config.tests)
    # the widgets' target is a Target object, ranked as the library ranks it
    record = cohort.subject(at.selectbox(key="patient").value)
    decided = round(max(record.visit_times()), 2)
    expected = vt.recommendation_table(recommend(model, record, Target.risk("death", 5.0), decided, 256, 0))
    assert list(table["test"]) == list(expected["test"])
    np.testing.assert_allclose(table["EIG (bits)"].to_numpy(float), expected["EIG (bits)"].to_numpy(float), rtol=1e-5, atol=1e-9)
    open_rows = table[~table["done at t"].astype(bool)]
    ratios = open_rows["EIG per cost"].to_numpy(float)
    assert (np.diff(ratios) <= 1e-12).all(), ratios
    chosen = table["test"].iloc[-1]
    at.selectbox(key="next_test").set_value(chosen).run()
    assert any(chosen in i.value for i in at.info)


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
    assert not at.exception
    assert any(f"Forecast of subject {PATIENT}" in h.value for h in at.subheader)
    table_with(at, "difference")
    # A valid upload becomes the patient shown.
    good = cohort.subject(PATIENT).model_dump(mode="json") | {"subject_id": "uploaded-7"}
    at.sidebar.file_uploader(key="upload").upload("good.json", json.dumps(good).encode(), "application/json").run()
    assert not at.exception, at.exception
    assert any("Forecast of subject uploaded-7" in h.value for h in at.subheader)


@pytest.mark.slow
def test_model_card_shows_the_precomputed_trial_adjustment(model_dir, monkeypatch, tmp_path, simulated_trial_adjustment):
    import shutil

    from vpatient.report.procova import ADJUSTMENT_FILE, percent, precision_sentence
    from vpatient.report.render import num

    own = tmp_path / "model"  # a copy: the adjustment file must not leak into the other tests' model
    shutil.copytree(model_dir, own)
    at = app(own, monkeypatch)
    assert not at.exception, at.exception
    # no result beside the model: a one-line hint with the command that writes it
    hint = [c.value for c in at.caption if ADJUSTMENT_FILE in c.value]
    assert hint and f"vpatient trial adjust --data pbc2 --out {own}" in hint[0]

    (own / ADJUSTMENT_FILE).write_text('{"data": "pbc2"}')
    at.run()
    assert not at.exception, at.exception
    assert any(f"{own / ADJUSTMENT_FILE} is not a valid trial adjustment result" in w.value for w in at.warning)

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
