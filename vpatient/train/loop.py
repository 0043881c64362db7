"""Fitting one network: random cut-offs, early stopping, reproducible from a seed.

Every source of randomness (initial weights, validation split, mini-batches, cut-offs,
posterior noise) comes from the one ``seed``; the global RNG state is left as it was.
The loop reads its patients from a :class:`~vpatient.train.data.TrainingData` (records
held in memory, or MEDS shards streamed from disk), one global mini-batch at a time.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from vpatient.data.batching import Scalers, layout_from_config, make_batch
from vpatient.diagnostics import noise_warnings
from vpatient.errors import VPatientError
from vpatient.model.batch import PatientBatch
from vpatient.model.latent_ode import LatentODE, ModelSettings
from vpatient.schemas import DatasetConfig, PatientRecord
from vpatient.train.data import SINGLE_PROCESS, InMemoryData, Rank, Step, TrainingData, split_positions
from vpatient.train.distributed import all_reduce_sums, broadcast_from_primary, broadcast_state, data_parallel, rank_threads
from vpatient.train.settings import TrainingHistory, TrainSettings, default_threads, torch_threads

__all__ = [
    "fit_latent_ode",
    "forecast_cutoffs",
    "random_cutoffs",
    "ranks_validation_loss",
    "train_network",
    "training_step_loss",
    "validation_loss",
]

log = logging.getLogger(__name__)


def random_cutoffs(
    batch: PatientBatch, generator: torch.Generator, full_fraction: float, covariates_fraction: float = 0.0
) -> torch.Tensor:
    """A cut-off per patient at one of its visits, uniformly; some at the last visit, some just before the first.

    A cut-off just before the first visit leaves only the covariates and history codes
    (recorded before index) to infer from.
    """
    n_visits = batch.visit_mask.sum(dim=1).long().clamp(min=1)
    pick = (torch.rand(len(batch), generator=generator) * n_visits).long().clamp(max=n_visits - 1)
    full = torch.rand(len(batch), generator=generator) < full_fraction
    pick = torch.where(full, n_visits - 1, pick)
    cutoff = batch.times.gather(1, pick.unsqueeze(1)).squeeze(1)
    if covariates_fraction > 0:
        before = torch.rand(len(batch), generator=generator) < covariates_fraction
        first = batch.times[:, 0]
        cutoff = torch.where(before, torch.nextafter(first, torch.full_like(first, -math.inf)), cutoff)
    return cutoff


def forecast_cutoffs(batch: PatientBatch) -> torch.Tensor:
    """The forecasting protocol's cut-off: the time of visit ceil(n/2) of n."""
    n_visits = batch.visit_mask.sum(dim=1).long().clamp(min=1)
    pick = (torch.ceil(n_visits.float() / 2).long() - 1).clamp(min=0)
    return batch.times.gather(1, pick.unsqueeze(1)).squeeze(1)


def fit_latent_ode(
    records: Sequence[PatientRecord],
    config: DatasetConfig,
    settings: TrainSettings | None = None,
    model_settings: ModelSettings | None = None,
    progress: bool = True,
    *,
    scalers: Scalers | None = None,
    bootstrap: bool = False,
    rank: Rank = SINGLE_PROCESS,
) -> tuple[LatentODE, Scalers, TrainingHistory]:
    """Train one LatentODE network on ``records``; returns the best weights (by validation ELBO).

    ``scalers`` (default: fitted on the training split) lets ensemble members share one
    standardisation; ``bootstrap`` trains on a resample, with replacement, of the
    training split (the validation split stays as drawn, so no patient is in both).
    ``rank``: this process's place in data-parallel training (:mod:`vpatient.train.data`).
    """
    settings = settings or TrainSettings()
    if len(records) < 4:
        raise VPatientError(f"training needs at least 4 patients, got {len(records)}")
    val_idx, train_idx = split_positions(len(records), settings.validation_fraction, settings.seed, bootstrap)
    train_records = [records[i] for i in train_idx]
    val_records = [records[i] for i in val_idx]
    scalers = scalers or Scalers.fit(train_records, config)
    train_batch = make_batch(train_records, config, scalers)
    val_batch = make_batch(val_records, config, scalers) if val_records else None
    model, history = train_network(
        InMemoryData(train_batch, val_batch, rank), config, scalers, settings, model_settings, progress, rank=rank
    )
    return model, scalers, history


