"""Numbers as people read them: the one formatter of the dashboard, the reports and the command line.

A value a person reads gets sensible significant digits and never scientific notation
(``2210.4`` -> ``2,210``; ``6.29586025626985`` -> ``6.3``), probabilities read as
percentages (``0.562`` -> ``56%``), differences of probabilities as percentage points,
booleans as yes/no, whole numbers as whole numbers (``312.0`` -> ``312``), and units stay
beside their value. Machine outputs (JSON, CSV downloads) keep the unrounded numbers.
"""

from __future__ import annotations

import math
import re
from numbers import Integral, Real

import numpy as np

__all__ = [
    "INFORMATION_UNIT",
    "MISSING",
    "SCIENTIFIC",
    "number",
    "percent",
    "percentage_points",
    "span",
    "value",
    "with_unit",
    "yes_no",
]

#: The unit every expected information gain is shown in, on every surface (dashboard, reports, CLI, figures).
#: Nats, not bits: the estimator works with natural logarithms, the committed benchmark results and the
#: cost-curve figures are in nats, and one unit with no conversion anywhere leaves nothing to convert wrongly.
INFORMATION_UNIT = "nats"

#: What a missing or non-finite value shows as.
MISSING = "–"

#: Scientific notation as Python or a spreadsheet writes it (``2.21e+03``, ``6E-5``): never shown to a person.
SCIENTIFIC = re.compile(r"\d(?:\.\d*)?[eE][+-]?\d+")

#: Most decimals shown: a value smaller than half the last one reads as 0.
MAX_DECIMALS = 6


def _finite(x: object) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        f = float(x)  # type: ignore[arg-type]  # numpy scalars and strings of numbers too
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def number(x: object, digits: int = 3, signed: bool = False) -> str:
    """``x`` to ``digits`` significant digits in plain notation, thousands separated, trailing zeros dropped.

    Whole numbers of any size keep every digit (``312.0`` -> ``312``, ``12345`` -> ``12,345``);
    other values round to ``digits`` significant digits (``2210.4`` -> ``2,210``,
    ``0.000158`` -> ``0.000158``) and to at most six decimals. ``signed`` puts ``+`` before a
    positive value (differences). A missing or non-finite value shows as ``–``.
    """
    f = _finite(x)
    if f is None:
        return MISSING
    if f == int(f):  # every float from 2**53 up is whole: no rounding to overflow
        decimals = 0
    else:
        magnitude = math.floor(math.log10(abs(f)))
        places = digits - 1 - magnitude  # negative for large values: 2210.4 rounds to the tens
        f = round(f, places)
        decimals = min(max(places, 0), MAX_DECIMALS)
    text = f"{f:,.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text.lstrip("-").replace(",", "").strip("0.") == "":
        text = "0"  # no "-0"
    return f"+{text}" if signed and not text.startswith("-") and text != "0" else text


def percent(p: object, signed: bool = False) -> str:
    """A probability as a percentage: whole percents between 1% and 99%, one decimal nearer the ends.

    ``0.562`` -> ``56%``, ``0.004`` -> ``0.4%``, ``0.9996`` -> ``>99.9%``; never ``100%`` or ``0%`` for a
    probability strictly between them. ``signed`` for a change (``+3%``).
    """
    f = _finite(p)
    if f is None:
        return MISSING
    pct = 100 * f
    if not signed and 0 < f < 1:
        if pct < 0.05:
            return "<0.1%"
        if pct > 99.95:
            return ">99.9%"
    decimals = 0 if 1 <= abs(pct) <= 99 else 1
    return f"{number(round(pct, decimals), digits=4, signed=signed)}%"


def percentage_points(d: object, unit: bool = True) -> str:
    """A difference of two probabilities in signed percentage points, two significant digits: ``0.0123`` -> ``+1.2 pp``,
    ``0.00021`` -> ``+0.021 pp`` (a small difference shows as small, not as none).

    ``unit=False`` leaves out `` pp`` (the bounds of an interval that names it once).
    """
    f = _finite(d)
    if f is None:
        return MISSING
    text = number(100 * f, digits=2, signed=True)
    return f"{text} pp" if unit else text


def span(lower: object, upper: object, show=number) -> str:
    """An interval as ``0.8-2.5``, or ``-0.5 to +3`` when a bound is negative (a dash would read as a minus)."""
    lo, hi = show(lower), show(upper)
    if lo.startswith("-") or hi.startswith("-") or lo.startswith("+"):
        return f"{lo} to {hi}"
    return f"{lo}-{hi}"


def yes_no(flag: object) -> str:
    """``True`` -> ``yes``, ``False`` -> ``no``; anything else as text."""
    if isinstance(flag, bool | np.bool_):
        return "yes" if flag else "no"
    return MISSING if flag is None else str(flag)


def with_unit(text: str, unit: str | None) -> str:
    """``text`` followed by its unit, when there is one (``1.4 mg/dl``); a percentage keeps its sign alone."""
    return f"{text} {unit}" if unit and text != MISSING else text


def value(x: object, digits: int = 3) -> str:
    """Any cell a person reads: yes/no for a boolean, whole numbers whole, other numbers by :func:`number`, text as it is."""
    if isinstance(x, bool | np.bool_):
        return yes_no(x)
    if isinstance(x, Integral | np.integer):
        return number(int(x))
    if isinstance(x, Real | np.floating):
        return number(x, digits)
    return MISSING if x is None else str(x)
