"""Plain-text and markdown rendering of result tables (no extra dependency)."""

from __future__ import annotations

import math

import pandas as pd

__all__ = ["format_number", "markdown_table"]


def format_number(value: object, digits: int = 3) -> str:
    """A number as a person reads it: integers plain, floats to ``digits`` significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def markdown_table(frame: pd.DataFrame, index: bool = True, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table of ``frame``."""
    data = frame.reset_index() if index else frame
    header = [str(c) for c in data.columns]
    rows = [[format_number(v, digits) for v in row] for row in data.itertuples(index=False)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
