"""UCUM units of the FHIR reader: which units are the same, and how to convert a value between them.

A small table rather than a UCUM library: a lab value is converted only within one
dimension, by a scale factor (mg/dL to g/L, 10*9/L to 10*3/uL, h to min). Units of
different dimensions are refused, including substance to mass concentration
(umol/L to mg/dL needs the molar mass of the analyte, which no unit says), and so are
affine units (Cel to [degF]). A unit outside the table converts only to itself.

Config units may be written loosely (``mg/dl``, ``U/l``, ``10^3/uL``, ``mcg/mL``,
``mmHg``): :func:`canonical_unit` matches them case-insensitively, after a few common
spellings, to the table's UCUM code. Annotations in braces (``{cells}/uL``,
``{score}``) are ignored, as UCUM says they carry no meaning.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["UnitMismatch", "canonical_unit", "convert", "same_unit"]

# dimension -> {UCUM code: size in the dimension's first unit}
_DIMENSIONS: Mapping[str, Mapping[str, float]] = {
    "mass concentration": {
        "g/L": 1.0,
        "g/dL": 10.0,
        "g/mL": 1e3,
        "mg/mL": 1.0,
        "mg/dL": 1e-2,
        "mg/L": 1e-3,
        "ug/mL": 1e-3,
        "ug/dL": 1e-5,
        "ug/L": 1e-6,
        "ng/mL": 1e-6,
        "ng/dL": 1e-8,
        "ng/L": 1e-9,
        "pg/mL": 1e-9,
    },
    "substance concentration": {"mol/L": 1.0, "mmol/L": 1e-3, "umol/L": 1e-6, "nmol/L": 1e-9, "pmol/L": 1e-12},
    "catalytic concentration": {"U/L": 1.0, "U/mL": 1e3, "kU/L": 1e3, "mU/L": 1e-3, "mU/mL": 1.0, "U/dL": 10.0},
    "arbitrary concentration": {"[IU]/L": 1.0, "[IU]/mL": 1e3, "m[IU]/L": 1e-3, "m[IU]/mL": 1.0},
    "number concentration": {
        "/L": 1.0,
        "/mL": 1e3,
        "/uL": 1e6,
        "/mm3": 1e6,
        "10*3/mL": 1e6,
        "10*3/uL": 1e9,
        "10*3/mm3": 1e9,
        "10*6/uL": 1e12,
        "10*6/mL": 1e9,
        "10*9/L": 1e9,
        "10*12/L": 1e12,
    },
    "time": {"s": 1.0, "ms": 1e-3, "min": 60.0, "h": 3600.0, "d": 86400.0, "wk": 604800.0, "mo": 2629800.0, "a": 31557600.0},
    "fraction": {"1": 1.0, "%": 1e-2, "[ppm]": 1e-6},
    "mass": {"g": 1.0, "kg": 1e3, "mg": 1e-3, "ug": 1e-6, "ng": 1e-9, "[lb_av]": 453.59237, "[oz_av]": 28.349523125},
    "length": {"m": 1.0, "cm": 1e-2, "mm": 1e-3, "km": 1e3, "[in_i]": 0.0254, "[ft_i]": 0.3048},
    "volume": {"L": 1.0, "dL": 0.1, "mL": 1e-3, "uL": 1e-6},
    "pressure": {"Pa": 1.0, "kPa": 1e3, "mm[Hg]": 133.322387415, "cm[H2O]": 98.0665},
    "frequency": {"/min": 1.0, "/s": 60.0, "/h": 1 / 60, "/d": 1 / 1440},
    "volume rate": {"mL/min": 1.0, "L/min": 1e3, "mL/s": 60.0, "L/h": 1e3 / 60},
    "filtration rate per area": {"mL/min/{1.73_m2}": 1.0},
    "mass per area": {"kg/m2": 1.0, "g/m2": 1e-3},
    "area": {"m2": 1.0, "cm2": 1e-4},
    "temperature (Celsius)": {"Cel": 1.0},
    "temperature (Fahrenheit)": {"[degF]": 1.0},
}

#: UCUM code -> (dimension, size).
_UNITS = {code: (dimension, size) for dimension, units in _DIMENSIONS.items() for code, size in units.items()}
_BY_FOLDED = {code.casefold(): code for code in _UNITS}
if len(_BY_FOLDED) != len(_UNITS):  # the loose match below needs codes that differ in more than case
    raise RuntimeError("two units of the table differ only in case")

# Common spellings of the same units (left: a pattern, right: its UCUM form), applied in order.
_SPELLINGS = (
    (re.compile(r"[µμ]"), "u"),
    (re.compile(r"mcg"), "ug"),
    (re.compile(r"\^"), "*"),
    (re.compile(r"^x?10\*"), "10*"),
    (re.compile(r"^(k|thou)/", re.IGNORECASE), "10*3/"),
    (re.compile(r"^(lbs?|pounds?)$", re.IGNORECASE), "[lb_av]"),
    (re.compile(r"^(in|inch|inches)$", re.IGNORECASE), "[in_i]"),
    (re.compile(r"^mmhg$", re.IGNORECASE), "mm[Hg]"),
    (re.compile(r"^iu/", re.IGNORECASE), "[IU]/"),
    (re.compile(r"^(hr|hrs|hour|hours)$", re.IGNORECASE), "h"),
    (re.compile(r"^(sec|secs|seconds?)$", re.IGNORECASE), "s"),
    (re.compile(r"^(yr|yrs|years?)$", re.IGNORECASE), "a"),
    (re.compile(r"^(days?)$", re.IGNORECASE), "d"),
    (re.compile(r"^(percent)$", re.IGNORECASE), "%"),
    (re.compile(r"^(bpm|beats/min)$", re.IGNORECASE), "/min"),
    (re.compile(r"^degc$", re.IGNORECASE), "Cel"),
    (re.compile(r"^degf$", re.IGNORECASE), "[degF]"),
)
_ANNOTATION = re.compile(r"\{[^{}]*\}")


class UnitMismatch(ValueError):
    """A value's unit that cannot be converted to a variable's unit; the message names both."""


def canonical_unit(unit: str) -> str | None:
    """The table's UCUM code for ``unit`` written loosely (``mg/dl`` -> ``mg/dL``); None when not in the table."""
    text = unit.strip()
    if text in _UNITS:
        return text
    if text.casefold() in _BY_FOLDED:
        return _BY_FOLDED[text.casefold()]
    for pattern, replacement in _SPELLINGS:
        text = pattern.sub(replacement, text)
    plain = _ANNOTATION.sub("", text) if text not in _UNITS else text
    for candidate in (text, plain or "1"):
        found = _BY_FOLDED.get(candidate.casefold())
        if found is not None:
            return found
    return None


