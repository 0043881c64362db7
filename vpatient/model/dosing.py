"""The treatment control u(t): piecewise-constant doses, evaluated and integrated in torch.

A patient's doses are given at breakpoints ``dose_times`` (B, K), +inf padded, with
``doses`` (B, K, U) in force from each breakpoint on (see :mod:`vpatient.model.batch`).
Encoders read the dose in force and the cumulative dose at each visit; the dynamics read
the dose along the solver grid.
"""

from __future__ import annotations

import torch

__all__ = ["cumulative_dose", "dose_at_times"]


def dose_at_times(dose_times: torch.Tensor, doses: torch.Tensor, t: torch.Tensor, side: str = "right") -> torch.Tensor:
    """Dose of each treatment at times t. dose_times (B, K), doses (B, K, U), t (B, T) -> (B, T, U).

    ``side="right"``: the dose in force from t on; ``"left"``: the dose just before t.
    """
    idx = torch.searchsorted(dose_times.contiguous(), t.contiguous(), right=side == "right") - 1  # (B, T)
    idx = idx.clamp(min=0)
    return torch.gather(doses, 1, idx.unsqueeze(-1).expand(-1, -1, doses.shape[-1]))


def cumulative_dose(dose_times: torch.Tensor, doses: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Integral of the dose from 0 to t. Same shapes as dose_at_times."""
    start = dose_times.unsqueeze(1)  # (B, 1, K)
    end = torch.cat([dose_times[:, 1:], torch.full_like(dose_times[:, :1], float("inf"))], dim=1).unsqueeze(1)
    finite_start = torch.where(torch.isfinite(start), start, torch.zeros_like(start))
    covered = (torch.minimum(t.unsqueeze(-1), end) - finite_start).clamp(min=0)  # (B, T, K)
    covered = torch.where(torch.isfinite(start), covered, torch.zeros_like(covered))
    return torch.einsum("btk,bku->btu", covered, doses)
