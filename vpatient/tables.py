"""Plain-text and markdown rendering of result tables (no extra dependency)."""

from __future__ import annotations

import math

import pandas as pd

from vpatient import formatting

__all__ = ["format_number", "markdown_table"]


def format_number(value: object, digits: int = 3) -> str:
    """A number in a benchmark or command-line table: :func:`vpatient.formatting.value`, except tiny magnitudes.

    Below 0.001 a research table keeps ``digits`` significant digits (``4.17e-07``), where the
    clinician's formatter would round to six decimals: a Monte Carlo error or a p-value that
    small still has to be told apart from zero. Missing values show as ``-``, infinities as ``inf``.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and (0 < abs(value) < 1e-3 or math.isinf(value)):
        return f"{value:.{digits}g}"
    return formatting.value(value, digits)


def markdown_table(frame: pd.DataFrame, index: bool = True, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table of ``frame``."""
    data = frame.reset_index() if index else frame
    header = [str(c) for c in data.columns]
    rows = [[format_number(v, digits) for v in row] for row in data.itertuples(index=False)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