def train_network(
    data: TrainingData,
    config: DatasetConfig,
    scalers: Scalers,
    settings: TrainSettings,
    model_settings: ModelSettings | None = None,
    progress: bool = True,
    *,
    rank: Rank = SINGLE_PROCESS,
) -> tuple[LatentODE, TrainingHistory]:
    """Train one network on ``data`` (standardised by ``scalers``); returns the best weights and how training went.

    ``rank``: this process's place among data-parallel processes (:mod:`vpatient.train.distributed`,
    whose process group must then be formed); ``data`` serves this rank's patients. Every
    rank returns the same weights; only rank 0 shows progress and logs the epochs.
    """
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)  # weight init reads the global RNG; fork_rng restores it after
        model = LatentODE(layout_from_config(config), model_settings, time_scale=scalers.time_scale)
    history = TrainingHistory(n_train=data.n_train, n_validation=data.n_validation, validation_ids=list(data.validation_ids))
    threads = settings.threads or (default_threads() if rank.world == 1 else rank_threads())
    with torch_threads(threads):
        if rank.world == 1:
            _optimise(model, data, settings, history, progress)
        else:
            _optimise(model, data, settings, history, progress and rank.index == 0, rank)
        history.warnings = noise_warnings(model, data.check_batch())
    for warning in history.warnings:
        log.warning("%s", warning)
    return model, history


def training_step_loss(
    model: LatentODE, step: Step, generator: torch.Generator, settings: TrainSettings, world: int = 1
) -> torch.Tensor:
    """This process's loss for one step: the global batch's mean negative ELBO, weighted by its share of the patients.

    The step's random draws (cut-offs, then the posterior's noise) are made for all of
    ``step.batch`` and this process keeps its rows, so that the processes of a
    data-parallel run, whose gradients are averaged, take the step one process would.
    """
    batch = step.batch
    cutoff = random_cutoffs(batch, generator, settings.full_history_fraction, settings.covariates_only_fraction)
    eps = torch.randn((1, len(batch), model.posterior_dim), generator=generator)
    if step.rows is not None:
        batch, cutoff, eps = batch.select(step.rows), cutoff[step.rows], eps[:, step.rows]
    loss = model.elbo(batch, cutoff, eps=eps)["loss"]
    return loss if world == 1 else loss * (step.share * world)


