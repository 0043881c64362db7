"""Checks of a trained network against its training data, reported as warnings with the training.

The first check catches a failure that a falling loss hides: a network that has learned no
dynamics can still fit the data passably by calling every change between visits observation
noise. Its learned noise sd then approaches the variable's total sd, although consecutive
visits of a patient differ by much less (the values are predictable from the patient's own
past). A model in that state forecasts the population mean with wide intervals.
"""

from __future__ import annotations

import math

import torch

from vpatient.model.batch import PatientBatch
from vpatient.model.latent_ode import LatentODE

__all__ = ["NOISE_SHARE", "PREDICTABLE_SHARE", "noise_warnings", "one_step_sd"]

#: Learned noise sd, as a share of the variable's total sd (1 on the standardised scale), from which noise "explains nearly all variance".
NOISE_SHARE = 0.9
#: One-step variability, as a share of the total sd, below which the variable's course is predictable from visit to visit.
PREDICTABLE_SHARE = 0.5
#: Fewer pairs of consecutive observations than this give no trustworthy one-step variability: the variable is not checked.
MIN_PAIRS = 10


def one_step_sd(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per variable: sd of the differences between a patient's consecutive observations, over sqrt(2); and the pair counts.

    ``values``, ``mask`` (B, T, D), visits in time order. For values that are a smooth course
    plus independent noise of sd s, this estimates s (a difference holds two noise draws);
    a course that moves between visits adds to it. Variables with fewer than 2 pairs get NaN.
    """
    observed = mask > 0
    # each patient's observed values first, in time order (a stable sort of "missing" keys)
    order = torch.argsort((~observed).to(torch.int8), dim=1, stable=True)
    packed = values.gather(1, order)
    count = observed.sum(dim=1, keepdim=True)  # (B, 1, D)
    position = torch.arange(values.shape[1]).view(1, -1, 1)
    valid = (position[:, 1:] < count).to(values.dtype)  # pair (k-1, k) exists when k < count
    diffs = packed[:, 1:] - packed[:, :-1]
    pairs = valid.sum(dim=(0, 1))
    mean = (diffs * valid).sum(dim=(0, 1)) / pairs.clamp(min=1)
    variance = (((diffs - mean) ** 2) * valid).sum(dim=(0, 1)) / (pairs - 1).clamp(min=1)
    sd = torch.where(pairs >= 2, variance.sqrt() / math.sqrt(2), torch.full_like(mean, math.nan))
    return sd, pairs


@torch.no_grad()
def noise_warnings(network: LatentODE, batch: PatientBatch) -> list[str]:
    """One warning per continuous variable whose learned noise has swallowed predictable dynamics.

    The rule, on the standardised scale the network sees (every variable has total sd 1 on
    the training records): warn when the decoder's learned observation noise sd is at least
    ``NOISE_SHARE`` of the total sd (noise explains nearly all of the variance) while the
    data's one-step variability (:func:`one_step_sd` on ``batch``, the training records) is
    at most ``PREDICTABLE_SHARE`` of it (consecutive visits are close, so the course is
    predictable). Noise that large is then the model's failure to learn, not the data's nature.
    """
    if network.decoder.continuous is None:
        return []
    noise = network.decoder.continuous_sd()
    step, pairs = one_step_sd(batch.continuous, batch.continuous_mask)
    warnings = []
    for name, noise_sd, step_sd, n_pairs in zip(
        network.layout.continuous, noise.tolist(), step.tolist(), pairs.tolist(), strict=True
    ):
        if n_pairs >= MIN_PAIRS and noise_sd >= NOISE_SHARE and step_sd <= PREDICTABLE_SHARE:
            warnings.append(
                f"{name}: the learned observation noise (sd {noise_sd:.2f} of the variable's total sd) explains nearly all "
                f"of its variance, yet consecutive visits differ by only {step_sd:.2f} sd: the model has not learned its "
                "course; train longer (--epochs, --patience, --max-minutes) or with another --learning-rate"
            )
    return warnings
