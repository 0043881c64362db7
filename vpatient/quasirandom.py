"""Scrambled Sobol draws: quasi-random uniforms and normals that fill their space evenly.

Monte Carlo estimates over a small pool (the next-test gain, for one) vary less from seed
to seed when the pool's draws are spread evenly rather than independently: on the
linear-Gaussian and binary closed forms of ``tests/test_policy.py`` the gain's error
falls several-fold at the same number of draws. Every draw is seeded from a
``torch.Generator``, so a seed still gives the same numbers.
"""

from __future__ import annotations

import torch
from torch.quasirandom import SobolEngine

__all__ = ["sobol_normal", "sobol_uniform"]

# Inverse-CDF maps of 0 or 1 give infinities; Sobol's first point is 0 before scrambling.
_EDGE = 1e-7


def sobol_uniform(n: int, dim: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` points of a scrambled Sobol sequence in [0, 1)^dim, scrambled from ``generator``: (n, dim)."""
    if dim == 0 or n == 0:
        return torch.empty((n, dim), dtype=dtype)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    engine = SobolEngine(dim, scramble=True, seed=seed)
    return engine.draw(n, dtype=torch.float64).clamp(_EDGE, 1 - _EDGE).to(dtype)


def sobol_normal(n: int, dim: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` quasi-random standard normal vectors (the inverse normal CDF of :func:`sobol_uniform`): (n, dim)."""
    u = sobol_uniform(n, dim, generator, torch.float64)
    return (torch.special.ndtri(u)).to(dtype)
