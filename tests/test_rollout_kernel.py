"""The simulator's rollout kernel reproduces the training code's RK4 solve, and the rollout benchmark's numbers hang together."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vpatient.benchmarks.scale_rollout import ACCURACY, kernel_flops, measure_rollout
from vpatient.data.batching import dose_tensors
from vpatient.schemas import TreatmentExposure
from vpatient.simulation import Simulator
from vpatient.simulation.rollout import RolloutKernel, rollout
from vpatient.simulation.sampling import draw_virtual_patients, realise


@pytest.fixture(scope="module")
def lively_simulator(untrained_simulator_dir) -> Simulator:
    """The untrained PBC simulator with an output layer large enough that the latent state moves by O(1) over the years."""
    sim = Simulator.load(untrained_simulator_dir)
    field = sim.model.network.dynamics.field
    with torch.random.fork_rng():
        torch.manual_seed(1)
        nn.init.normal_(field[-1].weight, std=0.1)
        nn.init.normal_(field[-1].bias, std=0.1)
    return sim


def _cohort(sim: Simulator, n: int) -> tuple[torch.Tensor, ...]:
    """n virtual patients whose treatment changes: a third start at 0, a third at 1.3 and stop at 2.6, a third never."""
    patients = draw_virtual_patients(sim.population, sim.model, n, np.random.default_rng(0), 0, 4.0)
    treatment = sim.model.layout.treatments[0]
    plans = [
        [TreatmentExposure(treatment=treatment, start=0.0, dose=1.0)],
        [TreatmentExposure(treatment=treatment, start=1.3, stop=2.6, dose=2.0)],
        [],
    ]
    exposures = [plans[i % 3] for i in range(n)]
    dose_times, doses = dose_tensors(exposures, sim.model.layout.treatments)
    z0 = torch.as_tensor(patients.draws, dtype=torch.float32)
    static = torch.as_tensor(patients.static, dtype=torch.float32)
    return z0, static, dose_times, doses


@torch.no_grad()
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_agrees_with_the_training_rk4_on_labs_and_survival(lively_simulator, threads):
    sim = lively_simulator
    network = sim.model.network
    z0, static, dose_times, doses = _cohort(sim, 150)
    old = network.solve(z0, static, dose_times, doses, 4.0)
    new = rollout(network, z0, static, dose_times, doses, 4.0, threads=threads)
    assert torch.equal(old.grid, new.grid)  # the dose changes are grid points of both
    assert {1.3, 2.6} <= {round(float(t), 6) for t in new.grid}
    latent = network.settings.latent_dim
    times = torch.rand(len(z0), 30, generator=torch.Generator().manual_seed(0)) * 4.0
    times[:, :4] = torch.tensor([0.0, 1.3, 2.6, 4.0])  # at and around the jumps
    grid = torch.arange(0.0, 4.0 + 1e-9, 1.0 / 12, dtype=torch.float32)
    monthly = grid.expand(len(z0), -1)
    # at each patient's own times, and at the monthly grid that realise reads (through on_grid)
    for at, a, b in ((times, old.at(times), new.at(times)), (monthly, old.at(monthly), new.on_grid(grid))):
        labs_old = network.decoder.continuous_mean(a[..., :latent], network.offsets(z0), at)
        labs_new = network.decoder.continuous_mean(b[..., :latent], network.offsets(z0), at)
        assert float((labs_old - labs_new).abs().max()) <= 1e-5
        surv_old, surv_new = torch.exp(-a[..., latent:]), torch.exp(-b[..., latent:])
        assert float((surv_old - surv_new).abs().max()) <= 1e-5
    moved = float((old.states[-1, :, :latent] - old.states[0, :, :latent]).abs().max())
    assert moved > 0.1  # the comparison is of states that went somewhere


@torch.no_grad()
def test_on_grid_is_at_on_shared_times(lively_simulator):
    sim = lively_simulator
    z0, static, dose_times, doses = _cohort(sim, 60)
    solution = sim.model.network.solve(z0, static, dose_times, doses, 4.0)
    grid = torch.arange(0.0, 4.0 + 1e-9, 1.0 / 12, dtype=torch.float32)
    shared = solution.on_grid(grid)
    assert shared.shape == (60, len(grid), solution.states.shape[-1])
    assert float((shared - solution.at(grid.expand(60, -1))).abs().max()) <= 1e-6


@torch.no_grad()
def test_realise_rolls_out_with_the_kernel_as_the_training_rk4_would(lively_simulator):
    sim = lively_simulator
    patients = draw_virtual_patients(sim.population, sim.model, 90, np.random.default_rng(3), 0, 3.0)
    outcomes = realise(sim.model, patients, 3.0)
    z0 = torch.as_tensor(patients.draws, dtype=torch.float32)
    static = torch.as_tensor(patients.static, dtype=torch.float32)
    dose_times, doses = dose_tensors(patients.exposures, sim.model.layout.treatments)
    old = sim.model.network.solve(z0, static, dose_times, doses, 3.0)
    assert outcomes.solution is not None
    assert float((outcomes.solution.states - old.states).abs().max()) <= 1e-5


def test_flop_count_is_dominated_by_the_field_products():
    dynamics_flops = kernel_flops(16, 128, 1, 2, 2, n_steps=11)
    products = 2 * (16 * 128 + 128 * 128 + 128 * 16 + 16 * 2)  # the matmuls of one field evaluation
    assert 45 * products < dynamics_flops < 1.1 * 45 * products  # 4 evaluations a step and one more; matmuls dominate
    assert kernel_flops(16, 128, 1, 2, 2, n_steps=11, n_jumps=2) > dynamics_flops


def test_kernel_without_events_or_doses():
    from vpatient.model.dynamics import LatentDynamics

    dynamics = LatentDynamics(4, 0, 0, 0, 16, time_scale=2.0)
    nn.init.normal_(dynamics.field[-1].weight, std=0.3)
    z0 = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))
    empty_times, empty = torch.full((7, 1), float("inf")), torch.zeros(7, 1, 0)
    with torch.no_grad():
        old = dynamics.solve(z0, torch.zeros(7, 0), empty_times, empty, 3.0, step=0.5)
        new = RolloutKernel(dynamics, threads=2).solve(z0, torch.zeros(7, 0), empty_times, empty, 3.0, 0.5)
    assert float((old.states - new.states).abs().max()) <= 1e-5


def test_measure_rollout_returns_consistent_fields(untrained_simulator_dir):
    result = measure_rollout(untrained_simulator_dir, patients=120, seed=0, threads=2, progress=False, years=1.0, repeats=1)
    assert result.patients == 120 and result.threads == 2
    peer = next(r for r in result.peers if f"{r.method} {r.setting}" == result.peer)
    assert peer.accurate and peer.max_deviation <= ACCURACY
    assert peer.seconds == min(r.seconds for r in result.peers if r.accurate)
    assert {r.method for r in result.peers} == {"dopri5", "bosh3", "rk4"}
    assert result.speedup > 0 and result.speedup == pytest.approx(result.peer_seconds / result.vpatient_seconds)
    assert result.vpatient_max_deviation <= ACCURACY
    assert 0 < result.flop_share < 1.5
    assert result.kernel_gflops == pytest.approx(result.kernel_flops_per_patient * 120 / result.kernel_seconds / 1e9)
