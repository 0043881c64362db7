"""Cost-aware curves: what an order of tests buys as the money is spent.

A curve is a step function of the cumulative cost: a test's result counts once it is
paid for. :func:`bought` walks an order under a budget, :func:`step_curve` reads a step
function at given costs, :func:`step_area` is its mean height up to a budget (the score of
an order: the area under its loss-versus-cost curve, divided by the budget), and
:func:`random_orders` gives the orders a random policy averages over. The next-test
recommendation (:mod:`vpatient.policy`) and its benchmark both draw on these.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = ["MAX_ORDERS", "bought", "cost_grid", "random_orders", "step_area", "step_curve"]

#: Orders of a set of tests enumerated exhaustively up to this many (six tests); beyond, sampled or built greedily.
MAX_ORDERS = 720


def bought(order: Sequence[str], costs: Mapping[str, float], budget: float | None) -> list[tuple[str, float]]:
    """The tests of ``order`` bought in turn while the budget allows (one that does not fit is skipped), with the cost spent after each."""
    spent, out = 0.0, []
    for name in order:
        if budget is not None and spent + costs[name] > budget + 1e-12:
            continue
        spent += costs[name]
        out.append((name, spent))
    return out


def step_curve(points: Sequence[tuple[float, float]], at: Sequence[float]) -> np.ndarray:
    """A step function, defined by (cost, value) points sorted by cost starting at cost 0, read at the costs ``at``."""
    xs = np.asarray([c for c, _ in points], dtype=float)
    ys = np.asarray([v for _, v in points], dtype=float)
    return ys[np.searchsorted(xs, np.asarray(at, dtype=float) + 1e-12, side="right") - 1]


def step_area(points: Sequence[tuple[float, float]], budget: float) -> float:
    """Mean height over costs [0, budget] of the step function through (cost, value) points (sorted, first at cost 0).

    The value after the last point holds to the budget; steps beyond the budget do not count.
    """
    if not points or points[0][0] != 0.0:
        raise ValueError("a cost curve starts at cost 0")
    if not (budget > 0):
        raise ValueError("the budget must be > 0")
    area = 0.0
    for (c0, v0), (c1, _) in zip(points, [*points[1:], (math.inf, math.nan)], strict=True):
        if c0 >= budget:
            break
        area += v0 * (min(c1, budget) - c0)
    return area / budget


def cost_grid(costs: Mapping[str, float], budget: float | None = None) -> list[float]:
    """Every cost where some order's curve can step: the sums of subsets of the tests' costs (up to ``budget``)."""
    sums = {0.0}
    for c in costs.values():
        sums |= {round(s + c, 9) for s in sums}
    return sorted(s for s in sums if budget is None or s <= budget + 1e-9)


def random_orders(tests: Sequence[str], generator: torch.Generator, limit: int = MAX_ORDERS) -> list[list[str]]:
    """Every order of ``tests`` when there are at most ``limit`` orders, else ``limit`` random ones (seeded by ``generator``)."""
    if math.factorial(len(tests)) <= limit:
        return [list(order) for order in itertools.permutations(tests)]
    return [[tests[i] for i in torch.randperm(len(tests), generator=generator).tolist()] for _ in range(limit)]
