"""Which of the dashboard's views runs: only the one shown computes.

The app's views are ``st.tabs`` that track the open tab (``on_change="rerun"``): switching
tabs reruns the script, and each view's body runs inside its tab only when that tab is
open, so a rerun after an edit, or a switch of patient, computes what is on the screen and
nothing else (results stay cached per patient in :class:`~vpatient.dashboard.session.DashboardSession`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["VIEWS", "VIEW_INPUTS", "VIEW_KEY", "keep_view_inputs", "when_open"]

#: The views, in the order of their tabs.
VIEWS = ("Timeline", "Forecast", "What-if", "Next test", "Model card", "Cohort & trial")
#: The session-state key of the open view (a view's label): a test or a link can choose it.
VIEW_KEY = "view"


def when_open(tab: Any) -> Iterator[None]:
    """Run the body of ``for _ in when_open(tab):`` once, inside ``tab``, when it is the open tab; never otherwise.

    ``tab`` is one of ``st.tabs(..., on_change="rerun")``: its ``.open`` says whether it is
    shown (None, for tabs that do not track it, runs the body: every tab then computes). A
    ``for`` keeps each view's body at the indentation of the ``with tab:`` it replaces.
    """
    if tab.open is False:
        return
    with tab:
        yield


#: Key prefixes of the inputs inside the views (plan editors, next-test target). Streamlit forgets a widget's
#: value on a run that does not draw it, so without this a plan edited under What-if would be reset by a look
#: at the forecast. A new input inside a view keeps its value across tab switches when its key starts with one of these
#: (never a button's key: Streamlit refuses to have a button's value set).
VIEW_INPUTS = ("plan", "target_", "next_", "forecast_", "whatif_", "trial_")


def keep_view_inputs(state: Any) -> None:
    """Carry the values of the views' inputs (keys starting with :data:`VIEW_INPUTS`) through runs that do not draw them.

    ``state`` is ``st.session_state``; writing a widget's value back as a plain value before the
    widget is drawn is Streamlit's documented way to keep it when the widget is not drawn.
    """
    for key in [k for k in state if isinstance(k, str) and k.startswith(VIEW_INPUTS)]:
        state[key] = state[key]
