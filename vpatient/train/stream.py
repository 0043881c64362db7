"""Training data streamed from a MEDS directory: memory holds a bounded number of patients, whatever the cohort's size.

:class:`StreamedData` is a :class:`~vpatient.train.data.TrainingData` over a
:class:`~vpatient.train.shard_cache.ShardCache` (the shards parsed once into arrays):

- the split: ``split_positions`` over the subjects in the order ``read_meds`` gives
  them, so the validation subjects are those the in-memory path picks for the same
  data and seed; ensemble members (``bootstrap``) train on each subject as many times as
  the same resample draws it;
- the scalers: one pass over the cached blocks (:func:`streamed_scalers`), equal to
  ``Scalers.fit`` on the same training records up to float rounding;
- an epoch: the shards in an order drawn for the epoch, their training patients read
  into a shuffle buffer of at most ``buffer_patients`` (whole batches), shuffled within
  it with the loop's generator, and cut into global batches. One buffer that holds every
  training patient yields exactly the batches of the in-memory path (same draws, same
  padding). The shard order is drawn from the seed and the epoch's number, not from the
  loop's generator, so that every data-parallel process draws the same one without
  exchanging anything (their generators part ways after the first step);
- data-parallel processes (``rank``): each epoch the shards are dealt out between them
  (in the epoch's order, each to the process with the fewest patients so far); every
  process takes the same number of steps, its patients split evenly between them, and
  weighs its loss by its share of the step's patients (``Step.share``). Validation: each
  process evaluates the validation patients of its own shards (``sharded_validation``),
  and the distributed loop sums the losses across processes.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from vpatient.data.batching import Scalers
from vpatient.errors import VPatientError
from vpatient.model.batch import PatientBatch
from vpatient.model.latent_ode import LatentODE, ModelSettings
from vpatient.schemas import DatasetConfig, PatientRecord
from vpatient.train.data import SINGLE_PROCESS, Rank, Step, split_positions
from vpatient.train.loop import fit_latent_ode, train_network
from vpatient.train.settings import TrainingHistory, TrainSettings
from vpatient.train.shard_cache import Patients, ShardCache

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BUFFER_PATIENTS",
    "StreamedData",
    "fit_network",
    "shared_scalers",
    "streamed_scalers",
]

#: patients a shuffle buffer holds at most (rounded down to whole batches)
DEFAULT_BUFFER_PATIENTS = 16_384
#: validation patients evaluated at once
DEFAULT_VALIDATION_PATIENTS = 4096


class StreamedData:
    """Training and validation patients read from a shard cache, a bounded number at a time (module docstring)."""

    #: each process evaluates only its own validation patients: the distributed loop sums across processes
    sharded_validation = True

    def __init__(
        self,
        cache: ShardCache,
        *,
        seed: int,
        validation_fraction: float,
        bootstrap: bool = False,
        rank: Rank = SINGLE_PROCESS,
        scalers: Scalers | None = None,
        buffer_patients: int = DEFAULT_BUFFER_PATIENTS,
        validation_patients: int = DEFAULT_VALIDATION_PATIENTS,
        check_size: int = 4096,
    ) -> None:
        if len(cache) < 4:
            raise VPatientError(f"training needs at least 4 patients, got {len(cache)}")
        if buffer_patients < 1 or validation_patients < 1:
            raise VPatientError("buffer_patients and validation_patients must be at least 1")
        if cache.n_shards < rank.world:  # said at once, not after the scalers (or the first members) are done
            raise VPatientError(f"{cache.n_shards} shard(s) cannot feed {rank.world} processes: write the data in more shards")
        self.cache, self.seed, self.rank = cache, seed, rank
        self.buffer_patients, self.validation_patients, self.check_size = buffer_patients, validation_patients, check_size
        validation, train = split_positions(len(cache), validation_fraction, seed, bootstrap)
        # per subject in cache order: how often it is trained on, whether it is held out
        self.multiplicity = np.bincount(train, minlength=len(cache))[cache.position]
        held_out = np.zeros(len(cache), dtype=bool)
        held_out[validation] = True
        self.held_out = held_out[cache.position]
        self.n_train, self.n_validation = len(train), len(validation)
        by_position = np.argsort(cache.position)
        self.validation_ids = cache.subject_ids[by_position][held_out].tolist()
        self.scalers = scalers or streamed_scalers(cache, self.multiplicity)
        # padded like the in-memory batches: to the most visits (dose breakpoints) of any training (validation) patient
        self._pad = {
            part: (int(cache.n_visits[mask].max(initial=1)), int(cache.n_doses[mask].max(initial=1)))
            for part, mask in (("train", self.multiplicity > 0), ("validation", self.held_out))
        }
        shard = cache.shard_of_block[cache.block]
        self._train_per_shard = np.bincount(shard, weights=self.multiplicity, minlength=cache.n_shards).astype(np.int64)
        self._shard = shard
        self._epoch = 0
        self._loaded: tuple[int, Patients] | None = None

    # -- epochs ------------------------------------------------------------------

    def steps(self, generator: torch.Generator, batch_size: int) -> Iterator[Step]:
        shards = self._deal(
            self._train_per_shard, np.random.default_rng([self.seed, self._epoch]).permutation(self.cache.n_shards)
        )
        self._epoch += 1
        totals = [int(self._train_per_shard[s].sum()) for s in shards]
        n_steps = math.ceil(self.n_train / batch_size)
        mine = across = np.diff(np.minimum(np.arange(n_steps + 1) * batch_size, self.n_train))
        if self.rank.world > 1:
            if min(totals) == 0:
                raise VPatientError(
                    f"{self.cache.n_shards} shard(s) cannot feed {self.rank.world} processes: write the data in more shards"
                )
            sizes = _interleaved(np.asarray(totals), across)
            if (sizes == 0).any():  # a process would sit a step out: even parts instead, global batches within world - 1
                n_steps = min(n_steps, min(totals))
                sizes = np.stack([_even_parts(total, n_steps) for total in totals])
                if self._epoch == 1 and self.rank.index == 0:
                    log.warning(
                        "the shards are too uneven to deal %d processes equal steps of %d patients: this epoch takes %d "
                        "steps of about %d (write the data in more, or more even, shards)",
                        self.rank.world, batch_size, n_steps, round(self.n_train / n_steps),
                    )  # fmt: skip
            mine, across = sizes[self.rank.index], sizes.sum(axis=0)
        stream = self._patients_of(shards[self.rank.index], self.multiplicity)
        first, step = 0, 0
        for sizes_in_buffer in _buffers(mine, self.buffer_patients):
            buffer = self._read(stream[first : first + sum(sizes_in_buffer)])
            first += sum(sizes_in_buffer)
            order = torch.randperm(len(buffer), generator=generator)
            start = 0
            for size in sizes_in_buffer:
                batch = buffer.take(order[start : start + size].numpy()).batch(self.scalers, *self._pad["train"])
                start += size
                yield Step(batch) if self.rank.world == 1 else Step(batch, None, size / int(across[step]))
                step += 1

    def validation_batches(self) -> Iterator[PatientBatch]:
        shards = self._deal(np.bincount(self._shard, weights=self.held_out, minlength=self.cache.n_shards).astype(np.int64),
                            np.arange(self.cache.n_shards))  # fmt: skip
        held = self._patients_of(shards[self.rank.index], self.held_out.astype(np.int64))
        for start in range(0, len(held), self.validation_patients):
            yield self._read(held[start : start + self.validation_patients]).batch(self.scalers, *self._pad["validation"])

    def check_batch(self) -> PatientBatch:
        trained = np.repeat(np.argsort(self.cache.position), self.multiplicity[np.argsort(self.cache.position)])
        return self._read(trained[: self.check_size]).batch(self.scalers, *self._pad["train"])

    # -- reading -----------------------------------------------------------------

    def _deal(self, patients: np.ndarray, order: np.ndarray) -> list[np.ndarray]:
        """``order``'s shards dealt out between the processes, each to the one with the fewest ``patients`` so far."""
        world = self.rank.world
        if world == 1:
            return [order]
        dealt: list[list[int]] = [[] for _ in range(world)]
        load = np.zeros(world, dtype=np.int64)
        for shard in order:
            k = int(np.argmin(load))
            dealt[k].append(int(shard))
            load[k] += patients[shard]
        return [np.asarray(d, dtype=np.int64) for d in dealt]

    def _patients_of(self, shards: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Cache indices of the patients of ``shards`` (in that order), each repeated ``times`` times."""
        parts = [np.flatnonzero(self._shard == s) for s in shards]
        index = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return np.repeat(index, times[index])

    def _read(self, index: np.ndarray) -> Patients:
        """The patients at cache ``index``, in the reader's order (position), loading each block once."""
        index = index[np.argsort(self.cache.position[index], kind="stable")]
        blocks = self.cache.block[index]
        parts, where = [], []
        for block in np.unique(blocks):
            chosen = np.flatnonzero(blocks == block)
            parts.append(self._block(int(block)).take(self.cache.row[index[chosen]]))
            where.append(chosen)
        if not parts:
            raise VPatientError("no patients to read")
        patients = Patients.concat(parts)
        return patients.take(np.argsort(np.concatenate(where), kind="stable"))

    def _block(self, block: int) -> Patients:
        # the last block read stays loaded: consecutive buffers usually share one
        if self._loaded is None or self._loaded[0] != block:
            self._loaded = (block, self.cache.load_block(block))
        return self._loaded[1]


def _interleaved(totals: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Patients of each process (row) in each step (column): the steps' sizes ``steps`` exactly, each process's ``totals``.

    The processes' patients are interleaved evenly (process r's k-th at (k + 1/2) / totals[r]
    of the way) and each step takes the next ``steps[s]`` of them.
    """
    labels = np.repeat(np.arange(len(totals)), totals)
    places = np.concatenate([(np.arange(t) + 0.5) / t for t in totals])
    sequence = labels[np.argsort(places, kind="stable")]
    bounds = np.concatenate([[0], np.cumsum(steps)])
    return np.stack([np.bincount(sequence[a:b], minlength=len(totals)) for a, b in itertools.pairwise(bounds)], axis=1)


def _even_parts(total: int, n: int) -> np.ndarray:
    """``total`` split into ``n`` parts whose sizes differ by at most one."""
    return np.diff(np.arange(n + 1) * total // n)


def _buffers(sizes: np.ndarray, limit: int) -> Iterator[list[int]]:
    """Consecutive batch sizes grouped into buffers of at most ``limit`` patients (at least one batch each)."""
    group: list[int] = []
    for size in (int(s) for s in sizes):
        if group and sum(group) + size > limit:
            yield group
            group = []
        group.append(size)
    if group:
        yield group


def streamed_scalers(cache: ShardCache, weights: np.ndarray) -> Scalers:
    """``Scalers.fit`` of the cached patients, each counted ``weights`` times, in one pass over the blocks.

    Means and variances are combined block by block (Chan et al.'s pairwise update),
    with StandardScaler's rules (columns observed at most once keep 0 and 1; near-constant
    columns a spread of 1). The medians (visit gap, follow-up) come from compact arrays of
    every training gap and follow-up.
    """
    moments = {"continuous": _Moments(), "imaging": _Moments(), "static": _Moments()}
    gaps, followups = [], []
    for index, patients in cache.blocks():
        w = weights[index]
        if not w.any():
            continue
        per_visit = np.repeat(w, patients.n_visits)
        moments["continuous"].add(patients.visit["continuous"], per_visit)
        moments["imaging"].add(patients.visit["imaging"], per_visit)
        moments["static"].add(patients.patient["static"], w)
        times = patients.visit["times"]
        same = np.repeat(np.arange(len(patients)), patients.n_visits)
        step = np.diff(times)
        keep = (same[1:] == same[:-1]) & (step > 0)
        gaps.append(np.repeat(step[keep], per_visit[1:][keep]))
        followups.append(np.repeat(patients.patient["followup_end"], w))
    gap = np.concatenate(gaps) if gaps else np.zeros(0)
    followup = np.concatenate(followups) if followups else np.zeros(0)
    return Scalers(
        *moments["continuous"].mean_std(),
        *moments["imaging"].mean_std(),
        *moments["static"].mean_std(),
        time_scale=float(np.median(gap)) if len(gap) else 1.0,
        median_followup=float(np.median(followup)) if len(followup) else None,
    )


class _Moments:
    """Weighted count, mean and sum of squared deviations per column, NaN ignored, merged block by block."""

    def __init__(self) -> None:
        self.count: np.ndarray | None = None

    def add(self, values: np.ndarray, weights: np.ndarray) -> None:
        observed = ~np.isnan(values)
        weights = weights.astype(np.float64)
        w = observed * weights[:, None]
        count = w.sum(axis=0)
        mean = np.divide(np.where(observed, values, 0.0).T @ weights, count, out=np.zeros(values.shape[1]), where=count > 0)
        m2 = (w * np.where(observed, values - mean, 0.0) ** 2).sum(axis=0)
        if self.count is None:
            self.count, self.mean, self.m2 = count, mean, m2
            return
        total = self.count + count
        delta = mean - self.mean
        share = np.divide(count, total, out=np.zeros_like(total), where=total > 0)
        self.m2 = self.m2 + m2 + delta**2 * self.count * share
        self.mean = self.mean + delta * share
        self.count = total

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count is None or len(self.count) == 0:
            size = 0 if self.count is None else len(self.count)
            return np.zeros(size), np.ones(size)
        fit = self.count > 1
        var = np.divide(self.m2, self.count, out=np.zeros_like(self.m2), where=self.count > 0)
        eps = np.finfo(np.float64).eps
        constant = var <= self.count * eps * var + (self.count * self.mean * eps) ** 2  # StandardScaler's test
        scale = np.where(constant, 1.0, np.sqrt(var))
        mean = np.where(fit, self.mean, 0.0)
        std = np.where(fit, np.where(scale > 1e-8, scale, 1.0), 1.0)
        return mean, std


def fit_network(
    source: Sequence[PatientRecord] | ShardCache,
    config: DatasetConfig,
    settings: TrainSettings,
    model_settings: ModelSettings | None = None,
    progress: bool = True,
    *,
    scalers: Scalers | None = None,
    bootstrap: bool = False,
    rank: Rank = SINGLE_PROCESS,
    buffer_patients: int = DEFAULT_BUFFER_PATIENTS,
) -> tuple[LatentODE, Scalers, TrainingHistory]:
    """One network on records held in memory (:func:`~vpatient.train.loop.fit_latent_ode`, same arguments) or
    on the patients of a shard cache (:meth:`ShardCache.build`), read ``buffer_patients`` at a time."""
    if isinstance(source, ShardCache):
        data = StreamedData(
            source, seed=settings.seed, validation_fraction=settings.validation_fraction, bootstrap=bootstrap, rank=rank,
            scalers=scalers, buffer_patients=buffer_patients,
        )  # fmt: skip
        model, history = train_network(data, config, data.scalers, settings, model_settings, progress, rank=rank)
        return model, data.scalers, history
    return fit_latent_ode(source, config, settings, model_settings, progress, scalers=scalers, bootstrap=bootstrap, rank=rank)


def shared_scalers(source: Sequence[PatientRecord] | ShardCache, config: DatasetConfig) -> Scalers:
    """The scalers ensemble members share: fitted on every patient of ``source`` (records, or a shard cache in one pass)."""
    if isinstance(source, ShardCache):
        return streamed_scalers(source, np.ones(len(source), dtype=np.int64))
    return Scalers.fit(list(source), config)
