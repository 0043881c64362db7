"""The rollout part of ``vpatient benchmark scale``: the simulator's kernel against torchdiffeq at the same accuracy.

All solvers roll out the same virtual patients of the same model, in the same process,
at the same thread count, chunk by chunk (the simulator's chunk size), from initial
states to the augmented states at the monthly output grid:

- the **reference**: torchdiffeq ``dopri5`` at rtol 1e-9, atol 1e-10 in float64 (not timed);
- the **peers**, what a performance-minded torchdiffeq user would pick: ``dopri5`` and
  ``bosh3`` at a ladder of loosened tolerances, ``rk4`` (the same 3/8 rule) at a ladder of
  steps including the model's own; every one told the dose jumps (``jump_t`` for the
  adaptive ones, a grid holding every jump for ``rk4``), in float32, on the model's own
  vector field :meth:`LatentDynamics.rhs`;
- the **old path**, :meth:`LatentODE.solve` (the training code's RK4, which rolled virtual
  patients out before the kernel), and the **kernel**, :func:`vpatient.simulation.rollout.rollout`.

Accuracy of each: the largest |deviation| from the reference, over every patient and
output time, of the decoded labs' means (standardised units) and of survival. The peer is
the fastest torchdiffeq configuration whose deviation is at most 1e-3; ``speedup`` is its
time over the kernel's (solve and dense output at the grid). Times are medians of repeats
(of the peers: those within twice the fastest accurate one; the others are timed once).

FLOP rate: the kernel's floating-point operations are counted analytically
(:func:`kernel_flops`) and divided by the kernel's solve time; the machine's matmul rate is
measured in the same run with float32 ``torch.mm`` of the kernel's largest product (a
block of rows times the hidden layer's 128 x 128 weights), on as many threads, one block
per thread, as the kernel uses. ``flop_share`` is their ratio.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from vpatient.benchmarks.base import StrictModel

if TYPE_CHECKING:  # torch-backed modules load when the benchmark runs, not when the CLI starts
    import torch

    from vpatient.simulation.simulator import Simulator

__all__ = ["PeerRow", "RolloutScale", "kernel_flops", "measure_rollout"]

REFERENCE_RTOL, REFERENCE_ATOL = 1e-9, 1e-10
#: A peer is accurate when its largest deviation from the reference is at most this (standardised units / probability).
ACCURACY = 1e-3
TARGET_SPEEDUP, TARGET_FLOP_SHARE = 5.0, 0.30
#: Patients rolled out at once by every solver: the simulator's default chunk.
CHUNK = 10_000
#: (rtol, atol) ladders of the adaptive peers, from tight to loose (bosh3, third order, is slow when tight).
TOLERANCES = {
    "dopri5": ((1e-7, 1e-9), (1e-6, 1e-8), (1e-5, 1e-7), (1e-4, 1e-6), (1e-3, 1e-5), (1e-2, 1e-4)),
    "bosh3": ((1e-5, 1e-7), (1e-4, 1e-6), (1e-3, 1e-5), (1e-2, 1e-4)),
}
#: rk4 peers' steps as multiples of the model's own solver step, with torchdiffeq's linear and cubic output interpolation.
STEP_MULTIPLES = {"linear": (0.5, 1.0, 2.0), "cubic": (0.5, 1.0)}
#: Peers whose first run is this many times slower than the fastest accurate one are timed once, not repeated.
CONTENDER = 2.0
#: The kernel's steps tried, coarsest first, as fractions of the model's step, to reach ACCURACY
#: (RK4's error falls as the step's fourth power: 2/3 of the step is a fifth of the error).
KERNEL_FRACTIONS = (1.0, 3 / 4, 2 / 3, 1 / 2, 1 / 3, 1 / 4)


class PeerRow(StrictModel):
    method: str = Field(description="torchdiffeq method: dopri5, bosh3 or rk4.")
    setting: str = Field(description="Its tolerances (rtol, atol) or its step (in the data's time unit) and interpolation.")
    seconds: float = Field(description="Median wall time over the repeats, every patient, in seconds.")
    max_deviation: float = Field(description="Largest |peer - reference| of decoded lab means (sd units) or survival.")
    accurate: bool = Field(description=f"max_deviation <= {ACCURACY:g}: eligible as the peer.")


class RolloutScale(StrictModel):
    """The rollout kernel against torchdiffeq at the same accuracy, and its FLOP rate against the machine's matmul rate."""

    patients: int = Field(description="Virtual patients rolled out by every solver.")
    threads: int = Field(description="Threads every solver ran with (torch intra-op threads; the kernel's block threads).")
    years: float = Field(description="Length of each rollout, in the data's time unit.")
    solver_step: float = Field(description="The model's RK4 step, in the data's time unit.")
    output_step: float = Field(description="Spacing of the output grid at which every solver is compared.")
    speedup: float = Field(description="Peer seconds / vpatient seconds (target >= 5).")
    peer: str = Field(description="The fastest torchdiffeq configuration with deviation <= 1e-3: 'method setting'.")
    peer_seconds: float = Field(description="Its median time, seconds.")
    peers: list[PeerRow] = Field(description="Every torchdiffeq configuration tried.")
    vpatient_seconds: float = Field(
        description="Median time of the kernel at vpatient_step: solve and dense output at the grid, seconds."
    )
    vpatient_step: float = Field(
        description="The kernel's step for the comparison: the coarsest of the model's own and its fractions with deviation <= 1e-3."
    )
    vpatient_max_deviation: float = Field(
        description="Largest |kernel - reference| of decoded lab means or survival at vpatient_step."
    )
    model_step_seconds: float = Field(description="Median time of the kernel at the model's own step (what simulations run).")
    model_step_max_deviation: float = Field(description="Its largest deviation from the reference (RK4's error at that step).")
    old_path_seconds: float = Field(description="Median time of the training code's RK4 (LatentODE.solve) and dense output.")
    old_path_max_deviation: float = Field(description="Its largest deviation from the reference.")
    kernel_seconds: float = Field(description="Median time of the kernel's solve alone (the FLOP rate's denominator).")
    kernel_flops_per_patient: float = Field(description="FLOPs of one patient's solve, counted analytically (kernel_flops).")
    kernel_gflops: float = Field(description="The kernel's achieved rate: FLOPs / kernel_seconds, in GFLOP/s.")
    matmul_gflops: float = Field(description="float32 torch.mm of the kernel's largest product on as many threads, GFLOP/s.")
    flop_share: float = Field(description="kernel_gflops / matmul_gflops (target >= 0.30).")
    reference: str = Field(description="The reference solver and its tolerances.")


