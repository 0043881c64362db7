"""Product of Gaussian experts: how evidence about the initial latent state combines.

Each expert is a diagonal Gaussian over z0 given one piece of evidence (one test's
results at one visit, the static covariates, the history codes). With the standard
normal prior as one more expert, the posterior is Gaussian with precision equal to the
sum of precisions and a precision-weighted mean. An absent expert has zero precision,
so a missing modality is exactly a missing term; adding a test is adding one term.
"""

from __future__ import annotations

import torch

__all__ = ["product_of_experts"]


def product_of_experts(means: torch.Tensor, precisions: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fuse experts with a N(0, I) prior.

    means, precisions: (B, N, L); present: (B, N), 1 where the expert exists.
    Returns the posterior mean (B, L) and variance (B, L).
    """
    weight = precisions * present.unsqueeze(-1)  # (B, N, L)
    precision = 1.0 + weight.sum(dim=1)  # the prior contributes precision 1, mean 0
    mean = (weight * means).sum(dim=1) / precision
    return mean, 1.0 / precision