def same_unit(a: str, b: str) -> bool:
    """Whether two unit strings name the same unit (the same text, or the same code of the table)."""
    if a.strip() == b.strip():
        return True
    known = canonical_unit(a)
    return known is not None and known == canonical_unit(b)


def convert(value: float, unit: str, target: str) -> float:
    """``value`` in ``unit``, expressed in ``target``: unchanged (bit for bit) when they are the same unit.

    Raises UnitMismatch naming both units when they are of different dimensions or
    either is not in the table.
    """
    if same_unit(unit, target):
        return value
    source_code, target_code = canonical_unit(unit), canonical_unit(target)
    if source_code is None or target_code is None:
        unknown = unit if source_code is None else target
        raise UnitMismatch(
            f"cannot convert {unit!r} to {target!r}: {unknown!r} is not a unit vpatient converts "
            "(give the value in the variable's unit)"
        )
    (source_dimension, source_size), (target_dimension, target_size) = _UNITS[source_code], _UNITS[target_code]
    if source_dimension != target_dimension:
        raise UnitMismatch(
            f"cannot convert {unit!r} ({source_dimension}) to {target!r} ({target_dimension}): "
            "different dimensions (a substance to a mass concentration needs the analyte's molar mass)"
        )
    return value * (source_size / target_size)