def _optimise(
    model: LatentODE,
    data: TrainingData,
    settings: TrainSettings,
    history: TrainingHistory,
    progress: bool,
    rank: Rank = SINGLE_PROCESS,
) -> None:
    """The training loop: AdamW epochs until early stopping, the epoch limit or the time limit; leaves the best weights in ``model``.

    With several ranks, the gradients are averaged in the backward pass (DistributedDataParallel),
    the training loss's sums (and a sharded validation's) are summed over the ranks, and
    rank 0 broadcasts the epoch's losses and whether its clock passed the time limit: every
    rank then makes the same decisions (learning rate, best weights, early stopping) from
    the same numbers, and ends with rank 0's best weights.
    """
    world, passed = rank.world, 0.0
    say = log.info if rank.index == 0 else _silent  # one rank's account of the epochs is enough
    step_loss = data_parallel(_StepLoss(model)) if world > 1 else None
    generator = torch.Generator().manual_seed(settings.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimiser, factor=0.5, patience=settings.lr_patience, min_lr=settings.learning_rate / 32
    )
    best_state, best_loss, since_best = copy.deepcopy(model.state_dict()), math.inf, 0
    start = time.perf_counter()
    deadline = start + 60 * settings.max_minutes if settings.max_minutes is not None else math.inf
    bar = tqdm(range(settings.epochs), desc="training", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        total, seen = 0.0, 0
        for step in data.steps(generator, settings.batch_size):
            if step_loss is None:
                loss = training_step_loss(model, step, generator, settings)
            else:
                loss = step_loss(step, generator, settings, world)
            optimiser.zero_grad()
            loss.backward()  # with several ranks, the gradients are averaged over them here
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimiser.step()
            if world == 1:
                total += loss.item() * len(step.batch)
                seen += len(step.batch)
            else:  # this rank's patients' summed loss: the loss without its weight (training_step_loss)
                total += loss.item() * step.n_local / (step.share * world)
                seen += step.n_local
        if world == 1:
            history.train_loss.append(total / seen)
            val_loss = validation_loss(model, data.validation_batches(), settings.seed)
        else:
            history.train_loss.append(_ratio(all_reduce_sums([total, seen])))
            val_loss = ranks_validation_loss(model, data, settings.seed)
        if val_loss is None:  # no validation split: the training loss decides
            val_loss = history.train_loss[-1]
        if world > 1:  # rank 0's numbers and clock decide, on every rank alike
            history.train_loss[-1], val_loss, passed = broadcast_from_primary(
                [history.train_loss[-1], val_loss, float(time.perf_counter() >= deadline)]
            )
        history.validation_loss.append(val_loss)
        scheduler.step(val_loss)
        if val_loss < best_loss - 1e-4:
            best_loss, since_best, history.best_epoch = val_loss, 0, epoch
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
        now = time.perf_counter()
        # tqdm's own ETA assumes every epoch runs; the time limit may end training sooner
        eta = min((now - start) / (epoch + 1) * (settings.epochs - epoch - 1), max(0.0, deadline - now))
        bar.set_postfix(
            {
                "train": f"{history.train_loss[-1]:.2f}",
                "val": f"{val_loss:.2f}",
                "best": history.best_epoch,
                "eta": f"{eta / 60:.1f}min",
            }
        )
        say(
            "epoch %d/%d: train %.3f, validation %.3f (best epoch %d); at most %.1f min left",
            epoch + 1, settings.epochs, history.train_loss[-1], val_loss, history.best_epoch, eta / 60,
        )  # fmt: skip
        if since_best >= settings.patience:
            say("early stopping at epoch %d (best %d)", epoch, history.best_epoch)
            break
        if (now >= deadline if world == 1 else bool(passed)) and epoch + 1 < settings.epochs:
            history.stopped_on_time = True
            say(
                "stopping at epoch %d: the %g-minute limit has passed (best %d)",
                epoch,
                settings.max_minutes,
                history.best_epoch,
            )
            break
    model.load_state_dict(best_state)
    if world > 1:
        broadcast_state(model)  # equal already (same steps from the same numbers); now provably rank 0's
    model.eval()
    history.seconds = time.perf_counter() - start


def _silent(*args: object) -> None:
    """A log call that says nothing (the ranks other than 0)."""


class _StepLoss(torch.nn.Module):
    """:func:`training_step_loss` as a module's forward, so that DistributedDataParallel sees the step and averages its gradients."""

    def __init__(self, network: LatentODE) -> None:
        super().__init__()
        self.network = network

    def forward(self, step: Step, generator: torch.Generator, settings: TrainSettings, world: int) -> torch.Tensor:
        return training_step_loss(self.network, step, generator, settings, world)


def _ratio(sums: list[float]) -> float:
    """The mean from a summed total and count (nan for none)."""
    total, count = sums
    return total / count if count else math.nan


def ranks_validation_loss(model: LatentODE, data: TrainingData, seed: int) -> float | None:
    """The validation loss of all ranks' patients: each rank's own where the validation set is sharded, else its copy's.

    Sharded (``data.sharded_validation``; each rank evaluates its part), the ranks' losses
    are weighed by their patients and summed; otherwise every rank evaluates the whole set.
    """
    if not getattr(data, "sharded_validation", False):
        return validation_loss(model, data.validation_batches(), seed)
    parts = _validation_parts(model, data.validation_batches(), seed)
    total, count = all_reduce_sums([sum(loss * size for loss, size in parts), sum(size for _, size in parts)])
    return total / count if count else None


@torch.no_grad()
def _validation_parts(model: LatentODE, batches: Iterable[PatientBatch], seed: int, n_draws: int = 4) -> list[tuple[float, int]]:
    """Each batch's negative ELBO at the forecasting cut-off, averaged over fixed noise draws, with its patients."""
    model.eval()
    generator = torch.Generator().manual_seed(seed + 1)
    parts = []
    for batch in batches:
        cutoff = forecast_cutoffs(batch)
        parts.append((sum(model.elbo(batch, cutoff, generator)["loss"].item() for _ in range(n_draws)) / n_draws, len(batch)))
    model.train()
    return parts


def validation_loss(model: LatentODE, batches: Iterable[PatientBatch], seed: int, n_draws: int = 4) -> float | None:
    """Negative ELBO at the forecasting protocol's cut-off, averaged over fixed noise draws and patients (None: no patients).

    The draws come from one generator, fixed by ``seed``, across the batches; each
    batch's loss is weighed by its share of the patients.
    """
    parts = _validation_parts(model, batches, seed, n_draws)
    n = sum(size for _, size in parts)
    # one batch weighs 1.0 exactly: the loss of a validation set held in memory is that batch's, to the last bit
    return sum(loss * (size / n) for loss, size in parts) if n else None
