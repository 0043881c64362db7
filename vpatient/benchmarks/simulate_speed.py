"""``vpatient benchmark simulate-speed``: how fast virtual patients roll out, and how exactly.

The fast path is the simulator's own: one fixed-step RK4 solve of the whole chunk on
the model's grid (quarterly steps that also stop at every dose change), whose stages
double as the slopes of a cubic Hermite interpolation to monthly outputs. The reference is ``torchdiffeq.odeint``
with ``method="dopri5"`` and torchdiffeq's default tolerances (rtol 1e-7, atol 1e-9),
told where the dose jumps, output at the same monthly times. Both roll out the same
virtual patients of the same model in the same process, one after the other, chunk
by chunk; what is timed is the rollout, from initial states to the augmented states
(latent state, cumulative hazards) at every monthly output. Decoding labs from those
states is the same work for both and is left out of the timing; the largest absolute
difference between the two is measured on the decoded labs' means in standardised
units (and on survival probabilities). The throughput ratio is a like-for-like
comparison on this machine, whatever its load.

Memory: a cohort of ``--stream-n`` patients (default one million) is written as MEDS
by ``vpatient simulate cohort`` in a child process, whose peak resident memory (as
the operating system reports it) is the figure.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from vpatient.benchmarks.base import StrictModel, VersionedBenchmarkResult
from vpatient.errors import VPatientError
from vpatient.tables import markdown_table

if TYPE_CHECKING:  # torch-backed modules load when the benchmark runs, not when the CLI starts
    from vpatient.simulation.population import Population
    from vpatient.virtual_patient import VirtualPatientModel

__all__ = ["SimulateSpeedResult", "run_simulate_speed_benchmark"]

#: torchdiffeq's default tolerances for adaptive solvers.
REFERENCE_RTOL, REFERENCE_ATOL = 1e-7, 1e-9
TARGET_SPEEDUP, TARGET_MAX_DIFF, TARGET_PEAK_GB = 5.0, 1e-3, 2.0


class SpeedRow(StrictModel):
    patients: int
    step_years: float = Field(description="RK4 step of the fast path (the model is trained at its own step).")
    fast_seconds: float
    reference_seconds: float
    fast_patients_per_second: float
    reference_patients_per_second: float
    speedup: float
    max_abs_difference_labs: float = Field(
        description="Largest |fast - reference| of any lab's decoded mean, standardised units."
    )
    max_abs_difference_survival: float = Field(description="Largest |fast - reference| of any survival probability.")


class StreamRow(StrictModel):
    patients: int
    seconds: float
    patients_per_second: float
    peak_rss_gb: float
    meds_rows: int
    chunk_size: int


class SimulateSpeedResult(VersionedBenchmarkResult):
    """Throughput and exactness of the fast rollout path, and peak memory of a streamed cohort."""

    benchmark: Literal["simulate-speed"] = "simulate-speed"
    model: str
    seed: int
    years: float
    output_step_years: float
    model_step_years: float
    chunk_size: int
    rows: list[SpeedRow]
    stream: StreamRow | None
    cpu_count: int
    torch_threads: int
    machine: str

    def to_markdown(self) -> str:
        table = pd.DataFrame([r.model_dump() for r in self.rows]).set_index(["patients", "step_years"])
        table.columns = [
            "fast s",
            "dopri5 s",
            "fast patients/s",
            "dopri5 patients/s",
            "speed-up",
            "max |diff| labs (sd)",
            "max |diff| survival",
        ]
        trained = [r for r in self.rows if abs(r.step_years - self.model_step_years) < 1e-12] or self.rows
        worst_speed = min(r.speedup for r in trained)
        worst_diff = max(r.max_abs_difference_labs for r in trained)
        lines = [
            "# Simulation speed: fast path against torchdiffeq dopri5",
            "",
            f"vpatient {self.vpatient_version}, model `{self.model}`, seed {self.seed}; {self.years:g}-year rollouts, outputs every "
            f"{self.output_step_years * 12:g} month(s), RK4 step {self.model_step_years:g} years, chunks of {self.chunk_size:,}, "
            f"1 posterior sample per patient, on {self.machine} ({self.cpu_count} cores, {self.torch_threads} torch threads).",
            "",
            markdown_table(table),
            "",
            f"At the model's own step ({self.model_step_years:g} years):",
            f"- speed-up at least {TARGET_SPEEDUP:g}x: {'met' if worst_speed >= TARGET_SPEEDUP else 'missed'} (lowest {worst_speed:.1f}x)",
            f"- largest difference under {TARGET_MAX_DIFF:g}: {'met' if worst_diff < TARGET_MAX_DIFF else 'missed'} ({worst_diff:.2g})",
            *(
                f"- at step {r.step_years:g} years, {r.patients:,} patients: {r.speedup:.1f}x, largest difference {r.max_abs_difference_labs:.2g}"
                for r in self.rows
                if r not in trained
            ),
        ]
        if self.stream is not None:
            s = self.stream
            lines += [
                f"- {s.patients:,}-patient cohort streamed to MEDS parquet: {s.seconds:.0f} s ({s.patients_per_second:,.0f} patients/s), "
                f"{s.meds_rows:,} rows, peak RSS {s.peak_rss_gb:.2f} GB; under {TARGET_PEAK_GB:g} GB: "
                f"{'met' if s.peak_rss_gb < TARGET_PEAK_GB else 'missed'}",
            ]
        return "\n".join(lines) + "\n"


def _rollout(model: VirtualPatientModel, z0, static, dose_times, doses, years: float, reference: bool, step: float | None = None):
    """Augmented states (latent, cumulative hazards, incidences) at monthly outputs: (n, G, D)."""
    import torch

    grid = torch.arange(0.0, years + 1e-9, model.grid_step, dtype=torch.float32)
    world = model.network
    if reference:  # torchdiffeq itself, told where the doses jump, output at the monthly times
        from torchdiffeq import odeint

        from vpatient.model.dynamics import Solver

        y0 = torch.cat([z0[:, : world.settings.latent_dim], z0.new_zeros(len(z0), 2 * len(model.layout.events))], dim=-1)
        jumps = dose_times[torch.isfinite(dose_times) & (dose_times > 0) & (dose_times < years)].unique()
        options = {"jump_t": jumps} if len(jumps) else {}
        field = world.dynamics.rhs(static, dose_times, doses)
        states = odeint(field, y0, grid, method=Solver.DOPRI5, rtol=REFERENCE_RTOL, atol=REFERENCE_ATOL, options=options)
        return states.transpose(0, 1)
    solution = world.solve(z0, static, dose_times, doses, years, step=step)
    return solution.at(grid.expand(len(z0), -1))


def _decode(model: VirtualPatientModel, z0, states):
    """Labs (standardised decoded means) and survival from states: (n, G, Dc), (n, G, E)."""
    import torch

    world = model.network
    latent, n_events = world.settings.latent_dim, len(model.layout.events)
    times = (torch.arange(states.shape[1], dtype=torch.float32) * model.grid_step).expand(len(z0), -1)
    labs = world.decoder.continuous_mean(states[..., :latent], world.offsets(z0), times)
    return labs, torch.exp(-states[..., latent : latent + n_events])


def _time_rollouts(
    model: VirtualPatientModel, population: Population, n: int, years: float, chunk_size: int, seed: int, step: float
) -> SpeedRow:
    import torch

    from vpatient.data.batching import dose_tensors
    from vpatient.simulation.sampling import draw_virtual_patients

    rng = np.random.default_rng(np.random.SeedSequence([seed, n]))
    fast_s = ref_s = 0.0
    max_lab = max_surv = 0.0
    for start in range(0, n, chunk_size):
        size = min(chunk_size, n - start)
        patients = draw_virtual_patients(population, model, size, rng, start, years)
        z0 = torch.as_tensor(patients.draws, dtype=torch.float32)
        static = torch.as_tensor(patients.static, dtype=torch.float32)
        dose_times, doses = dose_tensors(patients.exposures, model.layout.treatments)
        t0 = time.perf_counter()
        with torch.no_grad():
            fast = _rollout(model, z0, static, dose_times, doses, years, reference=False, step=step)
        t1 = time.perf_counter()
        with torch.no_grad():
            reference = _rollout(model, z0, static, dose_times, doses, years, reference=True)
        t2 = time.perf_counter()
        fast_s += t1 - t0
        ref_s += t2 - t1
        with torch.no_grad():
            labs_fast, surv_fast = _decode(model, z0, fast)
            labs_ref, surv_ref = _decode(model, z0, reference)
        max_lab = max(max_lab, float((labs_fast - labs_ref).abs().max()))
        max_surv = max(max_surv, float((surv_fast - surv_ref).abs().max()))
    return SpeedRow(
        patients=n,
        step_years=step,
        fast_seconds=fast_s,
        reference_seconds=ref_s,
        fast_patients_per_second=n / fast_s,
        reference_patients_per_second=n / ref_s,
        speedup=ref_s / fast_s,
        max_abs_difference_labs=max_lab,
        max_abs_difference_survival=max_surv,
    )


def _stream(model_dir: Path, n: int, years: float, chunk_size: int, seed: int) -> StreamRow:
    """Write an n-patient cohort with the CLI in a child process; its peak RSS is the figure."""
    with tempfile.TemporaryDirectory(prefix="vpatient-stream-") as tmp:
        out = Path(tmp) / "cohort"
        command = [
            sys.executable, "-c", "from vpatient.cli import run; run()", "simulate", "cohort", "--model", str(model_dir),
            "--n", str(n), "--years", str(years), "--out", str(out), "--chunk-size", str(chunk_size), "--seed", str(seed),
            "--no-progress",
        ]  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"the streamed cohort failed: {done.stderr[-2000:]}")
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if peak_kb <= before:  # an earlier, bigger child set the maximum: the figure would be wrong
            raise RuntimeError("cannot attribute peak memory to the streamed cohort: run the benchmark in a fresh process")
        import pyarrow.parquet as pq

        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in (out / "meds" / "data").glob("*.parquet"))
    return StreamRow(
        patients=n,
        seconds=seconds,
        patients_per_second=n / seconds,
        peak_rss_gb=peak_kb / 1024**2,
        meds_rows=rows,
        chunk_size=chunk_size,
    )


def run_simulate_speed_benchmark(
    model_dir: Path,
    sizes: tuple[int, ...] = (10_000, 100_000),
    years: float = 5.0,
    chunk_size: int = 10_000,
    stream_n: int | None = 1_000_000,
    seed: int = 0,
    extra_steps: tuple[float, ...] = (0.5,),
) -> SimulateSpeedResult:
    """Time the fast path (at the model's step and at ``extra_steps``) against dopri5 for each size,
    then stream a cohort of ``stream_n``."""
    import torch

    from vpatient.simulation import Simulator

    sim = Simulator.load(model_dir)
    if sim.population is None:
        raise VPatientError(
            f"{model_dir} has no population.json; train it with `vpatient train` or run `vpatient simulate cohort` once"
        )
    trained_step = sim.model.network.solver_step
    steps = [trained_step, *(s for s in extra_steps if s != trained_step)]
    _time_rollouts(sim.model, sim.population, min(chunk_size, 500), years, chunk_size, seed, trained_step)  # warm-up
    rows = [_time_rollouts(sim.model, sim.population, n, years, chunk_size, seed, step) for n in sizes for step in steps]
    stream = _stream(model_dir, stream_n, years, chunk_size, seed) if stream_n else None
    return SimulateSpeedResult(
        model=str(model_dir),
        seed=seed,
        years=years,
        output_step_years=sim.model.grid_step,
        model_step_years=sim.model.network.solver_step,
        chunk_size=chunk_size,
        rows=rows,
        stream=stream,
        cpu_count=os.cpu_count() or 0,
        torch_threads=torch.get_num_threads(),
        machine=f"{platform.machine()} {platform.system()}",
    )
