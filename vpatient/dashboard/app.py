"""The dashboard's Streamlit script: `vpatient dashboard [--model DIR]` serves it.

Thin on purpose: widgets build the request objects of :mod:`vpatient.dashboard.session`,
the library computes (and caches), :mod:`vpatient.dashboard.tables` prepares what is
shown, and this file only draws. The model is loaded once per server
(``st.cache_resource``); it is ``$VPATIENT_MODEL_DIR``, else the demo PBC model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import streamlit as st

from vpatient.dashboard import charts as vc
from vpatient.dashboard import headlines as vh
from vpatient.dashboard import session as vs
from vpatient.dashboard import tables as vt
from vpatient.dashboard import views as vv
from vpatient.errors import RecordValidationError, VPatientError
from vpatient.plots import COST_CURVE_CAPTION
from vpatient.policy import Target, TargetKind
from vpatient.report.patient import next_visit_gap
from vpatient.schemas import VariableKind

st.set_page_config(page_title="vpatient what-if", layout="wide")


def require_access_token() -> None:
    """Ask for the access token when the server has one (``vpatient dashboard --token-file``); stop until it is given."""
    expected = os.environ.get(vs.TOKEN_ENV)
    if not expected or st.session_state.get("token_ok"):
        return
    given = st.text_input("Access token", type="password", key="access_token")
    if vs.token_matches(given, expected):
        st.session_state["token_ok"] = True
        return
    if given:
        st.error("Wrong access token.")
    st.stop()


require_access_token()  # before the model is loaded: nothing about it or its patients is shown without the token


@st.cache_resource(show_spinner="Loading the model (training the demo model the first time, a few minutes) ...")
def load_session(model_dir: str) -> vs.DashboardSession:
    return vs.DashboardSession.load(vs.resolve_model_dir(model_dir or None))


def show_charts(specs: list[dict], caption: str, per_row: int = 2) -> None:
    """Interactive charts, ``per_row`` to a row, with the one line saying what their bands include under them."""
    for first in range(0, len(specs), per_row):
        for col, spec in zip(st.columns(per_row), specs[first : first + per_row], strict=False):
            col.vega_lite_chart(spec=spec, width="stretch")
    if specs:
        st.caption(caption)


def pick_labs(key: str) -> tuple[str, ...]:
    """The labs to chart, chosen by the user (the config's first few at first)."""
    labs = config.names(VariableKind.CONTINUOUS)
    return tuple(st.multiselect("Labs to chart", labs, default=vc.default_labs(config), key=key))


def show_problems(exc: RecordValidationError, what: str) -> None:
    st.error(f"{what}: {sum(p.severity == 'error' for p in exc.problems)} problem(s) to fix")
    st.table(vt.problems_table(exc.problems))


def plan_editor(i: int, what: str, key: str, default: tuple[str, str], actions: dict[str, str], start: str) -> vs.PlanSpec:
    """The inputs of plan ``i`` (a what-if's plan or a trial's arm, ``what``), in the current column: name, action,
    treatment, start (``start`` says from when) and dose; their keys are ``{key}{i}_name`` and so on."""
    labels = list(actions)
    name = st.text_input(f"{what} {i + 1} name", value=default[0], key=f"{key}{i}_name")
    action = st.selectbox(f"{what} {i + 1} action", labels, index=labels.index(default[1]), key=f"{key}{i}_action")
    treatment = (
        st.selectbox(f"{what} {i + 1} treatment", config.treatments, key=f"{key}{i}_treatment") if config.treatments else None
    )
    begin = st.number_input(
        f"{what} {i + 1} from ({start})", 0.0, default_horizon * 4, 0.0, default_horizon / 20, key=f"{key}{i}_start"
    )
    dose = st.number_input(f"{what} {i + 1} dose{vt.dose_hint(config, treatment)}", value=1.0, step=0.1, key=f"{key}{i}_dose")
    return vs.PlanSpec(name, actions[action], treatment, float(begin), float(dose))


def trial_progress(n_patients: int) -> tuple[Any, Callable[[int, int], None]]:
    """A progress bar for a trial of ``n_patients`` per arm, and the ``on_chunk`` callback that moves it.

    Each move is where Streamlit stops the run when Stop (or any other input) is pressed: between chunks.
    """
    bar = st.progress(0.0, text="Drawing virtual patients (the first trial also fits the population model) ...")

    def moved(done: int, total: int) -> None:
        patients = min(done * vs.TRIAL_CHUNK_SIZE, n_patients)
        bar.progress(done / total, text=f"{patients:,} of {n_patients:,} virtual patients simulated under every arm")

    return bar, moved


def show_headlines(headlines: list[vh.Headline], per_row: int = 4) -> None:
    """Headline numbers as metrics, ``per_row`` to a row."""
    for start in range(0, len(headlines), per_row):
        for col, h in zip(st.columns(per_row), headlines[start : start + per_row], strict=False):
            col.metric(h.label, h.value, h.delta, delta_color=h.tone, delta_arrow="auto" if h.tone == "normal" else "off")


try:
    sess = load_session(os.environ.get(vs.MODEL_ENV, ""))
except VPatientError as exc:  # its message names server paths: they go to the server's log, not to the page
    logging.getLogger(__name__).error("the dashboard's model could not be loaded: %s", exc)
    st.error("The model could not be loaded; the server's log says why.")
    st.stop()
config = sess.config
st.title("Virtual patient: forecast, what-if and next test")
st.caption(vt.plain_markdown(vt.model_caption(sess.model)))  # its name and versions; no path of the server's

# --------------------------------------------------------------------------- 1. patient
with st.sidebar:
    st.header("Patient")
    query = st.text_input("Search by subject id", key="patient_query")
    ids = sess.subject_ids(query)
    upload = st.file_uploader(
        f"... or upload one patient's record (MEDS CSV / parquet, FHIR Bundle JSON / NDJSON, or record JSON; ≤ {vs.MAX_UPLOAD_BYTES // 2**20} MB)",
        type=["csv", "parquet", "json", "ndjson"],
        key="upload",
    )
    upload_key = None
    if upload is not None:
        try:
            upload_key = sess.add_upload(upload.name, upload.getvalue())
            st.success(f"uploaded {vt.plain_markdown(upload.name)}: valid record")
            if st.session_state.get("last_upload") != upload_key:  # a new upload becomes the patient shown
                st.session_state["last_upload"] = upload_key
                st.session_state["patient"] = upload_key
        except RecordValidationError as exc:
            show_problems(exc, f"{vt.plain_markdown(upload.name)} is not a valid record")
        except VPatientError as exc:
            st.error(vt.plain_markdown(exc))
    options = ([upload_key] if upload_key else []) + ids
    if not options:
        st.warning("No patient matches; clear the search or upload a record.")
        st.stop()
    subject = st.selectbox("Patient", options, key="patient", format_func=lambda s: "uploaded record" if s == upload_key else s)

record = sess.record(subject)
last_visit = sess.last_visit(subject)
visits = record.visit_times() or [0.0]

# Time inputs are in the data's unit, their ranges scaled to the model's default horizon (5 years: 1 to 10 years).
unit = config.time_unit.value
default_horizon = sess.model.default_horizon

# the decision time, horizon and sample paths, shared by the forecast, what-if and next-test views: above the tabs
shared_settings = st.container()
vv.keep_view_inputs(st.session_state)  # a plan edited under What-if stays edited while another view is open
# only the open tab's view runs (vv.when_open): a rerun computes what is on the screen
tab_timeline, tab_forecast, tab_whatif, tab_next, tab_card, tab_trial = st.tabs(
    list(vv.VIEWS), on_change="rerun", key=vv.VIEW_KEY
)

# --------------------------------------------------------------------------- 2. timeline
for _ in vv.when_open(tab_timeline):
    st.subheader(f"Record of subject {vt.plain_markdown(record.subject_id)}")
    st.image(sess.figure("timeline", subject), width="stretch")

# --------------------------------------------------------------------------- 3. forecast
with shared_settings:
    cols = st.columns(3)
    until = cols[0].select_slider(
        f"Forecast from ({unit} since enrolment; what was known then)",
        options=[round(t, 2) for t in visits],
        value=round(last_visit, 2),
        key=f"forecast_until_{subject}",
    )
    horizon = cols[1].slider(
        f"Horizon ({unit})",
        default_horizon / 5,
        default_horizon * 2,
        default_horizon,
        default_horizon / 10,
        key="forecast_horizon",
    )
    n_samples = cols[2].select_slider("Sample paths", [50, 100, 200, 400], value=200, key="n_samples")
    forecast_request = vs.ForecastRequest(subject, float(until), horizon=float(horizon), n_samples=int(n_samples), seed=0)
    at = float(until)
for _ in vv.when_open(tab_forecast):
    st.subheader(f"Forecast of subject {vt.plain_markdown(record.subject_id)} from t = {until:.2f}")
    forecast_labs = pick_labs("forecast_labs")  # the headline numbers and the charts show the same labs
    with st.spinner("Forecasting ..."):
        show_headlines(vh.forecast_headlines(sess.forecast(forecast_request), forecast_labs))
        lab_charts, survival_charts = sess.charts("forecast", forecast_request, forecast_labs)
    show_charts(lab_charts, vc.band_caption(sess.model.n_members))
    show_charts(survival_charts, vc.survival_caption(sess.model.n_members))
    with st.expander(f"Forecast {horizon:g} {unit} ahead, in numbers"):
        st.table(vt.styled(vt.forecast_table(sess.forecast(forecast_request))))

# --------------------------------------------------------------------------- 4. what-if
for _ in vv.when_open(tab_whatif):
    st.markdown(f"Plans take over at the forecast time **t = {at:.2f}** (what was given before stays as recorded).")
    defaults = [("treat", "start or change dose"), ("no treatment", "stop"), ("as recorded", "as recorded")]
    specs = []
    plan_cols = st.columns(vs.MAX_PLANS)
    for i, col in enumerate(plan_cols):
        with col:
            enabled = i < 2 or st.checkbox("Add a third plan", value=False, key=f"plan{i}_enabled")
            if not enabled:
                continue
            specs.append(plan_editor(i, "Plan", "plan", defaults[i], vs.ACTIONS, f"{unit} after t"))
    whatif_request = vs.WhatIfRequest(subject, tuple(specs), at, horizon=float(horizon), n_samples=int(n_samples), seed=0)
    try:
        with st.spinner("Simulating the plans ..."):
            result = sess.whatif(whatif_request)
    except RecordValidationError as exc:
        show_problems(exc, "The plans cannot be simulated")
    except VPatientError as exc:
        st.error(vt.plain_markdown(exc))
    else:
        st.subheader(f"Effects against plan '{vt.plain_markdown(result.reference)}' (90% intervals)")
        headlines = vh.whatif_headlines(result)
        for event, rows in headlines.by_event.items():
            st.markdown(f"**Chance of being free of {vt.plain_markdown(event)}** (90% interval)")
            show_headlines([h for row in rows for h in row], per_row=len(rows[0]))
            for sentence in headlines.verdicts[event]:
                st.markdown(vt.plain_markdown(sentence))
        st.caption(sess.model.uncertainty_note())
        with st.expander("All effects, in numbers"):
            st.table(vt.styled(vt.effect_table(result)))
            st.download_button(
                "Download every effect (CSV)", result.effects().to_csv(index=False), "whatif-effects.csv", "text/csv"
            )
        with st.expander("Effects on labs (typical value, natural units)"):
            st.table(vt.styled(vt.effect_table(result, kinds=("lab",))))
        whatif_labs = pick_labs("whatif_labs")
        lab_charts, survival_charts = sess.charts("whatif", whatif_request, whatif_labs)
        show_charts(survival_charts, vc.survival_caption(sess.model.n_members))
        show_charts(lab_charts, vc.band_caption(sess.model.n_members))

# --------------------------------------------------------------------------- 5. next test
for _ in vv.when_open(tab_next):
    cols = st.columns(5)
    kinds = vt.target_kinds(config)
    kind = kinds[cols[0].selectbox("Target", list(kinds), key="target_kind")]
    least, most, step = vt.target_horizon_bounds(default_horizon)
    if kind == TargetKind.RISK:
        events = config.event_kinds
        event = cols[1].selectbox("risk of", events, index=events.index("death") if "death" in events else 0, key="target_event")
        within = cols[2].number_input(f"within ({unit})", least, most, default_horizon, step, key="target_years")
        target = Target.risk(event, float(within))
    elif kind == TargetKind.FORECAST:
        variable = cols[1].selectbox("forecast of", config.names(VariableKind.CONTINUOUS), key="target_variable")
        ahead = vt.forecast_target_horizon(config.time_unit, default_horizon)
        ahead = cols[2].number_input(f"at ({unit} after the visit)", least, most, ahead, step, key="target_ahead")
        target = Target.forecast(variable, float(ahead))
    else:
        cols[1].markdown("the patient's latent disease state at the visit")
        target = Target.latent()
    # the next visit, not the decision time itself: every test was usually just done then, leaving nothing to rank
    gap = min(next_visit_gap(sess.model), most)
    after = cols[3].number_input(f"for the visit ({unit} after t = {at:.2f})", 0.0, most, gap, step, key="next_visit_after")
    test_at = at + float(after)
    next_request = vs.NextTestRequest(subject, target, test_at, 256, 0)
    try:
        recommendation = sess.recommend(next_request)
    except VPatientError as exc:
        st.error(vt.plain_markdown(exc))
    else:
        st.subheader(f"Tests for the visit at t = {test_at:.2f}, ranked by information per cost")
        next_headlines = vh.next_test_headlines(recommendation, config.time_unit)
        st.markdown(vt.plain_markdown(next_headlines.sentence))
        show_headlines(next_headlines.metrics)
        for note in next_headlines.notes:
            st.caption(vt.plain_markdown(note))
        st.table(vt.styled(vt.recommendation_table(recommendation)))
        st.image(sess.figure("cost_curve", next_request))
        st.caption(COST_CURVE_CAPTION)
        chosen = cols[4].selectbox("Explain a test", [g.test for g in recommendation.gains], key="next_test")
        st.info(vt.test_explanation(recommendation, chosen, unit))

# --------------------------------------------------------------------------- 6. model card
for _ in vv.when_open(tab_card):
    card = vt.model_card(sess.model)
    st.subheader("How this model was trained")
    st.table({"": list(card["training"]), "value": [str(v) for v in card["training"].values()]})
    st.subheader("Benchmarks")
    if card["recipe"] is not None:
        st.info(card["recipe"].text)
    if len(card["benchmarks"]):
        st.table(card["benchmarks"])
    for note in card["notes"]:
        st.markdown(f"- {note}")
    # precomputed only: computing it cross-fits fold models, minutes (vpatient trial adjust --out MODEL_DIR)
    adjustment = vt.trial_adjustment_view(sess.model_dir, sess.model.dataset_name)
    st.subheader(adjustment.title)
    if adjustment.problem:
        st.warning(adjustment.problem)
    for sentence in adjustment.sentences:
        st.markdown(sentence)
    if len(adjustment.table):
        st.table(vt.styled(adjustment.table))
    if adjustment.hint:
        st.caption(adjustment.hint)
    st.subheader("Intended use and limits")
    st.markdown(card["intended_use"])
    st.markdown(card["limits"])

# --------------------------------------------------------------------------- 7. cohort and trial
for _ in vv.when_open(tab_trial):
    st.markdown(
        "An in-silico trial: virtual patients drawn from the population the model learned, each simulated under every "
        "arm from enrolment (the same patients in every arm, so the arms differ only by treatment); the first arm is the reference. "
        "One arm simulates a virtual cohort under its plan: its survival, with nothing to compare."
    )
    if not config.event_kinds:
        st.info("This model has no events: there is no survival to compare.")
        continue
    cols = st.columns(5)
    n_arms = cols[0].number_input("Arms", 1, vs.MAX_PLANS, 2, key="trial_arm_count")
    most = vs.TRIAL_PATIENTS[1]
    # from 0, not 1: a 0 typed in is answered by the session's check in words, not silently replaced by the default
    n_patients = cols[1].number_input(f"Virtual patients per arm (≤ {most:,})", 0, most, vs.TRIAL_PATIENTS[0], 50, key="trial_n")
    years = cols[2].number_input(
        f"Follow-up ({unit})", default_horizon / 5, default_horizon * 2, default_horizon, default_horizon / 10, key="trial_years"
    )
    seed = cols[3].number_input("Seed", 0, 2**31 - 1, 0, key="trial_seed")
    event = cols[4].selectbox("Primary event", config.event_kinds, key="trial_event")
    arm_defaults = [("treat", "treat"), ("no treatment", "no treatment"), ("arm 3", "treat")]
    arms = []
    for i, col in enumerate(st.columns(vs.MAX_PLANS)):
        if i < n_arms:
            with col:
                arms.append(plan_editor(i, "Arm", "trial_arm", arm_defaults[i], vs.TRIAL_ACTIONS, f"{unit} after enrolment"))
    trial_request = vs.TrialRequest(tuple(arms), int(n_patients), float(years), int(seed), event)
    try:
        sess.trial_arms(trial_request)  # the inputs checked before anything runs
    except RecordValidationError as exc:
        show_problems(exc, "The arms cannot be simulated")
        continue
    except VPatientError as exc:
        st.error(vt.plain_markdown(exc))
        continue
    # buttons' keys outside vv.VIEW_INPUTS: a button's value cannot be carried across runs
    run = st.button("Run the trial", key="run_trial", type="primary")
    trial = sess.cached_trial(trial_request)
    if run and trial is None:
        stop = st.empty()
        stop.button("Stop", key="stop_trial", help="Stops the simulation after the chunk of patients it is on")
        bar, show_progress = trial_progress(trial_request.n)
        try:
            trial = sess.trial(trial_request, on_chunk=show_progress)
        except VPatientError as exc:
            st.error(vt.plain_markdown(exc))
        bar.empty()
        stop.empty()
    if trial is None:
        st.info("Press **Run the trial** to simulate it; the result is kept for these inputs.")
        continue
    st.subheader(
        f"{trial.n_patients:,} virtual patients{' per arm' if len(trial.arms) > 1 else ''}, "
        f"followed {vh.horizon_words(trial.years, config.time_unit)} (seed {trial.seed})"
    )
    trial_headlines = vh.trial_headlines(trial)
    show_headlines(trial_headlines.metrics[: len(trial.arms)], per_row=len(trial.arms))
    show_headlines(trial_headlines.metrics[len(trial.arms) :], per_row=2)
    for sentence in trial_headlines.verdicts:
        st.markdown(vt.plain_markdown(sentence))
    st.caption(sess.model.uncertainty_note(trial=True))
    show_charts([vc.trial_survival_chart(trial)], vc.TRIAL_CAPTION, per_row=1)
    with st.expander("The trial in numbers"):
        if len(trial.arms) > 1:  # one arm compares nothing: its hazard ratio and RMST tables are empty
            st.table(vt.styled(trial.hazard_ratios[["arm", "reference", "hazard_ratio", "lower", "upper", "p"]]))
            st.table(
                vt.styled(
                    trial.rmst[["arm", "reference", "horizon", "arm_rmst", "reference_rmst", "difference", "lower", "upper"]]
                )
            )
        st.download_button(
            "Download the Kaplan-Meier curves (CSV)", trial.kaplan_meier.to_csv(index=False), "trial-kaplan-meier.csv", "text/csv"
        )
