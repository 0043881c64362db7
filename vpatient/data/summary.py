"""What a cohort contains: counts, visits, missingness, events and arms."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from vpatient.data.cohort import Cohort, arm_of
from vpatient.schemas import OBSERVED_KINDS, VariableKind
from vpatient.tables import markdown_table

__all__ = ["CohortSummary", "summarize"]


@dataclass(frozen=True)
class CohortSummary:
    """Tables describing a cohort; ``to_markdown`` renders them for a terminal or a file."""

    name: str
    overview: pd.DataFrame  # one row per quantity
    variables: pd.DataFrame  # one row per observed / imaging variable
    events: pd.DataFrame  # events per kind and arm
    arms: pd.DataFrame  # subjects per arm

    def to_markdown(self) -> str:
        parts = [
            f"# Cohort {self.name}",
            "## Overview",
            markdown_table(self.overview),
            "## Arms (treatment at baseline)",
            markdown_table(self.arms),
            "## Events",
            markdown_table(self.events),
            "## Variables (missingness per visit)",
            markdown_table(self.variables),
        ]
        return "\n\n".join(parts) + "\n"


def summarize(cohort: Cohort) -> CohortSummary:
    """Summarise a cohort: the numbers a user checks first after loading data."""
    records = cohort.records
    config = cohort.config
    visits = np.array([len(r.visit_times()) for r in records])
    follow_up = np.array([r.end_of_followup for r in records])
    unit = config.time_unit.value
    overview = pd.DataFrame(
        {
            "value": [
                len(records),
                int(visits.sum()),
                float(np.median(visits)) if len(visits) else float("nan"),
                int(visits.min()) if len(visits) else 0,
                int(visits.max()) if len(visits) else 0,
                float(np.median(follow_up)) if len(follow_up) else float("nan"),
                float(follow_up.max()) if len(follow_up) else float("nan"),
            ]
        },
        index=pd.Index(
            [
                "subjects",
                "visits",
                "visits per subject (median)",
                "visits per subject (min)",
                "visits per subject (max)",
                f"follow-up, {unit} (median)",
                f"follow-up, {unit} (max)",
            ],
            name="quantity",
        ),
    )
    n_visits = max(int(visits.sum()), 1)
    measured: Counter[str] = Counter()
    for r in records:
        measured.update(o.variable for o in r.observations)
        measured.update(s.modality for s in r.imaging)
    rows = []
    for var in config.of_kind(*OBSERVED_KINDS, VariableKind.IMAGING_EMBEDDING):
        rows.append(
            {
                "variable": var.name,
                "kind": var.kind.value,
                "unit": var.unit or "",
                "test": var.test or "",
                "measured": measured[var.name],
                "missing (% of visits)": round(100 * (1 - measured[var.name] / n_visits), 1),
            }
        )
    variables = pd.DataFrame(rows).set_index("variable") if rows else pd.DataFrame()
    arms = pd.Series([arm_of(r) for r in records], name="arm")
    arm_counts = arms.value_counts().sort_index().rename("subjects").to_frame()
    event_rows = []
    for kind in config.event_kinds:
        has = pd.Series([any(e.kind == kind for e in r.events) for r in records])
        row = {"event": kind, "subjects": int(has.sum())}
        row |= {f"arm {a}": int(has[arms == a].sum()) for a in arm_counts.index}
        event_rows.append(row)
    events = pd.DataFrame(event_rows).set_index("event") if event_rows else pd.DataFrame()
    return CohortSummary(cohort.name, overview, variables, events, arm_counts)