def kernel_flops(latent: int, hidden: int, n_doses: int, n_static: int, n_events: int, n_steps: int, n_jumps: int = 0) -> float:
    """Floating-point operations of one patient's kernel solve (``_Block.integrate``), counted from its operations.

    A product (m x k) @ (k x n) with a bias counts 2 k n + n per row; every elementwise
    operation one per element, a sigmoid or an exp included (a lower bound of their cost).
    Per field evaluation: the three layers' products, two sigmoids over the hidden units,
    the hazard head (a product, clamp, shift, exp), the sum of cumulative hazards, its
    exp(-.) and the incidences. Per step: four evaluations, the stage arithmetic (16 per
    state element) and the dose's part of the first layer; once per patient: the statics'
    part, the final slope, and one evaluation per grid point where a dose jumps.
    """
    state = latent + 2 * n_events
    field = (2 * latent * hidden + hidden) + 2 * hidden + (2 * hidden * hidden + hidden) + hidden + (2 * hidden * latent + latent)
    if n_events:
        field += (2 * latent * n_events + n_events) + 3 * n_events + n_events + 2 + n_events
    per_step = 4 * field + 16 * state + (2 * n_doses * hidden + hidden)
    once = (2 * n_static * hidden + hidden) + (2 * n_doses * hidden + hidden) + field * (1 + n_jumps)
    return float(n_steps * per_step + once)


