"""Numerics of the world model: exact gradients, and the convergence order of its own RK4 and Hermite interpolation.

Training follows the gradients autograd gives, and every forecast reads the latent path
through the RK4 grid and its cubic Hermite dense output: a wrong stage weight or slope
would still give plausible numbers, only a worse order, so the orders are asserted.
"""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest
import torch
from torch import nn

from vpatient.data.batching import Scalers, layout_from_config, make_batch
from vpatient.model.batch import PatientBatch
from vpatient.model.dynamics import DenseSolution, LatentDynamics, Solver
from vpatient.model.latent_ode import LatentODE, ModelSettings
from vpatient.schemas import parse_record

# --------------------------------------------------------------------------- gradients


def _float64(batch: PatientBatch) -> PatientBatch:
    """The batch with every floating tensor in float64 (indices and masks of integer type stay as they are)."""
    values = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        values[f.name] = value.double() if isinstance(value, torch.Tensor) and value.is_floating_point() else value
    return replace(batch, **values)


@pytest.fixture()
def tiny(config, record_data) -> tuple[LatentODE, PatientBatch]:
    """A float64 world model of hidden size 4 on two patients with every variable kind, a dose change and an event."""
    second = {
        **record_data,
        "subject_id": "p2",
        "static": {"age": 48.0, "sex": 0},
        "observations": [
            {"time": 0.0, "variable": "bilirubin", "value": 0.8},
            {"time": 0.0, "variable": "albumin", "value": 4.1},
            {"time": 0.7, "variable": "ascites", "value": 1},
            {"time": 0.7, "variable": "stage", "value": 3},
            {"time": 1.6, "variable": "albumin", "value": 3.2},
        ],
        "imaging": [],
        "treatments": [{"treatment": "drug", "start": 0.4, "dose": 2.0}],
        "events": [],
        "end_of_followup": 2.2,
    }
    records = [parse_record(record_data, config), parse_record(second, config)]
    batch = _float64(make_batch(records, config, Scalers.fit(records, config)))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LatentODE(layout_from_config(config), ModelSettings(latent_dim=3, hidden=4)).double()
    return model, batch


