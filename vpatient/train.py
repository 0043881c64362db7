"""Fitting the world model: random cut-offs, early stopping, reproducible from a seed.

Every source of randomness (initial weights, validation split, mini-batches, cut-offs,
posterior noise) comes from the one ``seed``; the global RNG state is left as it was.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from tqdm.auto import tqdm

from vpatient.data.batching import Scalers, layout_from_config, make_batch
from vpatient.diagnostics import noise_warnings
from vpatient.errors import ConfigError, VPatientError
from vpatient.model.batch import PatientBatch
from vpatient.model.latent_ode import LatentODE, ModelSettings
from vpatient.schemas import DatasetConfig, PatientRecord

__all__ = [
    "SETTING_RANGES",
    "SettingsFile",
    "SettingsFileBase",
    "TrainSettings",
    "TrainingHistory",
    "build_settings",
    "default_threads",
    "fit_latent_ode",
    "forecast_cutoffs",
    "layered_settings",
    "random_cutoffs",
    "torch_threads",
]

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
    # Share of cut-offs placed before the first visit, so that the posterior from covariates
    # and history codes alone is trained to forecast every visit: the belief about a new
    # patient, which next-test selection at a first visit starts from.
    covariates_only_fraction: float = 0.1
    seed: int = 0
    # Ensemble members (model uncertainty): each trains on a bootstrap resample of the
    # training patients with its own seed (vpatient.ensemble); 1 is a single model.
    members: int = 1
    # Wall-clock limit in minutes: training stops at the end of the epoch that passes it and
    # keeps the best weights so far. An ensemble shares it out between its rounds of members.
    max_minutes: float | None = None
    # torch intra-op threads while training; None: default_threads() (measured: see there)
    threads: int | None = None

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
    stopped_on_time: bool = False  # the max_minutes limit ended training, not early stopping or the epochs
    warnings: list[str] = field(default_factory=list)  # what a check of the trained model found (vpatient.diagnostics)

    def to_dict(self) -> dict:
        return asdict(self)


#: Ranges of the settings a file or the options may set; a field not named here is checked by its type alone.
SETTING_RANGES: dict[str, Any] = {
    "epochs": Field(ge=1),
    "learning_rate": Field(gt=0),
    "weight_decay": Field(ge=0),
    "batch_size": Field(ge=1),
    "validation_fraction": Field(ge=0, lt=1),
    "patience": Field(ge=1),
    "lr_patience": Field(ge=1),
    "full_history_fraction": Field(ge=0, le=1),
    "covariates_only_fraction": Field(ge=0, le=1),
    "max_minutes": Field(gt=0),
    "threads": Field(ge=1),
    "members": Field(ge=1, le=256),
    # upper bounds so that a typo, or a damaged checkpoint's model.json, fails at once instead of allocating gigabytes
    "latent_dim": Field(ge=1, le=1024),
    "hidden": Field(ge=1, le=8192),
    "step": Field(gt=0),
}


def _settings_fields() -> dict[str, Any]:
    """Every field of TrainSettings and ModelSettings, typed as there, with its range; unset (None) unless given."""
    hints = get_type_hints(TrainSettings) | get_type_hints(ModelSettings)
    names = [f.name for settings in (TrainSettings, ModelSettings) for f in fields(settings)]
    # default None: a key left out stays unset (read() drops it), while an explicit null for a non-optional field is refused
    return {name: (Annotated[hints[name], SETTING_RANGES.get(name, Field())], None) for name in names}


class SettingsFileBase(BaseModel):
    """A JSON file of training and model settings (``vpatient train --settings FILE``): any fields of both.

    Its fields are those of :class:`TrainSettings` and :class:`ModelSettings` (``SettingsFile``
    is built from them, so a new setting is accepted as soon as it exists), checked strictly:
    an unknown key, a wrong type or a value out of ``SETTING_RANGES`` is refused. Fields left
    out keep their defaults.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @classmethod
    def read(cls, path: str | Path) -> dict[str, Any]:
        """The settings the file at ``path`` gives (only the keys it names); a bad file is a :class:`ConfigError` naming the key."""
        path = Path(path)
        try:
            return cls.model_validate_json(path.read_bytes()).model_dump(exclude_unset=True)
        except ValidationError as exc:
            raise ConfigError(f"settings file {path}: {_first_problem(exc)}") from None

    @classmethod
    def check(cls, values: Mapping[str, Any], source: str = "training settings", parsed_json: bool = False) -> dict[str, Any]:
        """``values`` (from options, say) checked by the same rules; a bad one is a :class:`ConfigError` from ``source``.

        ``parsed_json``: the values were read from JSON (a checkpoint's ``model.json``), where a setting
        such as the solver is its plain string, and are checked as the file would be.
        """
        try:
            if parsed_json:
                return cls.model_validate_json(json.dumps(dict(values))).model_dump(exclude_unset=True)
            return cls.model_validate(dict(values)).model_dump(exclude_unset=True)
        except ValidationError as exc:
            raise ConfigError(f"{source}: {_first_problem(exc)}") from None


