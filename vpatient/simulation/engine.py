"""Running simulation chunks in this process or on a Dask cluster, with the same numbers.

Work is cut into chunks of patients. A chunk's random numbers come from its own seed,
``SeedSequence([seed, chunk index])``, never from the worker that runs it, so any
engine and any number of workers give the same cohort. Chunk functions take a *model
reference*: the model itself in process, or its checkpoint directory on a cluster,
where each worker process loads it once (a per-process cache) and reuses it.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vpatient.errors import VPatientError
from vpatient.virtual_patient import VirtualPatientModel

__all__ = ["AUTO_MIN_PATIENTS", "Chunk", "Engine", "auto_engine", "chunk_rng", "chunks", "resolve_model", "run_chunks"]

log = logging.getLogger(__name__)

ModelRef = VirtualPatientModel | str


class Engine(StrEnum):
    LOCAL = "local"  # in this process, one chunk after another
    PROCESSES = "processes"  # chunks across worker processes on this machine, one per core
    DASK = "dask"  # chunks as tasks on a Dask distributed cluster
    AUTO = "auto"  # processes when the work repays starting them (auto_engine), else local


#: Fewest patients for which ``auto`` starts worker processes: each costs a few seconds to start (it imports torch).
AUTO_MIN_PATIENTS = 20_000


def auto_engine(work: Sequence[Chunk], n_workers: int, model: object) -> Engine:
    """What ``auto`` runs ``work`` on: worker processes when there are several chunks, at least
    :data:`AUTO_MIN_PATIENTS` patients, more than one worker and core, and a model they can load
    (a checkpoint directory); else this process."""
    cores = os.cpu_count() or 1
    big = len(work) > 1 and sum(c.size for c in work) >= AUTO_MIN_PATIENTS
    return Engine.PROCESSES if big and min(n_workers, cores) > 1 and isinstance(model, str) else Engine.LOCAL


@dataclass(frozen=True)
class Chunk:
    """A contiguous block of patients: ids ``first_id .. first_id + size - 1``."""

    index: int
    first_id: int
    size: int
    seed: int

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}.parquet"


def chunks(n: int, chunk_size: int, seed: int) -> list[Chunk]:
    if n < 1:
        raise VPatientError(f"n = {n}: simulate at least one patient")
    if chunk_size < 1:
        raise VPatientError(f"chunk_size = {chunk_size}: must be at least 1")
    count = math.ceil(n / chunk_size)
    return [Chunk(i, i * chunk_size, min(chunk_size, n - i * chunk_size), seed) for i in range(count)]


def chunk_rng(chunk: Chunk) -> np.random.Generator:
    """The chunk's own random stream: depends on the seed and the chunk, not on who runs it."""
    return np.random.default_rng(np.random.SeedSequence([chunk.seed, chunk.index]))


@lru_cache(maxsize=4)
def _load(directory: str) -> VirtualPatientModel:
    return VirtualPatientModel.load(directory)


def resolve_model(ref: ModelRef) -> VirtualPatientModel:
    """The model itself, or the one in a checkpoint directory (loaded once per process)."""
    return ref if isinstance(ref, VirtualPatientModel) else _load(str(ref))


def run_chunks(
    task: Callable[..., Any],
    work: Sequence[Chunk],
    engine: Engine | str = Engine.LOCAL,
    scheduler: str | None = None,
    n_workers: int = 2,
    progress: bool = True,
    description: str = "simulating",
    on_chunk: Callable[[int, int], None] | None = None,
    **kwargs: Any,
) -> list[Any]:
    """``task(chunk, **kwargs)`` for every chunk; results in chunk order.

    ``on_chunk(done, total)`` is called after each chunk: a progress display, and the point
    where a caller may stop the run by raising (an app interrupting it between chunks).

    ``engine="processes"`` runs the chunks on ``n_workers`` worker processes of this machine
    (at most one per core, one torch thread each), started for this call and stopped after
    it; ``model`` must then be a checkpoint directory.
    ``engine="dask"`` submits the chunks to the cluster at ``scheduler``
    (tcp://host:port) or, without one, to a LocalCluster of ``n_workers`` single-threaded
    worker processes started for this call and shut down after it. ``engine="auto"``
    chooses processes or local (:func:`auto_engine`).
    """
    engine = Engine(engine)
    if engine == Engine.AUTO:
        engine = auto_engine(work, n_workers, kwargs.get("model"))
    bar = tqdm(total=len(work), desc=description, unit="chunk", disable=not progress)
    try:
        if engine == Engine.PROCESSES:
            return _run_in_processes(task, work, n_workers, bar, on_chunk, kwargs)
        if engine == Engine.LOCAL:
            results = []
            for chunk in work:
                results.append(task(chunk, **kwargs))
                bar.update()
                if on_chunk is not None:
                    on_chunk(len(results), len(work))
            return results
        return _run_on_dask(task, work, scheduler, n_workers, bar, on_chunk, kwargs)
    finally:
        bar.close()


