"""``vpatient benchmark dashboard-speed``: how long a clinician waits for the dashboard.

Streamlit's AppTest runs the app script in this process, as a browser session would, on a
checkpoint (default: the demo PBC model). Each view starts from a fresh server (the model
loaded anew, nothing cached) and is timed on the same patients, each shown for the first time:

- server start: the first run of the script (loads the model, shows the first patient's timeline);
- first patient view: a new session's first run on a running server;
- switching patients with the Timeline, the Forecast and the What-if view open, and switching to the
  patient with the most visits (the hardest case: refining a long history's posterior is the slow part);
- a full rerun after a plan edit in the What-if view (plan 1's dose, five edits per patient).

Targets (issue 18): a rerun after a plan edit under 1 s, the first patient view and a switch of
patients under 3 s. Seconds depend on the machine, so every row also reads as a multiple of
one forecast of the same patient with the same model, timed in the same process (the
reference): the ratio moves less with the machine's load than the seconds do.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from vpatient.benchmarks.base import StrictModel, VersionedBenchmarkResult, targets_table
from vpatient.errors import VPatientError
from vpatient.tables import markdown_table

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest

    from vpatient.dashboard.session import DashboardSession

__all__ = ["DashboardSpeedResult", "TimingRow", "run_dashboard_speed_benchmark"]

#: Seconds a clinician should wait at most (issue 18).
TARGET_EDIT_SECONDS, TARGET_VIEW_SECONDS = 1.0, 3.0
#: Plan 1's doses set in turn, one full rerun each.
EDIT_DOSES = (0.9, 0.8, 0.7, 0.6, 0.5)
SWITCH_VIEWS = ("Timeline", "Forecast", "What-if")


class TimingRow(StrictModel):
    """One measurement: its median over the runs, every run, and the target it is held to (None: none)."""

    measurement: str
    median_seconds: float
    max_seconds: float
    runs: list[float]
    forecasts: float  # the median as a multiple of one forecast of a patient (the reference, same process)
    target_seconds: float | None


class DashboardSpeedResult(VersionedBenchmarkResult):
    """Waiting times of the dashboard on one checkpoint, against issue 18's targets."""

    benchmark: Literal["dashboard-speed"] = "dashboard-speed"
    model: str
    seed: int
    switched_to: list[str]
    edited: list[str]
    reference_forecast_seconds: float
    rows: list[TimingRow]
    runtime_seconds: float

    @property
    def passed(self) -> bool:
        """Every row with a target met it at its median."""
        return all(r.target_seconds is None or r.median_seconds < r.target_seconds for r in self.rows)

    def to_markdown(self) -> str:
        table = pd.DataFrame(
            [
                {
                    "measurement": r.measurement,
                    "median s": r.median_seconds,
                    "worst s": r.max_seconds,
                    "x one forecast": r.forecasts,
                    "runs": len(r.runs),
                }
                for r in self.rows
            ]
        )
        targets = [
            (f"{r.measurement}: median under {r.target_seconds:g} s", r.median_seconds, f"< {r.target_seconds:g}",
             r.median_seconds < r.target_seconds)
            for r in self.rows
            if r.target_seconds is not None
        ]  # fmt: skip
        lines = [
            "# Dashboard speed: how long a clinician waits",
            "",
            f"vpatient {self.vpatient_version}, model `{self.model}`, seed {self.seed}; {self.runtime_seconds:.0f} s in all. "
            "Streamlit's AppTest runs the app script; each view from a fresh server, on patients not shown before "
            f"(switched to: {', '.join(self.switched_to)}; plans edited for: {', '.join(self.edited)}). "
            f"Reference: one forecast of a patient takes {self.reference_forecast_seconds:.3f} s here.",
            "",
            markdown_table(table, index=False),
            "",
            "## Targets",
            "",
            targets_table(targets),
            "",
        ]
        return "\n".join(lines)


def _row(measurement: str, runs: Sequence[float], reference: float, target: float | None) -> TimingRow:
    median = statistics.median(runs)
    return TimingRow(
        measurement=measurement,
        median_seconds=round(median, 3),
        max_seconds=round(max(runs), 3),
        runs=[round(s, 3) for s in runs],
        forecasts=round(median / reference, 1),
        target_seconds=target,
    )


def _timed(action: Callable[[], AppTest]) -> float:
    start = time.perf_counter()
    at = action()
    elapsed = time.perf_counter() - start
    if at.exception or at.error:
        raise VPatientError(f"dashboard-speed: the app failed: {[e.value for e in [*at.exception, *at.error]]}")
    return elapsed


