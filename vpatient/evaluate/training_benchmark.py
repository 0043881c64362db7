"""``vpatient benchmark training``: how long training the world model takes, on all of a dataset.

Absolute seconds depend on the machine and its load; they are reported as context with
the machine's core count, the epochs run and where early stopping chose the model.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from vpatient import __version__
from vpatient.data.cohort import Cohort
from vpatient.evaluate.results_io import write_result
from vpatient.model.vpm import ModelSettings
from vpatient.tables import markdown_table
from vpatient.train import TrainSettings
from vpatient.virtual_patient import VirtualPatientModel

__all__ = ["RESULT_TYPES", "TrainingBenchmarkResult", "run_training_benchmark"]


class TrainingBenchmarkResult(BaseModel):
    """Wall-clock training time of the world model on one dataset."""

    model_config = ConfigDict(extra="forbid")

    benchmark: Literal["training"] = "training"
    vpatient_version: str = __version__
    data: str
    n_patients: int
    seed: int
    seconds: float = Field(description="Wall-clock seconds of VirtualPatientModel.fit, early stopping included.")
    epochs_run: int
    best_epoch: int
    cpu_count: int
    torch_threads: int
    machine: str
    model_settings: dict
    train_settings: dict

    def to_markdown(self) -> str:
        rows = {
            "patients": self.n_patients,
            "seconds": round(self.seconds, 1),
            "epochs run": self.epochs_run,
            "best epoch": self.best_epoch,
            "CPU cores": self.cpu_count,
            "torch threads": self.torch_threads,
        }
        import pandas as pd

        table = markdown_table(pd.DataFrame({"value": rows}).rename_axis("quantity"))
        return f"# Training benchmark: {self.data}\n\nvpatient {self.vpatient_version}, seed {self.seed}, on {self.machine}.\n\n{table}\n"


RESULT_TYPES: dict[str, type[BaseModel]] = {"TrainingBenchmarkResult": TrainingBenchmarkResult}


def run_training_benchmark(cohort: Cohort, seed: int = 0) -> tuple[TrainingBenchmarkResult, VirtualPatientModel]:
    """Train with the default settings on every record of ``cohort`` and time it."""
    settings, model_settings = TrainSettings(seed=seed), ModelSettings()
    model = VirtualPatientModel.fit(cohort.records, cohort.config, settings, model_settings, progress=False)
    history = model.history
    result = TrainingBenchmarkResult(
        data=cohort.name,
        n_patients=len(cohort.records),
        seed=seed,
        seconds=history.seconds,
        epochs_run=len(history.train_loss),
        best_epoch=history.best_epoch,
        cpu_count=os.cpu_count() or 0,
        torch_threads=torch.get_num_threads(),
        machine=f"{platform.machine()} {platform.system()}",
        model_settings=model_settings.to_dict(),
        train_settings=settings.to_dict(),
    )
    return result, model


def write_training_result(result: TrainingBenchmarkResult, out_dir: Path) -> list[Path]:
    return write_result(result, out_dir, f"training-{result.data}")
