"""Encoders: each piece of evidence becomes a Gaussian expert over the initial latent state.

One small network per diagnostic test (the test's variables at one visit, with their
masks, the visit time and the treatment received so far), one for the static
covariates and one for the bag of history codes. Experts are conditionally independent
pieces of evidence given z0 under the generative model, which is what makes their
product the right way to combine them.
"""

from __future__ import annotations

import torch
from torch import nn

from vpatient.model.batch import ExpertGroup, FeatureLayout, PatientBatch
from vpatient.model.dosing import cumulative_dose, dose_at_times

__all__ = ["VisitExperts"]

_MIN_LOGVAR, _MAX_LOGVAR = -9.0, 6.0


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, n_out))


class _GaussianHead(nn.Module):
    def __init__(self, n_in: int, hidden: int, latent_dim: int):
        super().__init__()
        self.net = _mlp(n_in, hidden, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.net(x).chunk(2, dim=-1)
        return mean, torch.exp(-logvar.clamp(_MIN_LOGVAR, _MAX_LOGVAR))  # mean, precision


class VisitExperts(nn.Module):
    """All experts of a batch: per (visit, test group), plus static and history."""

    def __init__(self, layout: FeatureLayout, latent_dim: int, hidden: int, time_scale: float = 1.0):
        super().__init__()
        self.layout = layout
        self.time_scale = time_scale  # times (and dose x time) enter the experts in units of it
        n_static = len(layout.static)
        n_treat = len(layout.treatments)
        context = 2 + 2 * n_treat + 2 * n_static  # time, log1p time, dose now, cumulative dose, static and mask
        self.group_heads = nn.ModuleDict()
        for g in layout.groups:
            n_ord = len(g.ordinal)
            n_in = 2 * (len(g.continuous) + len(g.binary) + n_ord + len(g.imaging)) + context
            self.group_heads[g.name] = _GaussianHead(n_in, hidden, latent_dim)
        self.static_head = _GaussianHead(2 * n_static, hidden, latent_dim) if n_static else None
        self.history_head = _GaussianHead(len(layout.history), hidden, latent_dim) if layout.history else None

    def group_features(self, group: ExpertGroup, batch: PatientBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (B, T, F) of one group's expert and where the group was measured (B, T).

        Each kind contributes its masked values and its mask; ordinal classes are scaled
        to [0, 1] so that every input has a comparable range.
        """
        n_levels = torch.tensor([len(levels) - 1 for levels in self.layout.ordinal_levels], dtype=torch.float32)
        blocks = (
            (group.continuous, batch.continuous, batch.continuous_mask, None),
            (group.binary, batch.binary, batch.binary_mask, None),
            (group.ordinal, batch.ordinal.float(), batch.ordinal_mask, n_levels),
            (group.imaging, batch.imaging, batch.imaging_mask, None),
        )
        parts, masks = [], []
        for index, values, mask, scale in blocks:
            if not index:
                continue
            idx = list(index)
            m = mask[..., idx]
            v = values[..., idx] if scale is None else values[..., idx] / scale[idx]
            parts += [v * m, m]
            masks.append(m)
        measured = torch.cat(masks, dim=-1).amax(dim=-1) * batch.visit_mask
        return torch.cat(parts, dim=-1), measured

    def context(self, batch: PatientBatch) -> torch.Tensor:
        """Per-visit context (B, T, C): time, treatment now and so far, statics; times in units of the time scale."""
        dose = dose_at_times(batch.dose_times, batch.doses, batch.times)
        cum = cumulative_dose(batch.dose_times, batch.doses, batch.times) / self.time_scale
        t = batch.times / self.time_scale
        static = (batch.static * batch.static_mask).unsqueeze(1).expand(-1, t.shape[1], -1)
        smask = batch.static_mask.unsqueeze(1).expand(-1, t.shape[1], -1)
        return torch.cat(
            [(t / 5.0).unsqueeze(-1), torch.log1p(t.clamp(min=0)).unsqueeze(-1), dose, cum / 5.0, static, smask], dim=-1
        )

    def forward(self, batch: PatientBatch, cutoff: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Experts seen up to ``cutoff`` (B,): means, precisions (B, N, L) and presence (B, N)."""
        seen = (batch.times <= cutoff.unsqueeze(-1)).float() * batch.visit_mask  # (B, T)
        ctx = self.context(batch)
        means, precisions, present = [], [], []
        for g in self.layout.groups:
            features, measured = self.group_features(g, batch)
            mean, precision = self.group_heads[g.name](torch.cat([features, ctx], dim=-1))
            means.append(mean)
            precisions.append(precision)
            present.append(measured * seen)
        if self.static_head is not None:
            mean, precision = self.static_head(torch.cat([batch.static * batch.static_mask, batch.static_mask], dim=-1))
            means.append(mean.unsqueeze(1))
            precisions.append(precision.unsqueeze(1))
            present.append(batch.static_mask.amax(dim=-1, keepdim=True))
        if self.history_head is not None:
            # In the batch's dtype (not always float32) so that a float64 model runs, as its gradient check does.
            known = (batch.history_time <= cutoff.unsqueeze(-1)).to(batch.history_time.dtype)
            mean, precision = self.history_head(known)
            means.append(mean.unsqueeze(1))
            precisions.append(precision.unsqueeze(1))
            present.append(torch.ones_like(cutoff).unsqueeze(-1))
        return torch.cat(means, dim=1), torch.cat(precisions, dim=1), torch.cat(present, dim=1)