def _fresh_server() -> tuple[AppTest, float]:
    """A first session on a server that has just started (nothing cached, the model loaded anew), and its time."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from vpatient.dashboard.command import APP_PATH

    st.cache_resource.clear()
    at = AppTest.from_file(str(APP_PATH), default_timeout=600)
    return at, _timed(at.run)


def _open_view(at: AppTest, view: str) -> AppTest:
    from vpatient.dashboard.views import VIEW_KEY

    at.session_state[VIEW_KEY] = view
    return at.run()


def _reference_forecast(session: DashboardSession, patient: str) -> float:
    """Seconds of one forecast of ``patient`` (the dashboard's defaults: 200 paths, seed 0), the best of three."""
    record = session.record(patient)
    until = session.last_visit(patient)
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        session.model.forecast(record, until, session.model.default_horizon, 200, 0)
        seconds.append(time.perf_counter() - start)
    return min(seconds)


def run_dashboard_speed_benchmark(
    model_dir: str | Path,
    runs: int = 5,
    switch_to: Sequence[str] | None = None,
    edit_patients: Sequence[str] = ("1", "32"),
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> DashboardSpeedResult:
    """Time the dashboard on ``model_dir`` (module docstring); ``switch_to`` defaults to ``runs`` patients drawn with ``seed``."""
    from streamlit.testing.v1 import AppTest

    from vpatient.dashboard import session as vs
    from vpatient.dashboard.command import APP_PATH

    started = time.perf_counter()
    model_dir = Path(model_dir)
    previous = os.environ.get(vs.MODEL_ENV)
    os.environ[vs.MODEL_ENV] = str(model_dir)
    logging.disable(logging.WARNING)  # AppTest warns of a missing browser session on every run; errors still raise
    try:
        session = vs.DashboardSession.load(str(model_dir))
        ids = session.subject_ids()
        # the hardest switch: the patient with the most visits (refining a long history's posterior is the slow part)
        longest = max(ids[1:], key=lambda p: len(session.record(p).visit_times()))
        unknown = [p for p in [*(switch_to or []), *edit_patients] if p not in ids]
        if unknown:
            raise VPatientError(f"dashboard-speed: no patient {', '.join(unknown)} in the model's data")
        if switch_to is None:  # not the first patient: it is shown at start
            rng = np.random.default_rng(seed)
            switch_to = [str(p) for p in rng.choice(ids[1:], size=min(runs, len(ids) - 1), replace=False)]
        reference = _reference_forecast(session, switch_to[0])  # the session read above: the model is loaded once here
        rows, starts = [], []
        for view in SWITCH_VIEWS:
            at, start = _fresh_server()
            starts.append(start)
            _open_view(at, view)
            switches = [_timed(lambda at=at, p=p: at.selectbox(key="patient").set_value(p).run()) for p in switch_to]
            rows.append(_row(f"switching patients, {view} open", switches, reference, TARGET_VIEW_SECONDS))
            if progress is not None:
                progress(rows[-1].model_dump_json())
        for view in ("Forecast", "What-if"):
            at, _ = _fresh_server()
            _open_view(at, view)
            to_longest = [_timed(lambda at=at: at.selectbox(key="patient").set_value(longest).run())]
            rows.append(_row(f"switching to the patient with the most visits ({longest}), {view} open", to_longest,
                             reference, TARGET_VIEW_SECONDS))  # fmt: skip
        first = [_timed(AppTest.from_file(str(APP_PATH), default_timeout=600).run) for _ in range(runs)]
        rows[:0] = [
            _row("server start (loads the model, first patient's timeline)", starts, reference, None),
            _row("first patient view (a new session on a running server)", first, reference, TARGET_VIEW_SECONDS),
        ]
        for patient in edit_patients:
            at, _ = _fresh_server()
            _open_view(at.selectbox(key="patient").set_value(patient).run(), "What-if")
            edits = [_timed(lambda at=at, d=d: at.number_input(key="plan0_dose").set_value(d).run()) for d in EDIT_DOSES]
            rows.append(_row(f"rerun after a plan edit, What-if, patient {patient}", edits, reference, TARGET_EDIT_SECONDS))
            if progress is not None:
                progress(rows[-1].model_dump_json())
    finally:
        logging.disable(logging.NOTSET)
        if previous is None:
            os.environ.pop(vs.MODEL_ENV, None)
        else:
            os.environ[vs.MODEL_ENV] = previous
    return DashboardSpeedResult(
        model=model_dir.name,
        seed=seed,
        switched_to=list(switch_to),
        edited=list(edit_patients),
        reference_forecast_seconds=round(reference, 4),
        rows=rows,
        runtime_seconds=round(time.perf_counter() - started, 1),
    )
