"""World models trained once per dataset and fold, cached on disk and shared by the simulation benchmarks.

``vpatient benchmark pbc-trial`` and ``vpatient benchmark cohort-fidelity`` both need a
model trained on every PBC patient and one per fold of the forecasting protocol's split
(:func:`vpatient.evaluate.protocol.forecast_folds`). Training one takes minutes, so
:func:`trained_model` saves each checkpoint under
``cache_dir/<tag>-seed<seed>-v<vpatient version>-<key>`` and loads it from there next
time. ``key`` is a hash of what determines the training: the subject ids in training
order, the records' content, the dataset config and the train and model settings; a
different split, different data or different settings therefore never reuse a stale
model. A checkpoint is written to a temporary folder and renamed when complete, and a
lock file serialises two processes that want the same model, so a benchmark running
beside another waits for the other's training instead of repeating it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from vpatient.data.cohort import Cohort
from vpatient.evaluate.protocol import Fold, forecast_folds
from vpatient.schemas import DatasetConfig, PatientRecord
from vpatient.version import __version__

if TYPE_CHECKING:  # torch-backed: imported where a model is trained, not when the CLI starts
    from vpatient.model.latent_ode import ModelSettings
    from vpatient.train import TrainSettings
    from vpatient.virtual_patient import VirtualPatientModel

__all__ = ["DEFAULT_CACHE", "FoldModel", "cache_key", "fold_models", "full_model", "model_dir", "trained_model"]

log = logging.getLogger(__name__)

#: Where the benchmarks keep their trained models (ignored by git).
DEFAULT_CACHE = Path("benchmarks/.cache/models")
_COMPLETE = "model.json"  # written by VirtualPatientModel.save; the last file checked before reuse


def cache_key(
    records: Sequence[PatientRecord], config: DatasetConfig, settings: TrainSettings, model_settings: ModelSettings
) -> str:
    """A short hash of everything that determines a training run (ids in order, records, config, settings)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([r.subject_id for r in records]).encode())
    for record in records:
        digest.update(record.model_dump_json().encode())
    digest.update(config.model_dump_json().encode())
    digest.update(json.dumps(settings.to_dict(), sort_keys=True).encode())
    digest.update(json.dumps(model_settings.to_dict(), sort_keys=True).encode())
    return digest.hexdigest()[:12]


def model_dir(
    records: Sequence[PatientRecord],
    config: DatasetConfig,
    tag: str,
    seed: int,
    cache_dir: str | Path = DEFAULT_CACHE,
    settings: TrainSettings | None = None,
    model_settings: ModelSettings | None = None,
) -> Path:
    """The cache folder of this training run (it may not exist yet)."""
    settings, model_settings = _settings(settings, model_settings, seed)
    key = cache_key(records, config, settings, model_settings)
    return Path(cache_dir) / f"{tag}-seed{seed}-v{__version__}-{key}"


def trained_model(
    records: Sequence[PatientRecord],
    config: DatasetConfig,
    tag: str,
    seed: int,
    cache_dir: str | Path | None = DEFAULT_CACHE,
    progress: bool = False,
    *,
    settings: TrainSettings | None = None,
    model_settings: ModelSettings | None = None,
) -> VirtualPatientModel:
    """The model trained on ``records`` with ``TrainSettings(seed=seed)`` and ``ModelSettings()``.

    Loaded from ``cache_dir`` when this exact run was trained before (module docstring);
    otherwise trained with :meth:`VirtualPatientModel.fit` and saved there.
    ``settings``/``model_settings`` replace the defaults (tests shrink them; the seed
    is always ``seed``); ``cache_dir=None`` trains without caching.
    """
    from vpatient.virtual_patient import VirtualPatientModel

    records = list(records)
    settings, model_settings = _settings(settings, model_settings, seed)
    if cache_dir is None:
        return VirtualPatientModel.fit(records, config, settings, model_settings, progress=progress)
    target = model_dir(records, config, tag, seed, cache_dir, settings, model_settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.with_name(target.name + ".lock")):
        if (target / _COMPLETE).is_file():
            log.info("%s: loading the cached model %s", tag, target)
            return VirtualPatientModel.load(target)
        log.info("%s: training on %d patients (cache %s)", tag, len(records), target)
        started = time.perf_counter()
        model = VirtualPatientModel.fit(records, config, settings, model_settings, progress=progress)
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save(tmp)
        shutil.rmtree(target, ignore_errors=True)  # a partial folder left by a crash
        tmp.rename(target)
        log.info("%s: trained in %.0f s, saved to %s", tag, time.perf_counter() - started, target)
        return model


def _settings(
    settings: TrainSettings | None, model_settings: ModelSettings | None, seed: int
) -> tuple[TrainSettings, ModelSettings]:
    """The run's settings: the defaults unless given, the seed always ``seed``."""
    from vpatient.model.latent_ode import ModelSettings
    from vpatient.train import TrainSettings

    return replace(settings or TrainSettings(), seed=seed), model_settings or ModelSettings()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (POSIX advisory lock; no locking where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class FoldModel:
    """One fold of the protocol's split with the model trained on its training patients."""

    fold: Fold
    model: VirtualPatientModel


def fold_models(
    cohort: Cohort,
    n_folds: int,
    seed: int,
    cache_dir: str | Path | None = DEFAULT_CACHE,
    progress: bool = False,
    *,
    settings: TrainSettings | None = None,
    model_settings: ModelSettings | None = None,
) -> list[FoldModel]:
    """The forecasting benchmark's folds (``forecast_folds(cohort, n_folds, seed)``), each with its model.

    Fold ``i``'s model is tagged ``<data>-fold<i>of<n_folds>`` and trained with seed ``seed``
    (as the forecasting benchmark trains every fold's world model with the split's seed).
    """
    out = []
    for fold in forecast_folds(cohort, n_folds, seed):
        tag = f"{cohort.name}-fold{fold.index}of{n_folds}"
        model = trained_model(
            fold.train, cohort.config, tag, seed, cache_dir, progress, settings=settings, model_settings=model_settings
        )
        out.append(FoldModel(fold, model))
    return out


def full_model(
    cohort: Cohort,
    seed: int,
    cache_dir: str | Path | None = DEFAULT_CACHE,
    progress: bool = False,
    *,
    settings: TrainSettings | None = None,
    model_settings: ModelSettings | None = None,
) -> VirtualPatientModel:
    """The model trained on every record of ``cohort`` (tag ``<data>-all``)."""
    return trained_model(
        cohort.records,
        cohort.config,
        f"{cohort.name}-all",
        seed,
        cache_dir,
        progress,
        settings=settings,
        model_settings=model_settings,
    )