def test_gradients_of_the_elbo_wrt_the_posterior_are_exact(tiny):
    """d loss / d (mean, var) of q(z0): through the RK4 solve, the Hermite dense output, decoders, hazards and KL."""
    model, batch = tiny
    mean, var = model.posterior(batch, torch.tensor([0.8, 10.0], dtype=torch.float64))
    mean = mean.detach().requires_grad_(True)
    var = var.detach().requires_grad_(True)

    def loss(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(1)  # the same reparameterisation draw at every evaluation
        return model.elbo_terms(batch, m, v, generator)["loss"]

    assert torch.autograd.gradcheck(loss, (mean, var))


class _Loss(nn.Module):
    """The training loss as a module's forward, so that torch.func.functional_call can swap in parameters."""

    def __init__(self, world: LatentODE, batch: PatientBatch, cutoff: torch.Tensor):
        super().__init__()
        self.world, self.batch, self.cutoff = world, batch, cutoff

    def forward(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(2)
        return self.world.elbo(self.batch, self.cutoff, generator)["loss"]


def test_gradients_of_the_training_loss_wrt_weights_are_exact(tiny):
    """One small parameter of each part: an expert, the vector field (its dose column too), the hazards, the decoders."""
    model, batch = tiny
    loss = _Loss(model, batch, torch.tensor([0.8, 10.0], dtype=torch.float64))
    names = [
        "world.experts.group_heads.panel.net.2.bias",
        "world.dynamics.field.0.weight",
        "world.dynamics.log_hazard.weight",
        "world.decoder.continuous_log_sd",
        "world.decoder.intercept_log_scale",
        "world.decoder.ordinal_cuts.0",
    ]
    params = dict(loss.named_parameters())
    inputs = tuple(params[n].detach().clone().requires_grad_(True) for n in names)

    def of_weights(*values: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(loss, dict(zip(names, values, strict=True)), ())

    assert torch.autograd.gradcheck(of_weights, inputs)


# --------------------------------------------------------------------------- convergence orders


def _orders(errors: list[float]) -> np.ndarray:
    """Observed order of each halving of the step: log2 of the ratio of successive errors."""
    e = np.asarray(errors)
    return np.log2(e[:-1] / e[1:])


# dz/dt = A z + B u with u = 1 throughout: A = -0.5 I + 2 [[0, 1], [-1, 0]] decays and rotates
# (eigenvalues -0.5 +- 2i), so z(t) = z* + exp(-t/2) R(2t) (z0 - z*) with z* = -A^{-1} B.
_A = np.array([[-0.5, 2.0], [-2.0, -0.5]])
_B = np.array([[0.4], [-0.7]])
_Z0 = np.array([1.0, -0.5])


def _exact(t: np.ndarray) -> np.ndarray:
    """z at times t (n,) -> (n, 2), in closed form."""
    rest = -np.linalg.solve(_A, _B).ravel()
    d0, d1 = _Z0 - rest
    c, s = np.cos(2 * t), np.sin(2 * t)
    return rest + np.exp(-0.5 * t)[:, None] * np.stack([c * d0 + s * d1, -s * d0 + c * d1], axis=1)


# Where in each step the error is read: the error of a cubic Hermite interpolant is proportional to
# (s (1 - s))^2 h^4 at fraction s of a step of length h, so reading it at the same fractions on every
# grid keeps the constant fixed and the observed order clean (fixed times would land at other fractions).
_FRACTIONS = np.array([0.2, 0.5, 0.7])


def _within_steps(grid: np.ndarray) -> np.ndarray:
    """Times at the same fractions of every step of the grid."""
    return (grid[:-1, None] + _FRACTIONS * np.diff(grid)[:, None]).ravel()


def _linear_dynamics() -> LatentDynamics:
    dyn = LatentDynamics(latent_dim=2, n_treatments=1, n_static=1, n_events=0, hidden=4).double()
    dyn.field = nn.Linear(4, 2, bias=False).double()
    with torch.no_grad():
        dyn.field.weight.copy_(torch.tensor(np.hstack([_A, _B, np.zeros((2, 1))])))
    return dyn


def _assert_rk4_fourth_order(error) -> None:
    """``error(solution)`` of LatentDynamics' own RK4 on the linear system, to t = 2: halving the step divides it by ~16."""
    dyn = _linear_dynamics()
    z0 = torch.tensor(_Z0).unsqueeze(0)
    dose_times, doses = torch.tensor([[0.0]], dtype=torch.float64), torch.tensor([[[1.0]]], dtype=torch.float64)
    errors = []
    for step in (0.2, 0.1, 0.05, 0.025):
        solution = dyn.solve(
            z0, torch.zeros(1, 1, dtype=torch.float64), dose_times, doses, t_max=2.0, solver=Solver.RK4, step=step
        )
        errors.append(error(solution))
    orders = _orders(errors)
    assert np.all((orders > 3.7) & (orders < 4.3)), (errors, orders)


def test_rk4_is_fourth_order():
    """Global error at the grid points of LatentDynamics' own RK4: halving the step divides it by ~16."""

    def at_grid_points(solution) -> float:
        states = solution.states[:, 0].detach().numpy()
        return np.abs(states - _exact(solution.grid.numpy())).max()

    _assert_rk4_fourth_order(at_grid_points)


def test_rk4_dense_output_is_fourth_order_between_grid_points():
    """What forecasts read: the state at times off the solver grid (the RK4 and Hermite errors together)."""

    def between_grid_points(solution) -> float:
        times = _within_steps(solution.grid.numpy())
        got = solution.z(torch.tensor(times).unsqueeze(0)).detach().numpy()[0]
        return np.abs(got - _exact(times)).max()

    _assert_rk4_fourth_order(between_grid_points)


def _kinked(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A function smooth on each side of t=1, where its slope jumps (as the state's does at a dose change).

    Returns the value, the slope leaving t and the slope arriving at t (they differ only at t=1).
    """
    before = t <= 1.0
    y = np.where(before, np.sin(2 * t), np.sin(2.0) + 3 * (t - 1) + np.cos(t - 1) - 1)
    leaving = np.where(t < 1.0, 2 * np.cos(2 * t), 3 - np.sin(t - 1))
    arriving = np.where(before, 2 * np.cos(2 * t), 3 - np.sin(t - 1))
    return y, leaving, arriving


def _smooth(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """exp(-t) cos(3t) and its derivative."""
    return np.exp(-t) * np.cos(3 * t), -np.exp(-t) * (np.cos(3 * t) + 3 * np.sin(3 * t))


def _per_patient(a: np.ndarray, b: np.ndarray) -> torch.Tensor:
    """Two patients' values on the grid (G,) each -> (G, B=2, D=1), DenseSolution's layout."""
    return torch.tensor(np.stack([a, b], axis=1)[..., None])


def test_hermite_interpolation_is_fourth_order_with_one_sided_slopes():
    """DenseSolution.at on exact nodes and slopes: the interpolation's own error, order 4, for two patients.

    Patient 0 follows a function whose slope jumps at a grid point (slope_from and slope_to differ
    there, as at a dose change); patient 1 a smooth one, read at other times.
    """
    errors = []
    for n in (4, 8, 16, 32):
        grid = np.linspace(0.0, 2.0, 2 * n + 1)  # t=1 is always a node
        y0, leaving0, arriving0 = _kinked(grid)
        y1, slope1 = _smooth(grid)
        solution = DenseSolution(
            grid=torch.tensor(grid),
            states=_per_patient(y0, y1),
            slope_from=_per_patient(leaving0, slope1),
            slope_to=_per_patient(arriving0, slope1),
            latent_dim=1,
            n_events=0,
        )
        times = np.stack([_within_steps(grid), _within_steps(grid)[::-1]])  # patient 1 reads them in another order
        got = solution.at(torch.tensor(times))[..., 0].numpy()
        exact = np.stack([_kinked(times[0])[0], _smooth(times[1])[0]])
        errors.append(np.abs(got - exact).max())
    orders = _orders(errors)
    assert np.all((orders > 3.7) & (orders < 4.3)), (errors, orders)
