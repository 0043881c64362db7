"""Pooling an effect estimated once per ensemble member: Rubin's rules.

Each member of an ensemble realises its own share of an in-silico trial and gives its
own estimate of the effect with its own sampling variance. The members stand for the
models that the training data could equally have produced, as multiple imputations
stand for the data that could have been observed, so the estimates pool the same way
(Rubin, *Multiple Imputation for Nonresponse in Surveys*, 1987, ch. 3):

- estimate: the mean of the members' estimates;
- total variance T = W + (1 + 1/K) B, with W the mean within-member (sampling) variance
  and B the variance between the members' estimates (the law of total variance, with
  the finite-K correction);
- the interval uses Student's t with Rubin's degrees of freedom
  (K - 1) (1 + W / ((1 + 1/K) B))^2, so a small ensemble widens it further.

With one member there is no between-member term, and the interval is the plain normal
one of the single estimate.

Rubin's rules assume every member analyses the same patients (as when every member
replays every real patient). When the members realise *disjoint* shares of the patients
(a virtual population split between them), each estimate carries the sampling error of
its share, which inflates both W and B; then (``disjoint=True``) the sampling variance of
the pooled mean is W / K and the model's own variance is what B holds beyond W:
T = W / K + (1 + 1/K) max(B - W, 0), with the degrees of freedom computed alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["PooledEstimate", "pool"]


@dataclass(frozen=True)
class PooledEstimate:
    """An effect pooled over ensemble members, on the scale it was estimated on (e.g. log HR)."""

    estimate: float
    se: float  # sqrt of the total variance
    within_se: float  # sqrt of W: the virtual sample's sampling error alone
    between_sd: float  # sqrt of B: the spread between members' estimates
    df: float  # degrees of freedom of the t reference (inf: normal)
    members: int

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """The two-sided interval at ``level``."""
        half = self.critical(level) * self.se
        return self.estimate - half, self.estimate + half

    def critical(self, level: float = 0.95) -> float:
        q = 0.5 + level / 2
        return float(stats.norm.ppf(q)) if math.isinf(self.df) else float(stats.t.ppf(q, self.df))

    def p_value(self, null: float = 0.0) -> float:
        """Two-sided p-value of the estimate against ``null``."""
        if not self.se > 0:
            return float("nan")
        z = abs(self.estimate - null) / self.se
        return float(2 * (stats.norm.sf(z) if math.isinf(self.df) else stats.t.sf(z, self.df)))


def pool(estimates: Sequence[float], variances: Sequence[float], disjoint: bool = False) -> PooledEstimate:
    """Rubin's rules over the members' ``estimates`` and their sampling ``variances`` (module docstring).

    ``disjoint``: the members' estimates come from different patients (module docstring).
    """
    q = np.asarray(estimates, dtype=float)
    u = np.asarray(variances, dtype=float)
    if q.shape != u.shape or q.size == 0:
        raise ValueError(f"{q.size} estimates and {u.size} variances: give one variance per estimate, at least one")
    k = q.size
    within = float(u.mean())
    if k == 1:
        return PooledEstimate(float(q[0]), math.sqrt(within), math.sqrt(within), 0.0, math.inf, 1)
    between = float(q.var(ddof=1))
    if disjoint:
        within, between = within / k, max(between - within, 0.0)
    total = within + (1 + 1 / k) * between
    extra = (1 + 1 / k) * between
    df = math.inf if extra <= 0 else (k - 1) * (1 + within / extra) ** 2
    return PooledEstimate(float(q.mean()), math.sqrt(total), math.sqrt(within), math.sqrt(between), df, k)