def _median_time(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls, and the first call's result."""
    times, first = [], None
    for r in range(repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
        if r == 0:
            first = out
    return float(np.median(times)), first


def matmul_gflops(rows: int, hidden: int, threads: int, seconds: float = 0.5) -> float:
    """The machine's float32 ``torch.mm`` rate for (rows x hidden) @ (hidden x hidden), one product stream per thread, GFLOP/s."""
    import torch

    from vpatient.train.settings import torch_threads

    def stream(_: int) -> int:
        a, w, out = torch.randn(rows, hidden), torch.randn(hidden, hidden), torch.empty(rows, hidden)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(20):
                torch.mm(a, w, out=out)
            count += 20
        return count

    with torch_threads(1), ThreadPoolExecutor(threads) as pool:
        stream(0)  # warm-up: MKL's first call and page faults
        start = time.perf_counter()
        counts = list(pool.map(stream, range(threads)))
        elapsed = time.perf_counter() - start
    return 2.0 * rows * hidden * hidden * sum(counts) / elapsed / 1e9


class _Cohort:
    """The virtual patients as tensors, cut into the simulator's chunks, and the output grid."""

    def __init__(self, sim: Simulator, patients: int, years: float, seed: int):
        import torch

        from vpatient.data.batching import dose_tensors
        from vpatient.simulation.sampling import draw_virtual_patients

        assert sim.population is not None
        model = sim.model
        rng = np.random.default_rng(np.random.SeedSequence([seed, patients]))
        self.chunks = []
        for first in range(0, patients, CHUNK):
            drawn = draw_virtual_patients(sim.population, model, min(CHUNK, patients - first), rng, first, years)
            dose_times, doses = dose_tensors(drawn.exposures, model.layout.treatments)
            z0 = torch.as_tensor(drawn.draws, dtype=torch.float32)
            static = torch.as_tensor(drawn.static, dtype=torch.float32)
            self.chunks.append((z0, static, dose_times, doses))
        self.grid = torch.arange(0.0, years + 1e-9, model.grid_step, dtype=torch.float32)


def _decoded(sim: Simulator, z0: torch.Tensor, states: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised lab means and survival (float64) from augmented states (n, G, D) at ``grid``."""
    network = sim.model.network
    latent, n_events = network.settings.latent_dim, len(sim.model.layout.events)
    states = states.float()
    times = grid.expand(len(z0), -1)
    labs = network.decoder.continuous_mean(states[..., :latent], network.offsets(z0), times)
    return labs.double(), (-states[..., latent : latent + n_events]).exp().double()


def measure_rollout(
    model: Simulator | str | Path, *, patients: int, seed: int, threads: int, progress: bool, years: float = 5.0, repeats: int = 3
) -> RolloutScale:
    """Time the kernel, the old path and the torchdiffeq peers on ``patients`` virtual patients (module docstring).

    ``model`` is a :class:`~vpatient.simulation.Simulator` or a checkpoint directory with its
    population (``vpatient train`` writes both).
    """
    import torch
    from torchdiffeq import odeint
    from tqdm.auto import tqdm

    from vpatient.errors import VPatientError
    from vpatient.model.dynamics import solver_grid
    from vpatient.simulation.rollout import BLOCK_ROWS, RolloutKernel
    from vpatient.simulation.simulator import Simulator
    from vpatient.train.settings import torch_threads

    sim = model if isinstance(model, Simulator) else Simulator.load(model)
    if sim.population is None:
        raise VPatientError("the rollout benchmark draws virtual patients: the model needs its population.json (vpatient train)")
    if sim.model.n_members > 1:
        sim = Simulator(sim.model.member(0), sim.population)  # one member's network: the kernel's unit of work
    if patients < 1 or threads < 1 or repeats < 1:
        raise VPatientError(f"patients, threads and repeats must be at least 1 (got {patients}, {threads}, {repeats})")
    network = sim.model.network
    dynamics = network.dynamics
    cohort = _Cohort(sim, patients, years, seed)
    grid, latent, step = cohort.grid, network.settings.latent_dim, network.solver_step
    n_events = len(sim.model.layout.events)
    y_pad = 2 * n_events

    def y0(z0: torch.Tensor) -> torch.Tensor:
        return torch.cat([z0[:, :latent], z0.new_zeros(len(z0), y_pad)], dim=-1)

    def torchdiffeq_states(chunk, method: str, options: dict, rtol: float = 1e-7, atol: float = 1e-9, dtype=torch.float32):
        z0, static, dose_times, doses = (t.to(dtype) if t.is_floating_point() else t for t in chunk)
        field = (dynamics if dtype == torch.float32 else dynamics64).rhs(static, dose_times, doses)
        states = odeint(field, y0(z0), grid.to(dtype), method=method, rtol=rtol, atol=atol, options=options)
        return states.transpose(0, 1)

    def jumps_of(chunk) -> torch.Tensor:
        return solver_grid(chunk[2], years, step, torch.float32)[1]

    def adaptive(method: str, rtol: float, atol: float, dtype=torch.float32):
        def run():
            outs = []
            for chunk in cohort.chunks:
                jumps = jumps_of(chunk).to(dtype)
                options = {"jump_t": jumps} if len(jumps) else {}
                outs.append(torchdiffeq_states(chunk, method, options, rtol, atol, dtype))
            return outs

        return run

    def fixed(step_size: float, interp: str):
        def run():
            outs = []
            for chunk in cohort.chunks:
                steps = solver_grid(chunk[2], years, step_size, torch.float32)[0]
                rk_grid = torch.cat([steps[steps < grid[-1]], grid[-1:]])  # torchdiffeq's grid must end at the last output
                options = {"grid_constructor": lambda f, y, t, g=rk_grid: g, "interp": interp}
                outs.append(torchdiffeq_states(chunk, "rk4", options))
            return outs

        return run

    kernel = RolloutKernel(dynamics, threads=threads)

    def kernel_solve(z0, static, dose_times, doses, kernel_step: float = step):
        return kernel.solve(z0[:, :latent], static, dose_times, doses, max(years, 1e-3 * network.time_scale), kernel_step)

    def kernel_dense(kernel_step: float):
        def run():
            outs = []
            for chunk in cohort.chunks:
                solution = kernel_solve(*chunk, kernel_step=kernel_step)
                with torch_threads(threads):  # the dense output at the peers' thread count, as theirs
                    outs.append(solution.on_grid(grid))
            return outs

        return run

    def old_dense():
        return [network.solve(*chunk, years).at(grid.expand(len(chunk[0]), -1)) for chunk in cohort.chunks]

    configs: list[tuple[str, str, Callable[[], object]]] = []
    for method, ladder in TOLERANCES.items():
        configs += [(method, f"rtol={r:g} atol={a:g}", adaptive(method, r, a)) for r, a in ladder]
    for interp, multiples in STEP_MULTIPLES.items():
        configs += [("rk4", f"step={step * m:.4g} interp={interp}", fixed(step * m, interp)) for m in multiples]
    configs.append(("rk4", f"step={float(grid[1]):.4g} interp=linear", fixed(float(grid[1]), "linear")))  # no interpolation

    dynamics64 = copy.deepcopy(dynamics).double()
    bar = tqdm(total=len(configs) + 4, desc="rollout", unit="solver", disable=not progress)
    with torch.no_grad():
        with torch_threads(threads):
            reference_states = adaptive("dopri5", REFERENCE_RTOL, REFERENCE_ATOL, torch.float64)()
            reference = [
                _decoded(sim, chunk[0], states, grid) for chunk, states in zip(cohort.chunks, reference_states, strict=True)
            ]
            bar.update()

            def deviation(outs) -> float:
                worst = 0.0
                for chunk, states, (labs, surv) in zip(cohort.chunks, outs, reference, strict=True):
                    mine_labs, mine_surv = _decoded(sim, chunk[0], states, grid)
                    worst = max(worst, float((mine_labs - labs).abs().max()), float((mine_surv - surv).abs().max()))
                return worst

            first: list[tuple[float, float]] = []  # (seconds, deviation) of each configuration's first run
            for _, _, run in configs:
                seconds, outs = _median_time(run, 1)
                first.append((seconds, deviation(outs)))
                bar.update()
            fastest = min((t for t, e in first if e <= ACCURACY), default=float("inf"))
            rows = []
            for (method, setting, run), (seconds, error) in zip(configs, first, strict=True):
                if repeats > 1 and error <= ACCURACY and seconds <= CONTENDER * fastest:  # a contender: the median of repeats
                    seconds = float(np.median([seconds, *(_median_time(run, 1)[0] for _ in range(repeats - 1))]))
                rows.append(
                    PeerRow(method=method, setting=setting, seconds=seconds, max_deviation=error, accurate=error <= ACCURACY)
                )
            old_seconds, old_outs = _median_time(old_dense, repeats)
            old_error = deviation(old_outs)
            bar.update()
        # the kernel sets its own threads (blocks on `threads` threads, one intra-op thread each)
        _median_time(kernel_dense(step), 1)  # warm-up
        own_seconds, own_outs = _median_time(kernel_dense(step), repeats)
        own_error = deviation(own_outs)
        # at the same accuracy as the peers: the coarsest fraction of the model's step within ACCURACY
        vp_step, vp_seconds, vp_error = step, own_seconds, own_error
        for fraction in KERNEL_FRACTIONS[1:]:
            if vp_error <= ACCURACY:
                break
            vp_step = step * fraction
            vp_seconds, vp_outs = _median_time(kernel_dense(vp_step), repeats)
            vp_error = deviation(vp_outs)
        kernel_seconds, _ = _median_time(lambda: [kernel_solve(*chunk) for chunk in cohort.chunks], repeats)
        bar.update()
        mm_rate = matmul_gflops(BLOCK_ROWS, dynamics.field[2].in_features, threads)
        bar.update()
    bar.close()
    accurate = [r for r in rows if r.accurate]
    if not accurate:
        raise VPatientError(f"no torchdiffeq configuration reached a deviation of {ACCURACY:g}: widen the ladder")
    peer = min(accurate, key=lambda r: r.seconds)
    n_doses, n_static = cohort.chunks[0][3].shape[-1], cohort.chunks[0][1].shape[-1]
    grids = [solver_grid(chunk[2], years, step, torch.float32) for chunk in cohort.chunks]
    flops = sum(
        len(chunk[0]) * kernel_flops(latent, network.settings.hidden, n_doses, n_static, n_events, len(g) - 1, len(j))
        for chunk, (g, j) in zip(cohort.chunks, grids, strict=True)
    )
    kernel_rate = flops / kernel_seconds / 1e9
    return RolloutScale(
        patients=patients,
        threads=threads,
        years=years,
        solver_step=step,
        output_step=float(grid[1]),
        speedup=peer.seconds / vp_seconds,
        peer=f"{peer.method} {peer.setting}",
        peer_seconds=peer.seconds,
        peers=rows,
        vpatient_seconds=vp_seconds,
        vpatient_step=vp_step,
        vpatient_max_deviation=vp_error,
        model_step_seconds=own_seconds,
        model_step_max_deviation=own_error,
        old_path_seconds=old_seconds,
        old_path_max_deviation=old_error,
        kernel_seconds=kernel_seconds,
        kernel_flops_per_patient=flops / patients,
        kernel_gflops=kernel_rate,
        matmul_gflops=mm_rate,
        flop_share=kernel_rate / mm_rate,
        reference=f"dopri5 rtol={REFERENCE_RTOL:g} atol={REFERENCE_ATOL:g} float64",
    )