def _single_threaded() -> None:
    """A worker process's start: one torch thread (the workers share the cores out between them)."""
    import torch

    torch.set_num_threads(1)


def _run_in_processes(task, work, n_workers, bar, on_chunk, kwargs) -> list[Any]:
    """The chunks on a pool of worker processes; a chunk's numbers do not depend on which worker runs it."""
    if isinstance(kwargs.get("model"), VirtualPatientModel):
        raise VPatientError("the processes engine needs the model's checkpoint directory, not a model object: save it first")
    workers = max(1, min(n_workers, os.cpu_count() or 1, len(work)))
    # Forked workers start at once, with everything imported (a spawned one spends seconds importing torch).
    # One torch thread each, as a DataLoader's workers: a forked child must not enter the parent's
    # OpenMP pool, and on a busy machine single-threaded workers lose least to one another.
    method = "fork" if sys.platform == "linux" else "spawn"
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method), initializer=_single_threaded)
    try:
        # A few chunks in flight per worker, not all of them: the queue of pickled arguments stays small.
        pending: dict[Future, int] = {}
        results: list[Any] = [None] * len(work)
        queue = iter(enumerate(work))
        done = 0
        while True:
            for i, chunk in queue:
                pending[pool.submit(task, chunk, **kwargs)] = i
                if len(pending) >= 2 * workers:
                    break
            if not pending:
                return results
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                results[pending.pop(future)] = future.result()
                done += 1
                bar.update()
                if on_chunk is not None:
                    on_chunk(done, len(work))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


#: Text arguments longer than this are scattered to the workers once instead of travelling with each task.
_SCATTER_CHARS = 10_000


def _run_on_dask(task, work, scheduler, n_workers, bar, on_chunk, kwargs) -> list[Any]:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:  # pragma: no cover - a dependency, but say what to do if it was removed
        raise VPatientError("the dask engine needs `dask[distributed]`: pip install 'dask[distributed]'") from None
    if isinstance(kwargs.get("model"), VirtualPatientModel):
        raise VPatientError("the dask engine needs the model's checkpoint directory, not a model object: save it first")
    cluster = None
    try:
        if scheduler:
            client = Client(scheduler, timeout=30)
        else:
            cluster = LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
            )
            client = Client(cluster)
    except OSError as exc:
        raise VPatientError(f"could not reach the Dask scheduler {scheduler or '(local cluster)'}: {exc}") from None
    try:
        log.info("dask: %d chunks on %s", len(work), client.dashboard_link if cluster is None else "a local cluster")
        # Large arguments (the population's JSON) are sent once to every worker: given to map
        # as they are, Dask makes each a graph node named after the keyword, which it then
        # fails to serialise ("Failed to serialize <TaskState 'population'>").
        shared = {
            name: client.scatter(value, broadcast=True) if isinstance(value, str) and len(value) > _SCATTER_CHARS else value
            for name, value in kwargs.items()
        }
        futures = client.map(task, list(work), pure=False, **shared)
        position = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(work)
        for done, future in enumerate(as_completed(futures), start=1):
            results[position[future.key]] = future.result()
            bar.update()
            if on_chunk is not None:
                on_chunk(done, len(work))
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
