"""Reports: a patient's treatment counterfactuals, an in-silico trial, and the model card.

Each is one self-contained HTML file (Jinja2 with autoescaping, figures as embedded
PNG, no JavaScript), optionally also a PDF (WeasyPrint)::

    from vpatient.report import patient_report, trial_report, model_card
    patient_report(sim, record, [plan_a, plan_b], seed=0).write("report.html", pdf="report.pdf")
"""

from vpatient.report.card import ModelCard, model_card
from vpatient.report.patient import PatientReport, patient_report
from vpatient.report.render import num, render, write_outputs
from vpatient.report.trial import TrialReport, trial_report

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
