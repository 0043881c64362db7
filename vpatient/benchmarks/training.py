"""``vpatient benchmark training``: how long training the world model takes, on all of a dataset.

Absolute seconds depend on the machine and its load; they are reported as context with
the machine's core count, the epochs run and where early stopping chose the model.
With ``members`` > 1 it times an ensemble (members trained in parallel processes) and
also how long editing a what-if plan takes once the patient's posterior is cached (what
the dashboard does on every edit), since every member then rolls the plans out, and how
long a what-if for a new patient takes (every member infers the posterior, then the plans
roll out), with the posterior refinement steps it needed.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from dataclasses import replace
from typing import Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from vpatient.benchmarks.base import VersionedBenchmarkResult
from vpatient.data.cohort import Cohort
from vpatient.errors import VPatientError
from vpatient.model.latent_ode import ModelSettings
from vpatient.tables import markdown_table
from vpatient.train import TrainSettings, default_threads
from vpatient.virtual_patient import VirtualPatientModel

__all__ = ["TrainingBenchmarkResult", "run_training_benchmark"]

_LATER_FIELDS = ("whatif_new_patient_ms", "refine_steps", "whatif_horizon")  # absent from results written before them


class TrainingBenchmarkResult(VersionedBenchmarkResult):
    """Wall-clock training time of the world model on one dataset."""

    benchmark: Literal["training"] = "training"
    data: str
    n_patients: int
    seed: int
    seconds: float = Field(description="Wall-clock seconds of VirtualPatientModel.fit, early stopping included.")
    epochs_run: int = Field(description="Epochs run, summed over members.")
    best_epoch: int = Field(description="Best epoch of the first member.")
    members: int = 1
    member_best_epochs: list[int] = Field(default_factory=list)
    whatif_edit_ms: float | None = Field(
        None, description="Median milliseconds of a what-if after a plan edit (posterior cached), 200 sample paths."
    )
    whatif_new_patient_ms: float | None = Field(
        None,
        description="Median milliseconds of a two-plan what-if for a new patient (posterior inferred, not cached), 200 sample paths.",
    )
    refine_steps: float | None = Field(
        None, description="Median posterior refinement steps of those new-patient what-ifs (at most 60; members refine together)."
    )
    whatif_horizon: float | None = Field(None, description="Horizon of the timed what-ifs, in the data's time unit.")
    cpu_count: int
    torch_threads: int
    machine: str
    model_settings: dict
    train_settings: dict

    @model_serializer(mode="wrap")
    def _omit_unmeasured(self, handler: SerializerFunctionWrapHandler) -> dict:
        """Leave out the new-patient what-if fields when they were not measured, as results written before them did."""
        data = handler(self)
        return {k: v for k, v in data.items() if not (k in _LATER_FIELDS and v is None)}

    @property
    def stem(self) -> str:
        """File name of the result: {benchmark}-{data}."""
        return f"training-{self.data}" + ("" if self.members == 1 else f"-members{self.members}")

    def to_markdown(self) -> str:
        rows = {
            "patients": self.n_patients,
            "members": self.members,
            "seconds": round(self.seconds, 1),
            "epochs run": self.epochs_run,
            "best epoch": self.best_epoch if self.members == 1 else ", ".join(map(str, self.member_best_epochs)),
            "CPU cores": self.cpu_count,
            "torch threads": self.torch_threads,
        }
        if self.whatif_edit_ms is not None:
            rows["what-if edit, ms"] = round(self.whatif_edit_ms)
        if self.whatif_new_patient_ms is not None:
            rows["what-if for a new patient, ms"] = round(self.whatif_new_patient_ms)
        if self.refine_steps is not None:
            rows["posterior refinement steps (median)"] = self.refine_steps
        if self.whatif_horizon is not None:
            rows["what-if horizon"] = self.whatif_horizon
        import pandas as pd

        table = markdown_table(pd.DataFrame({"value": rows}).rename_axis("quantity"))
        return f"# Training benchmark: {self.data}\n\nvpatient {self.vpatient_version}, seed {self.seed}, on {self.machine}.\n\n{table}\n"


def run_training_benchmark(
    cohort: Cohort, seed: int = 0, members: int = 1, whatif_horizon: float | None = None, epochs: int | None = None
) -> tuple[TrainingBenchmarkResult, VirtualPatientModel]:
    """Train with the default settings (``members`` members) on every record of ``cohort`` and time it.

    With an ensemble and treatments it also times what-ifs of ``whatif_horizon`` (the
    data's time unit; default the model's default horizon). ``epochs`` caps training
    (tests); the default is the training default.
    """
    if whatif_horizon is not None and not (math.isfinite(whatif_horizon) and whatif_horizon > 0):
        raise VPatientError(f"whatif_horizon = {whatif_horizon!r}: the what-if horizon must be > 0")
    settings = TrainSettings(seed=seed, members=members)
    if epochs is not None:
        settings = replace(settings, epochs=epochs)
    model_settings = ModelSettings()
    started = time.perf_counter()
    model = VirtualPatientModel.fit(cohort.records, cohort.config, settings, model_settings, progress=False)
    seconds = time.perf_counter() - started
    history = model.history
    result = TrainingBenchmarkResult(
        data=cohort.name,
        n_patients=len(cohort.records),
        seed=seed,
        seconds=history.seconds if members == 1 else seconds,
        epochs_run=sum(len(h.train_loss) for h in model.member_histories),
        best_epoch=history.best_epoch,
        members=members,
        member_best_epochs=[h.best_epoch for h in model.member_histories],
        **(
            _whatif_timings(model, cohort, seed, whatif_horizon or model.default_horizon)
            if members > 1 and model.layout.treatments
            else {}
        ),
        cpu_count=os.cpu_count() or 0,
        torch_threads=settings.threads or default_threads(),  # what training used (torch's own count is restored after)
        machine=f"{platform.machine()} {platform.system()}",
        model_settings=model_settings.to_dict(),
        train_settings=settings.to_dict(),
    )
    return result, model


def _whatif_timings(model: VirtualPatientModel, cohort: Cohort, seed: int, horizon: float, repeats: int = 5) -> dict:
    """Median times of two-plan what-ifs, as the result's fields: for new patients, and after a plan edit.

    A new patient's what-if infers its posterior (every member refines it); the edits then
    re-run one patient's what-if with another dose, its posterior cached, as the dashboard does.
    """
    from vpatient.schemas import TreatmentExposure, TreatmentPlan
    from vpatient.simulation import Simulator

    sim = Simulator(model)
    treatment = model.layout.treatments[0]

    def plans(record, dose: float) -> list[TreatmentPlan]:
        drug = TreatmentExposure(treatment=treatment, start=record.end_of_followup, dose=dose)
        return [TreatmentPlan(name="none"), TreatmentPlan(name="drug", exposures=[drug])]

    def seconds(record, dose: float) -> float:
        started = time.perf_counter()
        sim.whatif(record, plans(record, dose), horizon=horizon, n_samples=200, seed=seed)
        return time.perf_counter() - started

    records = cohort.records
    newcomers = [records[i] for i in sorted({round(k * (len(records) - 1) / repeats) for k in range(repeats + 1)})]
    seconds(newcomers[0], 1.0)  # warms up (first calls allocate); its patient is not timed as new
    new_times, steps = [], []
    for record in newcomers[1:]:
        new_times.append(seconds(record, 1.0))
        steps.append(model.refine_steps_used)
    record = max(records, key=lambda r: len(r.visit_times()))
    seconds(record, 1.0)  # infers and caches the posterior
    edit_times = [seconds(record, 0.5 + 0.1 * k) for k in range(repeats)]
    return {
        "whatif_edit_ms": 1000 * statistics.median(edit_times),
        "whatif_new_patient_ms": 1000 * statistics.median(new_times),
        "refine_steps": float(statistics.median(steps)),
        "whatif_horizon": horizon,
    }
