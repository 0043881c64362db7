"""Reports: a patient's treatment counterfactuals, an in-silico trial, and the model card.

Each is one self-contained HTML file (Jinja2 with autoescaping, figures as embedded
PNG, no JavaScript), optionally also a PDF (WeasyPrint)::

    from vpatient.report import patient_report, trial_report, model_card
    patient_report(sim, record, [plan_a, plan_b], seed=0).write("report.html", pdf="report.pdf")
"""

from __future__ import annotations

import importlib

# Loaded on first use, so that `vpatient report --help` (and every other command) starts
# without importing matplotlib, Jinja2 and the simulator.
_LAZY = {
    "ModelCard": "card",
    "model_card": "card",
    "PatientReport": "patient",
    "patient_report": "patient",
    "num": "render",
    "render": "render",
    "write_outputs": "render",
    "TrialReport": "insilico_trial",
    "trial_report": "insilico_trial",
}

__all__ = [
    "ModelCard",
    "PatientReport",
    "TrialReport",
    "model_card",
    "num",
    "patient_report",
    "render",
    "trial_report",
    "write_outputs",
]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(f"vpatient.report.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'vpatient.report' has no attribute {name!r}")
