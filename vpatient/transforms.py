"""Variable transforms (log, logit) and their inverses: the one place they are written."""

from __future__ import annotations

import numpy as np

from vpatient.schemas import Transform

__all__ = ["forward", "inverse"]


def forward(values: np.ndarray | float, transform: Transform) -> np.ndarray:
    """Natural scale -> modelling scale."""
    x = np.asarray(values, dtype=float)
    if transform == Transform.LOG:
        return np.log(x)
    if transform == Transform.LOGIT:
        return np.log(x) - np.log1p(-x)
    return x


def inverse(values: np.ndarray | float, transform: Transform) -> np.ndarray:
    """Modelling scale -> natural scale."""
    y = np.asarray(values, dtype=float)
    if transform == Transform.LOG:
        return np.exp(y)
    if transform == Transform.LOGIT:
        return 1.0 / (1.0 + np.exp(-y))
    return y
