"""Time the dashboard as a user meets it: Streamlit's AppTest runs the app script on the demo model (or --model DIR).

Each view starts from a fresh server (the model loaded anew, nothing cached) and is timed on the
same patients, spread over the dataset, each shown for the first time:
- server start: the first run of the script (loads the model, shows the first patient's timeline);
- first patient view: a new browser session's first run on a running server;
- switching patients with the Timeline, the Forecast and the What-if view open;
- a full rerun after a plan edit in the What-if view (the dose of plan 1; five edits per patient).

    PYTHONPATH=. python scripts/dashboard_timing.py [--model DIR] [--runs 5] [--edit-patients 1 32]

Prints one line per measurement, as medians over the runs; the README's dashboard paragraph quotes them.
Run it on an otherwise idle machine with ``OMP_NUM_THREADS=1`` to compare two versions of the code.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import streamlit as st
from streamlit.testing.v1 import AppTest

from vpatient.dashboard import session as vs
from vpatient.dashboard import views as vv
from vpatient.dashboard.command import APP_PATH

logging.disable(logging.WARNING)  # AppTest warns of a missing browser session on every run; errors still show


def timed(action: Callable[[], AppTest]) -> float:
    start = time.perf_counter()
    at = action()
    elapsed = time.perf_counter() - start
    if at.exception or at.error:
        raise SystemExit(f"the app failed: {[e.value for e in [*at.exception, *at.error]]}")
    return elapsed


def report(what: str, seconds: list[float]) -> None:
    shown = ", ".join(f"{s:.2f}" for s in seconds)
    print(f"{what}: median {statistics.median(seconds):.2f} s over {len(seconds)} runs ({shown})", flush=True)


def fresh_server() -> tuple[AppTest, float]:
    """A first session on a server that has just started (nothing cached, the model loaded anew), and its time."""
    st.cache_resource.clear()
    at = AppTest.from_file(str(APP_PATH), default_timeout=600)
    return at, timed(at.run)


def open_view(at: AppTest, view: str) -> AppTest:
    at.session_state[vv.VIEW_KEY] = view
    return at.run()


def switching(at: AppTest, patients: list[str]) -> list[float]:
    """The time of each switch to one of ``patients``, in turn."""
    return [timed(lambda p=p: at.selectbox(key="patient").set_value(p).run()) for p in patients]


def editing(at: AppTest, doses: list[float]) -> list[float]:
    """The time of each full rerun after setting plan 1's dose to one of ``doses``, in turn."""
    return [timed(lambda d=d: at.number_input(key="plan0_dose").set_value(d).run()) for d in doses]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: the demo PBC model)")
    parser.add_argument("--runs", type=int, default=5, help="patients switched to, per view")
    parser.add_argument(
        "--switch-to", nargs="+", default=None, help="patients switched to (default: --runs spread over the data)"
    )
    parser.add_argument("--edit-patients", nargs="+", default=["1", "32"], help="patients whose plan is edited")
    args = parser.parse_args()
    os.environ[vs.MODEL_ENV] = str(vs.resolve_model_dir(args.model, train_demo=False))
    ids = vs.DashboardSession.load(os.environ[vs.MODEL_ENV]).subject_ids()
    patients = args.switch_to or ids[1 :: max(1, len(ids) // args.runs)][: args.runs]  # spread; the first is shown at start
    print(f"patients switched to: {', '.join(patients)}", flush=True)

    starts, switches = [], {}
    for view in ("Timeline", "Forecast", "What-if"):
        at, start = fresh_server()
        starts.append(start)
        open_view(at, view)
        switches[view] = switching(at, patients)
    report("server start (loads the model, shows the first patient's timeline)", starts)
    report(
        "first patient view (a new session on a running server)",
        [timed(AppTest.from_file(str(APP_PATH), default_timeout=600).run) for _ in range(args.runs)],
    )
    for view, seconds in switches.items():
        report(f"switching patients with the {view} view open", seconds)

    for patient in args.edit_patients:
        at, _ = fresh_server()
        open_view(at.selectbox(key="patient").set_value(patient).run(), "What-if")
        report(f"full rerun after a plan edit (What-if view, patient {patient})", editing(at, [0.9, 0.8, 0.7, 0.6, 0.5]))


if __name__ == "__main__":
    main()
