"""Fitting the world model: random cut-offs, early stopping, reproducible from a seed.

Every source of randomness (initial weights, validation split, mini-batches, cut-offs,
posterior noise) comes from the one ``seed``; the global RNG state is left as it was.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from vpatient.data.batching import Scalers, layout_from_config, make_batch
from vpatient.errors import VPatientError
from vpatient.model.batch import PatientBatch
from vpatient.model.latent_ode import LatentODE, ModelSettings
from vpatient.schemas import DatasetConfig, PatientRecord

__all__ = ["TrainSettings", "TrainingHistory", "fit_latent_ode", "forecast_cutoffs", "random_cutoffs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """How to train; saved with the checkpoint."""

    epochs: int = 400
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    validation_fraction: float = 0.15
    patience: int = 40  # epochs without validation improvement before stopping
    lr_patience: int = 10  # epochs without improvement before the learning rate halves
    full_history_fraction: float = 0.2  # share of cut-offs placed at the last visit
    seed: int = 0
    # Ensemble members (model uncertainty): each trains on a bootstrap resample of the
    # training patients with its own seed (vpatient.ensemble); 1 is a single model.
    members: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainingHistory:
    """Per-epoch losses and where training stopped."""

    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    n_train: int = 0
    n_validation: int = 0
    validation_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def random_cutoffs(batch: PatientBatch, generator: torch.Generator, full_fraction: float) -> torch.Tensor:
    """A cut-off per patient at one of its visits, uniformly; some at the last visit."""
    n_visits = batch.visit_mask.sum(dim=1).long().clamp(min=1)
    pick = (torch.rand(len(batch), generator=generator) * n_visits).long().clamp(max=n_visits - 1)
    full = torch.rand(len(batch), generator=generator) < full_fraction
    pick = torch.where(full, n_visits - 1, pick)
    return batch.times.gather(1, pick.unsqueeze(1)).squeeze(1)


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
) -> tuple[LatentODE, Scalers, TrainingHistory]:
    """Train one LatentODE network on ``records``; returns the best weights (by validation ELBO).

    ``scalers`` (default: fitted on the training split) lets ensemble members share one
    standardisation; ``bootstrap`` trains on a resample, with replacement, of the
    training split (the validation split stays as drawn, so no patient is in both).
    """
    settings = settings or TrainSettings()
    if len(records) < 4:
        raise VPatientError(f"training needs at least 4 patients, got {len(records)}")
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(len(records))
    n_val = max(1, round(settings.validation_fraction * len(records))) if settings.validation_fraction > 0 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    train_records = [records[i] for i in sorted(train_idx)]
    val_records = [records[i] for i in sorted(val_idx)]
    if bootstrap:
        train_records = [train_records[i] for i in np.sort(rng.integers(0, len(train_records), len(train_records)))]
    scalers = scalers or Scalers.fit(train_records, config)
    layout = layout_from_config(config)
    train_batch = make_batch(train_records, config, scalers)
    val_batch = make_batch(val_records, config, scalers) if val_records else None

    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)  # weight init reads the global RNG; fork_rng restores it after
        model = LatentODE(layout, model_settings, time_scale=scalers.time_scale)
    generator = torch.Generator().manual_seed(settings.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimiser, factor=0.5, patience=settings.lr_patience, min_lr=settings.learning_rate / 32
    )
    history = TrainingHistory(
        n_train=len(train_records), n_validation=len(val_records), validation_ids=[r.subject_id for r in val_records]
    )
    best_state, best_loss, since_best = copy.deepcopy(model.state_dict()), math.inf, 0
    start = time.perf_counter()
    bar = tqdm(range(settings.epochs), desc="training", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(train_batch), generator=generator)
        losses = []
        for chunk in perm.split(settings.batch_size):
            batch = train_batch.select(chunk)
            cutoff = random_cutoffs(batch, generator, settings.full_history_fraction)
            loss = model.elbo(batch, cutoff, generator)["loss"]
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimiser.step()
            losses.append(loss.item() * len(chunk))
        history.train_loss.append(sum(losses) / len(train_batch))
        val_loss = validation_loss(model, val_batch, settings.seed) if val_batch is not None else history.train_loss[-1]
        history.validation_loss.append(val_loss)
        scheduler.step(val_loss)
        if val_loss < best_loss - 1e-4:
            best_loss, since_best, history.best_epoch = val_loss, 0, epoch
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
        bar.set_postfix(train=f"{history.train_loss[-1]:.2f}", val=f"{val_loss:.2f}", best=history.best_epoch)
        if since_best >= settings.patience:
            log.info("early stopping at epoch %d (best %d)", epoch, history.best_epoch)
            break
    model.load_state_dict(best_state)
    model.eval()
    history.seconds = time.perf_counter() - start
    return model, scalers, history


@torch.no_grad()
def validation_loss(model: LatentODE, batch: PatientBatch, seed: int, n_draws: int = 4) -> float:
    """Negative ELBO at the forecasting protocol's cut-off, averaged over fixed noise draws."""
    model.eval()
    generator = torch.Generator().manual_seed(seed + 1)
    cutoff = forecast_cutoffs(batch)
    loss = sum(model.elbo(batch, cutoff, generator)["loss"].item() for _ in range(n_draws)) / n_draws
    model.train()
    return loss
