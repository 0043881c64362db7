"""Numbers as people read them (vpatient.formatting): the cases the issue found on screen, and a fuzz of the promises."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpatient.formatting import SCIENTIFIC, number, percent, percentage_points, span, value, with_unit, yes_no


@pytest.mark.parametrize(
    ("x", "shown"),
    [
        (2.21e03, "2,210"),  # was "2.21e+03 U/l"
        (2210.4, "2,210"),
        (6.29586025626985, "6.3"),  # was "follow-up 6.29586025626985"
        (312.0, "312"),  # was "subjects 312.0"
        (12345, "12,345"),  # a whole number keeps every digit
        (12345.6, "12,300"),
        (0.000158, "0.000158"),  # was "0.000158" or "1.58e-04": plain either way
        (-4.46e-05, "-0.000045"),  # was "-4.46e-05": six decimals at most
        (1e-9, "0"),
        (-0.0, "0"),
        (1.25e1, "12.5"),  # was "1.25 x 10^1"
        (9.996, "10"),
        (float("nan"), "–"),
        (None, "–"),
        (math.inf, "–"),
    ],
)
def test_number_reads_plainly(x, shown):
    assert number(x) == shown


def test_signed_numbers_and_units():
    assert number(0.25, signed=True) == "+0.25" and number(-0.25, signed=True) == "-0.25" and number(0.0, signed=True) == "0"
    assert with_unit(number(1.4), "mg/dl") == "1.4 mg/dl" and with_unit("–", "mg/dl") == "–" and with_unit("3", None) == "3"


@pytest.mark.parametrize(
    ("p", "shown"),
    [(0.562, "56%"), (0.004, "0.4%"), (0.995, "99.5%"), (0.9996, ">99.9%"), (0.0003, "<0.1%"), (0.0, "0%"), (1.0, "100%")],
)
def test_probabilities_read_as_percentages(p, shown):
    assert percent(p) == shown


def test_differences_of_probabilities_read_in_percentage_points():
    assert percentage_points(0.0123) == "+1.2 pp"
    assert percentage_points(-0.02) == "-2 pp"
    assert percentage_points(2.11e-4) == "+0.021 pp"  # small, not "0 pp"
    assert percentage_points(0.0123, unit=False) == "+1.2"


def test_intervals_use_a_dash_unless_a_bound_is_signed():
    assert span(0.8, 2.5) == "0.8-2.5"
    assert span(-0.5, 3.0) == "-0.5 to 3"
    assert span(0.64, 0.75, percent) == "64%-75%"


def test_cells_of_any_type():
    assert [yes_no(True), yes_no(np.bool_(False)), yes_no(None)] == ["yes", "no", "–"]
    assert [value(True), value(np.bool_(False)), value(np.int64(312)), value(np.float64(2210.4)), value("x")] == [
        "yes", "no", "312", "2,210", "x"
    ]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True, width=64))
def test_no_number_is_ever_shown_in_scientific_notation(x):
    for shown in (number(x), number(x, 2, signed=True), value(x)):
        assert not SCIENTIFIC.search(shown), shown
    if math.isfinite(x) and abs(x) < 1e12:
        # the digits shown are the value to within its last shown digit or the six-decimal floor
        parsed = float(number(x, 6).replace(",", ""))
        assert abs(parsed - x) <= max(abs(x) * 1e-5, 5e-7), (x, parsed)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0.0, max_value=1.0))
def test_every_probability_reads_as_a_percentage(p):
    shown = percent(p)
    assert shown.endswith("%") and not SCIENTIFIC.search(shown)
    if 0 < p < 1:
        assert shown not in ("0%", "100%")  # "certain" only when it is


def test_research_tables_read_plainly_but_keep_tiny_magnitudes():
    from vpatient.tables import format_number

    assert [format_number(v) for v in (5990.4, 12570.0, 312.0, True, None, float("nan"), float("inf"))] == [
        "5,990", "12,570", "312", "yes", "-", "-", "inf"
    ]  # fmt: skip
    assert format_number(4.174e-07) == "4.17e-07"  # a Monte Carlo error this small is not zero
    assert not any(SCIENTIFIC.search(format_number(v)) for v in (0.001, 0.5, 1e3, 5.99e3, 1e5, 1e15))