SettingsFile = create_model("SettingsFile", __base__=SettingsFileBase, **_settings_fields())


def _first_problem(exc: ValidationError) -> str:
    """A pydantic error as one line that names the key: "unknown key 'x'" or "batch_size = 0: ..."."""
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown key {key!r} (known: {', '.join(SettingsFile.model_fields)})"
    if not key:  # the file itself: not JSON, or not an object
        return error["msg"]
    return f"{key} = {error['input']!r}: {error['msg']}"


def build_settings(values: Mapping[str, Any], base: TrainSettings | None = None) -> tuple[TrainSettings, ModelSettings]:
    """``base`` (default: the defaults) and the default ModelSettings, with each of ``values`` given to the settings that own it."""
    train_keys = {f.name for f in fields(TrainSettings)}
    model_keys = {f.name for f in fields(ModelSettings)}
    unknown = set(values) - train_keys - model_keys
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    train = replace(base or TrainSettings(), **{k: v for k, v in values.items() if k in train_keys})
    model = ModelSettings(**{k: v for k, v in values.items() if k in model_keys})
    return train, model


def layered_settings(
    settings_file: str | Path | None, defaults: Mapping[str, Any] | None = None, given: Mapping[str, Any] | None = None
) -> tuple[TrainSettings, ModelSettings]:
    """Settings in layers: ``defaults``, then the file's (``--settings``), then ``given`` options (None: not given).

    One set of rules (:class:`SettingsFile`) checks the result, wherever each value came from.
    """
    from_file = SettingsFile.read(settings_file) if settings_file is not None else {}
    chosen = {name: value for name, value in (given or {}).items() if value is not None}
    return build_settings(SettingsFile.check(dict(defaults or {}) | from_file | chosen))


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
    history = TrainingHistory(
        n_train=len(train_records), n_validation=len(val_records), validation_ids=[r.subject_id for r in val_records]
    )
    with torch_threads(settings.threads or default_threads()):
        _optimise(model, train_batch, val_batch, settings, history, progress)
        history.warnings = noise_warnings(model, train_batch)
    for warning in history.warnings:
        log.warning("%s", warning)
    return model, scalers, history


def _optimise(
    model: LatentODE,
    train_batch: PatientBatch,
    val_batch: PatientBatch | None,
    settings: TrainSettings,
    history: TrainingHistory,
    progress: bool,
) -> None:
    """The training loop: AdamW epochs until early stopping, the epoch limit or the time limit; leaves the best weights in ``model``."""
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
        perm = torch.randperm(len(train_batch), generator=generator)
        losses = []
        for chunk in perm.split(settings.batch_size):
            batch = train_batch.select(chunk)
            cutoff = random_cutoffs(batch, generator, settings.full_history_fraction, settings.covariates_only_fraction)
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
        log.info(
            "epoch %d/%d: train %.3f, validation %.3f (best epoch %d); at most %.1f min left",
            epoch + 1, settings.epochs, history.train_loss[-1], val_loss, history.best_epoch, eta / 60,
        )  # fmt: skip
        if since_best >= settings.patience:
            log.info("early stopping at epoch %d (best %d)", epoch, history.best_epoch)
            break
        if now >= deadline and epoch + 1 < settings.epochs:
            history.stopped_on_time = True
            log.info(
                "stopping at epoch %d: the %g-minute limit has passed (best %d)",
                epoch,
                settings.max_minutes,
                history.best_epoch,
            )
            break
    model.load_state_dict(best_state)
    model.eval()
    history.seconds = time.perf_counter() - start


def default_threads(cores: int | None = None) -> int:
    """torch threads for training when not told: 1 on a machine of at most 2 cores, else all cores but one.

    The networks are small (64 hidden units, batches of 64 patients), so a second thread
    gains little and, on a busy 2-core machine, costs a lot: measured on the synthetic
    cohort on a loaded 2-core machine, an epoch took 0.3 s with one thread and 2.4-5.7 s
    with two (200 patients), 2.7-3.3 s against 24-82 s (1,000 patients), the threads
    waiting on each other at OpenMP barriers. Machines of more cores were not measured.
    """
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return 1 if cores <= 2 else cores - 1


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads, restoring torch's previous count after."""
    if threads < 1:
        raise VPatientError(f"threads must be at least 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def validation_loss(model: LatentODE, batch: PatientBatch, seed: int, n_draws: int = 4) -> float:
    """Negative ELBO at the forecasting protocol's cut-off, averaged over fixed noise draws."""
    model.eval()
    generator = torch.Generator().manual_seed(seed + 1)
    cutoff = forecast_cutoffs(batch)
    loss = sum(model.elbo(batch, cutoff, generator)["loss"].item() for _ in range(n_draws)) / n_draws
    model.train()
    return loss
