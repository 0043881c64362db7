"""The check that observation noise has not swallowed the dynamics, and the one-step variability it rests on."""

from __future__ import annotations

import math

import pytest
import torch

from vpatient.data.batching import Scalers, layout_from_config, make_batch
from vpatient.data.synthetic import SyntheticParams, synthetic_cohort
from vpatient.diagnostics import noise_warnings, one_step_sd
from vpatient.model.batch import PatientBatch
from vpatient.model.latent_ode import LatentODE, ModelSettings


def test_one_step_sd_recovers_the_noise_around_each_patients_level_despite_gaps():
    generator = torch.Generator().manual_seed(0)
    n, visits = 2000, 6
    level = 3.0 * torch.randn(n, 1, 1, generator=generator)  # between patients: far more spread than visit to visit
    noise_sd = torch.tensor([0.1, 1.0])
    values = level + noise_sd * torch.randn(n, visits, 2, generator=generator)
    mask = (torch.rand(n, visits, 2, generator=generator) < 0.7).float()  # gaps: pairs skip missing visits
    sd, pairs = one_step_sd(values, mask)
    # each estimate pools about n * 3 differences: its relative standard error is about 1/sqrt(2 * 6000) < 1%
    assert sd.tolist() == pytest.approx([0.1, 1.0], rel=0.03)
    expected_pairs = (mask.sum(dim=1) - 1).clamp(min=0).sum(dim=0)
    assert pairs.tolist() == expected_pairs.tolist()


def test_one_step_sd_is_undefined_without_two_pairs():
    values = torch.arange(6.0).view(1, 3, 2)
    mask = torch.tensor([[[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]]])
    sd, pairs = one_step_sd(values, mask)
    assert pairs.tolist() == [2.0, 0.0]
    assert sd[0].item() == pytest.approx(0.0) and math.isnan(sd[1].item())  # steady steps of 2: no spread


def _network_and_batch(lab_sd: tuple[float, ...]) -> tuple[LatentODE, PatientBatch]:
    """An untrained network, and the batch of a small synthetic cohort whose labs have observation noise sd ``lab_sd``."""
    cohort = synthetic_cohort(40, 0, imaging_dim=2, params=SyntheticParams(lab_sd=lab_sd))
    scalers = Scalers.fit(cohort.records, cohort.config)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        network = LatentODE(layout_from_config(cohort.config), ModelSettings(hidden=8))
    return network, make_batch(cohort.records, cohort.config, scalers)


def set_noise_sd(network: LatentODE, sd: float) -> None:
    with torch.no_grad():
        network.decoder.continuous_log_sd.fill_(math.log(sd))


def test_noise_that_explains_predictable_courses_is_warned_about():
    """Labs measured almost without noise (sd 0.01 on the log scale) change little between visits.

    A network whose noise sd is the variables' whole sd (1) has learned none of that: each lab is
    warned about by name. The untrained network's noise sd of 0.5, or any sd under 0.9, is not.
    """
    network, batch = _network_and_batch(lab_sd=(0.01,) * 5)
    step, _ = one_step_sd(batch.continuous, batch.continuous_mask)
    assert (step < 0.3).all()  # the premise: the courses are predictable from visit to visit
    assert noise_warnings(network, batch) == []
    set_noise_sd(network, 0.85)
    assert noise_warnings(network, batch) == []
    set_noise_sd(network, 1.0)
    warnings = noise_warnings(network, batch)
    assert [w.split(":")[0] for w in warnings] == list(network.layout.continuous)
    assert "sd 1.00 of the variable's total sd" in warnings[0]


def test_noise_that_is_really_noise_is_not_warned_about():
    """When the data themselves jump between visits (noise sd 1.5 on the log scale), a large learned noise is right.

    The three log-scale labs get that noise; albumin and INR (natural scale, where 1.5 would make them
    negative) keep a small one, so only they are warned about.
    """
    network, batch = _network_and_batch(lab_sd=(1.5, 1.5, 0.01, 1.5, 0.01))
    assert network.layout.continuous == ("bilirubin", "alt", "albumin", "platelets", "inr")
    step, _ = one_step_sd(batch.continuous, batch.continuous_mask)
    assert (step[[0, 1, 3]] > 0.5).all() and (step[[2, 4]] < 0.5).all()
    set_noise_sd(network, 1.0)
    assert [w.split(":")[0] for w in noise_warnings(network, batch)] == ["albumin", "inr"]
