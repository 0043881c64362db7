"""Part of ``vpatient benchmark scale``: one training process against ``--nproc 2`` data-parallel ranks.

Both runs train one network (``--members 1``) on the same data with the same seed and
global batch, for the same epochs (early stopping off: patience = epochs), each as its
own ``vpatient train`` command, so both pay the same start-up. Data-parallel ranks take
the steps one process takes (:mod:`vpatient.train.distributed`), so the loss curves
should agree to rounding; that, not speed, is the point on a 2-core machine, where the
two ranks share the cores one process had. On a machine of more cores or GPUs the
throughput shows the speed-up.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydantic import Field

from vpatient.benchmarks.base import StrictModel
from vpatient.errors import VPatientError

__all__ = ["DistributedRun", "DistributedScale", "measure_distributed"]


class DistributedRun(StrictModel):
    """One training run: its processes, loss curves and speed."""

    processes: int = Field(description="Training processes (ranks); 1 is plain `vpatient train`.")
    threads_per_process: int = Field(description="torch threads of each process (the default: cores // processes).")
    train_loss: list[float] = Field(description="Mean negative ELBO of the training patients, per epoch.")
    validation_loss: list[float] = Field(
        description="Negative ELBO of the validation patients at the forecast cut-off, per epoch."
    )
    patients_per_second: float = Field(
        description="Training throughput: training patients x epochs / seconds of the training loop (validation included)."
    )
    training_seconds: float = Field(description="Seconds of the training loop (TrainingHistory.seconds of rank 0).")
    wall_seconds: float = Field(description="Seconds of the whole command: start-up, data, training, checkpoint.")


class DistributedScale(StrictModel):
    """One process against ``--nproc 2`` at the same global batch, on the same data and seed."""

    data: str = Field(description="The data trained on: an embedded dataset name or a MEDS directory.")
    seed: int
    epochs: int = Field(description="Epochs of each run (early stopping off).")
    batch_size: int = Field(description="Global mini-batch: patients per optimiser step, over all processes together.")
    n_train: int = Field(description="Training patients (the validation split is held out).")
    cpu_count: int = Field(description="Cores of the machine.")
    single: DistributedRun = Field(description="One process.")
    data_parallel: DistributedRun = Field(description="Two data-parallel processes (gloo).")
    max_relative_difference: float = Field(
        description="Largest |two - one| / |one| over the epochs of both loss curves (training and validation)."
    )
    throughput_ratio: float = Field(description="Patients per second of the two processes over one's.")
    seconds: float = Field(description="Wall-clock seconds of this measurement.")


def measure_distributed(
    data: str, *, seed: int = 0, epochs: int = 5, batch_size: int = 64, progress: bool = False
) -> DistributedScale:
    """Train on ``data`` in one process and in ``--nproc 2`` ranks; compare the loss curves and the throughput."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vpatient-scale-distributed-") as tmp:
        single = _train(data, Path(tmp) / "one", 1, seed, epochs, batch_size, progress)
        parallel = _train(data, Path(tmp) / "two", 2, seed, epochs, batch_size, progress)
        n_train = json.loads((Path(tmp) / "one" / "training.json").read_text())["n_train"]
    pairs = [
        *zip(single.train_loss, parallel.train_loss, strict=True),
        *zip(single.validation_loss, parallel.validation_loss, strict=True),
    ]
    return DistributedScale(
        data=data, seed=seed, epochs=epochs, batch_size=batch_size, n_train=n_train, cpu_count=os.cpu_count() or 1,
        single=single, data_parallel=parallel,
        max_relative_difference=max(abs(two - one) / abs(one) for one, two in pairs),
        throughput_ratio=parallel.patients_per_second / single.patients_per_second,
        seconds=time.perf_counter() - started,
    )  # fmt: skip


def _train(data: str, out: Path, processes: int, seed: int, epochs: int, batch_size: int, progress: bool) -> DistributedRun:
    """One ``vpatient train`` command (``--nproc`` when several processes); its curves from the checkpoint's training.json."""
    from vpatient.train import default_threads
    from vpatient.train.distributed import rank_threads

    command = [
        sys.executable, "-m", "vpatient", "train", "--data", data, "--out", str(out), "--members", "1",
        "--epochs", str(epochs), "--patience", str(epochs), "--batch-size", str(batch_size), "--seed", str(seed),
        "--progress" if progress else "--no-progress", *(["--nproc", str(processes)] if processes > 1 else []),
    ]  # fmt: skip
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=not progress, text=True, check=False)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        tail = (run.stderr or "").strip().splitlines()[-3:]
        raise VPatientError(f"training with {processes} process(es) failed (exit {run.returncode}): " + " | ".join(tail))
    history = json.loads((out / "training.json").read_text())
    seconds = history["seconds"]
    epochs_run = len(history["train_loss"])
    return DistributedRun(
        processes=processes,
        threads_per_process=default_threads() if processes == 1 else rank_threads(local_world=processes),
        train_loss=history["train_loss"],
        validation_loss=history["validation_loss"],
        patients_per_second=history["n_train"] * epochs_run / seconds if seconds > 0 else math.nan,
        training_seconds=seconds,
        wall_seconds=wall,
    )
