"""Training an ensemble of world models: the model's own uncertainty.

One set of weights, trained once, knows nothing of how its answers would change had it
seen other patients from the same population. vpatient therefore trains K members,
each on a bootstrap resample of the training patients with its own seed (initial
weights, validation split, mini-batches, cut-offs); every forecast, what-if, cohort and
trial draws from all of them, so its intervals include the spread between members.
This is bagging of deep networks (the bootstrap captures sampling uncertainty, the
seeds the optimiser's), as in Lakshminarayanan et al., "Simple and scalable predictive
uncertainty estimation using deep ensembles", NeurIPS 2017, who found five members
enough for calibrated predictive uncertainty.

Members train in separate processes, ``workers`` at a time, each with at most
cores // members torch threads (so that members do not contend for the same cores). A
member's numbers depend only on its seed, the data and the machine's core count, not on
how many trained beside it. A time limit (``TrainSettings.max_minutes``) is shared out
between the rounds of members, so that the whole ensemble keeps to it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vpatient.data.batching import Scalers, layout_from_config
from vpatient.errors import VPatientError
from vpatient.model.latent_ode import LatentODE, ModelSettings
from vpatient.schemas import DatasetConfig, PatientRecord
from vpatient.train import TrainingHistory, TrainSettings, default_threads
from vpatient.train.data import Rank
from vpatient.train.distributed import DistributedError, same_on_every_rank
from vpatient.train.shard_cache import ShardCache
from vpatient.train.stream import DEFAULT_BUFFER_PATIENTS, fit_network, shared_scalers

__all__ = ["default_workers", "fit_data_parallel", "fit_ensemble", "member_seed", "member_settings"]

log = logging.getLogger(__name__)

#: in a streamed ensemble's shared folder instead of records.json: where the shard cache is
STREAMED = "streamed.json"


def member_seed(settings: TrainSettings, member: int) -> int:
    """The seed of member ``member`` (member 0 keeps the ensemble's seed)."""
    return settings.seed + member


def default_workers(members: int, cores: int | None = None) -> int:
    """Processes that train members at once: one per core, at most one per member."""
    return max(1, min(members, cores or os.cpu_count() or 1))


def member_settings(settings: TrainSettings, member: int, workers: int, cores: int | None = None) -> TrainSettings:
    """The settings member ``member`` trains with: its own seed, one model, its share of the threads and the time limit.

    Threads: at most cores // (members that can train at once), and no more than the
    ensemble's own setting. That share does not depend on ``workers`` (the thread count
    changes a network's numbers in the last bits), so one process or several train the
    same members. The ensemble's ``max_minutes`` is divided between its ceil(members / workers) rounds.
    """
    cores = cores or os.cpu_count() or 1
    share = max(1, cores // default_workers(settings.members, cores))
    threads = min(settings.threads or default_threads(cores), share)
    rounds = math.ceil(settings.members / workers)
    max_minutes = settings.max_minutes / rounds if settings.max_minutes is not None else None
    return replace(settings, seed=member_seed(settings, member), members=1, threads=threads, max_minutes=max_minutes)


def fit_ensemble(
    records: Sequence[PatientRecord] | ShardCache,
    config: DatasetConfig,
    settings: TrainSettings,
    model_settings: ModelSettings | None = None,
    workers: int | None = None,
    progress: bool = True,
    buffer_patients: int = DEFAULT_BUFFER_PATIENTS,
) -> tuple[list[LatentODE], Scalers, list[TrainingHistory]]:
    """Train ``settings.members`` members on bootstrap resamples; returns them with their shared scalers.

    The scalers are fitted once on every record, so all members read and write the same
    standardised scale and their samples can be pooled. ``records`` may be a
    :class:`~vpatient.train.shard_cache.ShardCache` (streamed training): each member then
    reads the cached shards itself, ``buffer_patients`` at a time, and no records cross.
    """
    k = settings.members
    if k < 2:
        raise VPatientError(f"an ensemble needs at least 2 members, got {k}; train a single model with members=1")
    if len(records) < 4:
        raise VPatientError(f"training needs at least 4 patients, got {len(records)}")
    model_settings = model_settings or ModelSettings()
    if not isinstance(records, ShardCache):
        records = list(records)
    scalers = shared_scalers(records, config)
    workers = default_workers(k) if workers is None else max(1, int(workers))
    bar = tqdm(total=k, desc=f"training {k} members", unit="member", disable=not progress, leave=False)
    with tempfile.TemporaryDirectory(prefix="vpatient-ensemble-") as tmp:
        shared = Path(tmp)
        if isinstance(records, ShardCache):
            (shared / STREAMED).write_text(json.dumps({"cache": str(records.directory), "buffer_patients": buffer_patients}))
        else:
            (shared / "records.json").write_text(json.dumps([r.model_dump(mode="json") for r in records]))
        config.save(shared / "config.json")
        (shared / "scalers.json").write_text(json.dumps(scalers.to_dict()))
        (shared / "model_settings.json").write_text(json.dumps(model_settings.to_dict()))
        jobs = []
        for m in range(k):
            job = shared / f"member-{m}"
            job.mkdir()
            (job / "settings.json").write_text(json.dumps(member_settings(settings, m, workers).to_dict()))
            jobs.append(job)
        try:
            _run_jobs(jobs, workers, bar)
        finally:
            bar.close()
        results = [_read_member(job) for job in jobs]
    members, histories = [], []
    for m, (state, history) in enumerate(results):
        network = LatentODE(layout_from_config(config), model_settings, time_scale=scalers.time_scale)
        network.load_state_dict(state)
        members.append(network.eval())
        histories.append(history)
        log.info("member %d: best epoch %d, %.0f s", m, history.best_epoch, history.seconds)
        for warning in history.warnings:
            log.warning("member %d: %s", m, warning)
    return members, scalers, histories


def _run_jobs(jobs: list[Path], workers: int, bar: tqdm) -> None:
    """Train each job's member in a child process (``python -m vpatient.ensemble JOB``), ``workers`` at a time.

    Children are plain interpreters reading JSON and writing weights: no pickled state
    crosses, and a script or notebook that trains an ensemble needs no ``__main__`` guard.
    Any child still running when this returns early (an error, Ctrl-C) is stopped.
    """
    # children start on one thread, not a pool per core each; fit_latent_ode then sets the member's own count
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pending, running = list(jobs), []
    try:
        while pending or running:
            while pending and len(running) < workers:
                job = pending.pop(0)
                log_file = open(job / "log.txt", "wb")
                command = [sys.executable, "-m", "vpatient.ensemble", str(job)]
                try:
                    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
                except OSError:
                    log_file.close()
                    raise
                running.append((job, process, log_file))
            time.sleep(0.2)
            for entry in list(running):
                job, process, log_file = entry
                if process.poll() is None:
                    continue
                log_file.close()
                running.remove(entry)
                if process.returncode != 0:
                    tail = (job / "log.txt").read_text(errors="replace").strip().splitlines()[-5:]
                    raise VPatientError(f"training ensemble {job.name} failed (exit {process.returncode}): " + " | ".join(tail))
                bar.update()
    finally:
        for _, process, log_file in running:
            process.kill()
            process.wait()
            log_file.close()


def _read_member(job: Path) -> tuple[dict[str, torch.Tensor], TrainingHistory]:
    state = torch.load(job / "weights.pt", map_location="cpu", weights_only=True)
    history = TrainingHistory(**json.loads((job / "history.json").read_text()))
    return state, history


def train_member(job: Path) -> None:
    """Train the member described in folder ``job`` (a child of :func:`fit_ensemble`), with the threads its settings give."""
    shared = job.parent
    config = DatasetConfig.load(shared / "config.json")
    scalers = Scalers.from_dict(json.loads((shared / "scalers.json").read_text()))
    model_settings = ModelSettings(**json.loads((shared / "model_settings.json").read_text()))
    settings = TrainSettings(**json.loads((job / "settings.json").read_text()))
    source: ShardCache | list[PatientRecord]
    buffer_patients = DEFAULT_BUFFER_PATIENTS
    if (shared / STREAMED).is_file():  # streamed: the member reads the cached shards itself
        streamed = json.loads((shared / STREAMED).read_text())
        source, buffer_patients = ShardCache(streamed["cache"]), streamed["buffer_patients"]
    else:
        source = [PatientRecord.model_validate(r) for r in json.loads((shared / "records.json").read_text())]
    network, _, history = fit_network(
        source, config, settings, model_settings, progress=False, scalers=scalers, bootstrap=True, buffer_patients=buffer_patients
    )
    torch.save(network.state_dict(), job / "weights.pt")
    (job / "history.json").write_text(json.dumps(history.to_dict()))


if __name__ == "__main__":
    train_member(Path(sys.argv[1]))


def fit_data_parallel(
    records: Sequence[PatientRecord] | ShardCache,
    config: DatasetConfig,
    settings: TrainSettings,
    model_settings: ModelSettings | None,
    rank: Rank,
    progress: bool = True,
    buffer_patients: int | None = None,
) -> tuple[list[LatentODE], Scalers, list[TrainingHistory]]:
    """Train one network, or ``settings.members`` on bootstrap resamples, each by all the ranks together.

    ``records``: held in memory, or a shard cache each rank streams its own shards from
    (``buffer_patients`` at a time).

    Members are trained one after another, each by the N ranks, not side by side: a
    member then trains on a cohort as large, and across as many machines, as a single
    network, and member k is the member ``vpatient train --members K`` trains in one
    process (same seed, resample and shared scalers, equal within rounding). On one machine
    whose cohort fits in memory, ``--workers`` (members as independent processes, no
    communication) is the faster way to train an ensemble; ``--nproc`` is for cohorts and
    machines beyond that. The ensemble's time limit is shared out between its members.
    Returns the networks, the scalers and the histories (one per member).
    """
    fit = partial(fit_network, records, config, model_settings=model_settings, progress=progress, rank=rank,
                  buffer_patients=buffer_patients or DEFAULT_BUFFER_PATIENTS)  # fmt: skip

    told = {"train": settings.to_dict(), "model": (model_settings or ModelSettings()).to_dict(), "patients": len(records)}
    if not same_on_every_rank(float(zlib.crc32(json.dumps(told, sort_keys=True, default=str).encode()))):
        raise DistributedError(
            f"the {rank.world} ranks were given different settings, seeds or patients; start every rank with the same options"
        )
    if settings.members == 1:
        network, scalers, history = fit(settings)
        return [network], scalers, [history]
    scalers = shared_scalers(records, config)  # on every patient, as fit_ensemble does: the members share one scale
    networks: list[LatentODE] = []
    histories: list[TrainingHistory] = []
    for member in range(settings.members):
        # one member at a time: the threads are the ranks' own, not a share for members side by side
        one = replace(member_settings(settings, member, workers=1), threads=settings.threads)
        network, _, history = fit(one, scalers=scalers, bootstrap=True)
        networks.append(network)
        histories.append(history)
    return networks, scalers, histories
