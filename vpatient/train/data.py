"""Where the training loop gets its patients: one global mini-batch at a time, for one or several processes.

The loop (:mod:`vpatient.train.loop`) does not hold the cohort: it asks a
:class:`TrainingData` for the steps of an epoch and for the validation patients.
:class:`InMemoryData` serves records held in memory (the embedded datasets, a user's
MEDS or FHIR that fits); a streaming source serves MEDS shards read from disk batch by
batch, so that memory does not grow with the cohort.

Data-parallel training (several processes, :mod:`torch.distributed`) splits every
global mini-batch between the processes: a :class:`Rank` computes its own rows and the
gradients are averaged. When every process holds the global batch (in memory), the
random draws of a step (cut-offs, posterior noise) are made for the whole batch and
each process keeps its rows, so that N processes take the same steps as one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from vpatient.errors import VPatientError
from vpatient.model.batch import PatientBatch

__all__ = ["SINGLE_PROCESS", "InMemoryData", "Rank", "Step", "TrainingData", "split_positions"]


@dataclass(frozen=True)
class Rank:
    """This process's place among the data-parallel processes: number ``index`` of ``world`` (one process: 0 of 1)."""

    index: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.world:
            raise ValueError(f"rank {self.index} is not one of {self.world} processes")

    def rows(self, n: int) -> torch.Tensor:
        """The rows of a global batch of ``n`` patients this process computes: a contiguous block, sizes within one."""
        return torch.arange(n * self.index // self.world, n * (self.index + 1) // self.world)


#: one process, the whole batch its own
SINGLE_PROCESS = Rank()


@dataclass
class Step:
    """One optimiser step's patients, as this process sees them.

    ``batch`` holds the patients the step's random draws are made for (the whole global
    batch where this process holds it, else its own patients); this process computes
    the loss of ``rows`` of it (None: all). ``share`` is this process's part of the
    step's patients across all processes, which weighs its loss so that averaging the
    gradients of the processes gives the gradient of the global batch's mean loss.
    """

    batch: PatientBatch
    rows: torch.Tensor | None = None
    share: float = 1.0

    @property
    def n_local(self) -> int:
        """Patients this process computes."""
        return len(self.batch) if self.rows is None else len(self.rows)


class TrainingData(Protocol):
    """The patients of one training run, as the loop reads them (module docstring)."""

    #: patients trained on (all processes together) and held out for validation
    n_train: int
    n_validation: int
    #: subject ids of the validation patients, saved with the training history
    validation_ids: list[str]
    #: True: each process evaluates its own validation patients (their losses are summed across processes); False: all
    sharded_validation: bool

    def steps(self, generator: torch.Generator, batch_size: int) -> Iterator[Step]:
        """One epoch's steps, in an order drawn from ``generator``; every process gets the same number of steps."""
        ...

    def validation_batches(self) -> Iterator[PatientBatch]:
        """The validation patients this process evaluates, in batches of bounded size."""
        ...

    def check_batch(self) -> PatientBatch:
        """Training patients (at most a few thousand) that the trained network's checks (vpatient.diagnostics) run on."""
        ...


def split_positions(n: int, validation_fraction: float, seed: int, bootstrap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the validation and the training patients among ``n``, drawn by subject from ``seed``.

    Both in ascending order; with ``bootstrap`` the training positions are a resample,
    with replacement, of the training split (the validation split stays as drawn, so no
    patient is in both).
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = max(1, round(validation_fraction * n)) if validation_fraction > 0 else 0
    validation, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    if bootstrap:
        train = train[np.sort(rng.integers(0, len(train), len(train)))]
    return validation, train


class InMemoryData:
    """Training and validation patients held as tensors; every process holds all of them and computes its rows."""

    sharded_validation = False

    def __init__(
        self, train: PatientBatch, validation: PatientBatch | None, rank: Rank | None = None, check_size: int = 4096
    ) -> None:
        self.train, self.validation, self.rank, self.check_size = train, validation, rank or SINGLE_PROCESS, check_size
        self.n_train = len(train)
        self.n_validation = len(validation) if validation is not None else 0
        self.validation_ids = list(validation.subject_ids) if validation is not None else []

    def steps(self, generator: torch.Generator, batch_size: int) -> Iterator[Step]:
        world = self.rank.world
        if self.n_train < world:
            raise VPatientError(f"{self.n_train} training patients cannot feed {world} processes: use fewer (--nproc)")
        chunks = list(torch.randperm(self.n_train, generator=generator).split(batch_size))
        if world > 1 and len(chunks[-1]) < world:  # every process needs a patient in every step: the last joins the one before
            chunks[-2:] = [torch.cat(chunks[-2:])]
        for chunk in chunks:
            batch = self.train.select(chunk)
            if self.rank.world == 1:
                yield Step(batch)
            else:
                rows = self.rank.rows(len(chunk))
                yield Step(batch, rows, len(rows) / len(chunk))

    def validation_batches(self) -> Iterator[PatientBatch]:
        # every process evaluates all of it, with the same draws: the loss is the same everywhere, with no exchange
        if self.validation is not None:
            yield self.validation

    def check_batch(self) -> PatientBatch:
        if self.n_train <= self.check_size:
            return self.train
        return self.train.select(torch.arange(self.check_size))
