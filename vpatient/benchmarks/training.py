"""``vpatient benchmark training``: how long training the world model takes, on all of a dataset.

Absolute seconds depend on the machine and its load; they are reported as context with
the machine's core count, the epochs run and where early stopping chose the model.
With ``members`` > 1 it times an ensemble (members trained in parallel processes) and
also how long editing a what-if plan takes once the patient's posterior is cached (what
the dashboard does on every edit), since every member then rolls the plans out.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Literal

import torch
from pydantic import Field

from vpatient.benchmarks.base import VersionedBenchmarkResult
from vpatient.data.cohort import Cohort
from vpatient.model.latent_ode import ModelSettings
from vpatient.tables import markdown_table
from vpatient.train import TrainSettings
from vpatient.virtual_patient import VirtualPatientModel

__all__ = ["TrainingBenchmarkResult", "run_training_benchmark"]


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
    cpu_count: int
    torch_threads: int
    machine: str
    model_settings: dict
    train_settings: dict

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
        import pandas as pd

        table = markdown_table(pd.DataFrame({"value": rows}).rename_axis("quantity"))
        return f"# Training benchmark: {self.data}\n\nvpatient {self.vpatient_version}, seed {self.seed}, on {self.machine}.\n\n{table}\n"


def run_training_benchmark(
    cohort: Cohort, seed: int = 0, members: int = 1
) -> tuple[TrainingBenchmarkResult, VirtualPatientModel]:
    """Train with the default settings (``members`` members) on every record of ``cohort`` and time it."""
    settings, model_settings = TrainSettings(seed=seed, members=members), ModelSettings()
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
        whatif_edit_ms=_whatif_edit_ms(model, cohort, seed) if members > 1 and model.layout.treatments else None,
        cpu_count=os.cpu_count() or 0,
        torch_threads=torch.get_num_threads(),
        machine=f"{platform.machine()} {platform.system()}",
        model_settings=model_settings.to_dict(),
        train_settings=settings.to_dict(),
    )
    return result, model


def _whatif_edit_ms(model: VirtualPatientModel, cohort: Cohort, seed: int, edits: int = 5) -> float:
    """Median time of a two-plan what-if after its first run (the posterior cached), as the dashboard edits a dose."""
    from vpatient.schemas import TreatmentExposure, TreatmentPlan
    from vpatient.simulation import Simulator

    sim = Simulator(model)
    record = max(cohort.records, key=lambda r: len(r.visit_times()))
    treatment = model.layout.treatments[0]

    def plans(dose: float) -> list[TreatmentPlan]:
        drug = TreatmentExposure(treatment=treatment, start=record.end_of_followup, dose=dose)
        return [TreatmentPlan(name="none"), TreatmentPlan(name="drug", exposures=[drug])]

    sim.whatif(record, plans(1.0), horizon=5.0, n_samples=200, seed=seed)  # infers and caches the posterior
    times = []
    for k in range(edits):
        started = time.perf_counter()
        sim.whatif(record, plans(0.5 + 0.1 * k), horizon=5.0, n_samples=200, seed=seed)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)
