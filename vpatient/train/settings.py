"""What training is told and what it reports: TrainSettings, TrainingHistory, settings files, threads.

Settings come in layers (defaults, a ``--settings`` JSON file, command-line options) and are
checked by one set of rules, :class:`SettingsFile`, wherever each value came from.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from vpatient.errors import ConfigError, VPatientError
from vpatient.model.latent_ode import ModelSettings

__all__ = [
    "SETTING_RANGES",
    "SettingsFile",
    "SettingsFileBase",
    "TrainSettings",
    "TrainingHistory",
    "build_settings",
    "default_threads",
    "layered_settings",
    "torch_threads",
]


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
