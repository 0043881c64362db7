"""Decoders: from the latent state back to observations, with their likelihoods.

Continuous labs and imaging dims: Gaussian with a learned noise sd per variable.
Binary signs: Bernoulli. Ordinal variables: cumulative logit with ordered cut-points.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from vpatient.model.batch import FeatureLayout

__all__ = ["ObservationDecoder"]

_LOG_2PI = math.log(2 * math.pi)


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, n_out))


class ObservationDecoder(nn.Module):
    def __init__(
        self,
        layout: FeatureLayout,
        latent_dim: int,
        hidden: int,
        intercepts: bool = False,
        slopes: bool = False,
        time_scale: float = 1.0,
    ):
        super().__init__()
        self.layout = layout
        self.time_scale = time_scale  # individual slopes are per time scale
        n_cont, n_bin, n_img = len(layout.continuous), len(layout.binary), layout.imaging_dim
        self.continuous = _mlp(latent_dim, hidden, n_cont) if n_cont else None
        self.continuous_log_sd = nn.Parameter(torch.full((n_cont,), math.log(0.5)))
        # Patient-specific lab intercepts a_j and slopes b_j (each N(0, 1) a priori) add
        # scale_a * a_j + scale_b * b_j * t / time_scale to lab j's mean, like a mixed model's random effects.
        self.intercept_log_scale = nn.Parameter(torch.full((n_cont,), math.log(0.3))) if intercepts else None
        self.slope_log_scale = nn.Parameter(torch.full((n_cont,), math.log(0.05))) if slopes else None
        self.binary = _mlp(latent_dim, hidden, n_bin) if n_bin else None
        self.imaging = _mlp(latent_dim, hidden, n_img) if n_img else None
        self.imaging_log_sd = nn.Parameter(torch.full((n_img,), math.log(0.5)))
        self.ordinal = nn.ModuleList(nn.Linear(latent_dim, 1) for _ in layout.ordinal)
        self.ordinal_cuts = nn.ParameterList(
            nn.Parameter(torch.linspace(-1.0, 1.0, len(levels) - 1)) for levels in layout.ordinal_levels
        )

    # -- predictions ---------------------------------------------------------

    def continuous_mean(
        self, z: torch.Tensor, offsets: torch.Tensor | None = None, times: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean of the standardised continuous labs: z (B, T, L), offsets (B, n), times (B, T) -> (B, T, Dc)."""
        assert self.continuous is not None, "the layout has no continuous labs"
        mean: torch.Tensor = self.continuous(z)
        if offsets is None or offsets.shape[-1] == 0:
            return mean
        n_cont = mean.shape[-1]
        used = 0
        if self.intercept_log_scale is not None:
            mean = mean + torch.exp(self.intercept_log_scale) * offsets[:, :n_cont].unsqueeze(1)
            used = n_cont
        if self.slope_log_scale is not None:
            assert times is not None, "individual slopes need the visit times"
            slopes = torch.exp(self.slope_log_scale) * offsets[:, used : used + n_cont]
            mean = mean + slopes.unsqueeze(1) * (times / self.time_scale).unsqueeze(-1)
        return mean

    def continuous_sd(self) -> torch.Tensor:
        return torch.exp(self.continuous_log_sd.clamp(-5.0, 3.0))

    def imaging_mean(self, z: torch.Tensor) -> torch.Tensor:
        assert self.imaging is not None, "the layout has no imaging dims"
        mean: torch.Tensor = self.imaging(z)
        return mean

    def imaging_sd(self) -> torch.Tensor:
        return torch.exp(self.imaging_log_sd.clamp(-5.0, 3.0))

    def binary_logits(self, z: torch.Tensor) -> torch.Tensor:
        assert self.binary is not None, "the layout has no binary signs"
        logits: torch.Tensor = self.binary(z)
        return logits

    def ordinal_probs(self, z: torch.Tensor, j: int) -> torch.Tensor:
        """Class probabilities of ordinal variable j, (..., L) -> (..., C)."""
        raw = self.ordinal_cuts[j]
        cuts = torch.cat([raw[:1], raw[:1] + torch.cumsum(F.softplus(raw[1:]) + 1e-3, 0)])  # increasing
        eta = self.ordinal[j](z)  # (..., 1)
        below = torch.sigmoid(cuts - eta)  # P(y <= c), (..., C-1)
        ones = torch.ones_like(eta)
        cdf = torch.cat([torch.zeros_like(eta), below, ones], dim=-1)
        return (cdf[..., 1:] - cdf[..., :-1]).clamp_min(1e-6)

    # -- likelihood ----------------------------------------------------------

    def log_likelihood(
        self,
        z: torch.Tensor,
        batch_values: dict[str, torch.Tensor],
        offsets: torch.Tensor | None = None,
        times: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sum over observed cells of log p(x | z), per patient.

        z (B, T, L); offsets (B, Dc); batch_values holds the value and mask tensors (B, T, .).
        """
        total = z.new_zeros(z.shape[0])
        if self.continuous is not None:
            total = total + _gaussian(
                batch_values["continuous"],
                self.continuous_mean(z, offsets, times),
                self.continuous_sd(),
                batch_values["continuous_mask"],
            )
        if self.imaging is not None:
            total = total + _gaussian(
                batch_values["imaging"], self.imaging_mean(z), self.imaging_sd(), batch_values["imaging_mask"]
            )
        if self.binary is not None:
            ll = -F.binary_cross_entropy_with_logits(self.binary_logits(z), batch_values["binary"], reduction="none")
            total = total + (ll * batch_values["binary_mask"]).sum(dim=(1, 2))
        for j in range(len(self.ordinal)):
            probs = self.ordinal_probs(z, j)
            target = batch_values["ordinal"][..., j].clamp(min=0)
            ll = torch.log(torch.gather(probs, -1, target.unsqueeze(-1)).squeeze(-1))
            total = total + (ll * batch_values["ordinal_mask"][..., j]).sum(dim=1)
        return total


def _gaussian(x: torch.Tensor, mean: torch.Tensor, sd: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    ll = -0.5 * (((x - mean) / sd) ** 2 + 2 * torch.log(sd) + _LOG_2PI)
    return (ll * mask).sum(dim=(1, 2))
