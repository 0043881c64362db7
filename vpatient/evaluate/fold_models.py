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
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from vpatient.data.cohort import Cohort
from vpatient.evaluate.protocol import Fold, forecast_folds
from vpatient.schemas import DatasetConfig, PatientRecord
from vpatient.staging import staging_dir
from vpatient.version import __version__

if TYPE_CHECKING:  # torch-backed: imported where a model is trained, not when the CLI starts
    from vpatient.model.latent_ode import ModelSettings
    from vpatient.train import TrainSettings
    from vpatient.virtual_patient import VirtualPatientModel

__all__ = [
    "DEFAULT_CACHE",
    "FoldModel",
    "TrainingRun",
    "cache_key",
    "fold_model",
    "fold_models",
    "full_model",
    "model_dir",
    "trained_model",
]

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


@dataclass(frozen=True)
class TrainingRun:
    """How a cached world model is trained: ``TrainSettings(seed=seed)`` and ``ModelSettings()``, or the settings given.

    ``settings``/``model_settings`` replace the defaults (tests shrink them; the seed is
    always ``seed``); ``cache_dir=None`` trains without caching; ``progress`` shows the
    training's progress bar.
    """

    seed: int
    cache_dir: str | Path | None = DEFAULT_CACHE
    settings: TrainSettings | None = None
    model_settings: ModelSettings | None = None
    progress: bool = False

    def resolved(self) -> tuple[TrainSettings, ModelSettings]:
        """The run's settings: the defaults unless given, the seed always ``seed``."""
        from vpatient.model.latent_ode import ModelSettings
        from vpatient.train import TrainSettings

        return replace(self.settings or TrainSettings(), seed=self.seed), self.model_settings or ModelSettings()


def model_dir(records: Sequence[PatientRecord], config: DatasetConfig, tag: str, run: TrainingRun) -> Path:
    """The cache folder of this training run (it may not exist yet)."""
    if run.cache_dir is None:
        raise ValueError("a training run without a cache folder (cache_dir=None) has no model folder")
    key = cache_key(records, config, *run.resolved())
    return Path(run.cache_dir) / f"{tag}-seed{run.seed}-v{__version__}-{key}"


def trained_model(records: Sequence[PatientRecord], config: DatasetConfig, tag: str, run: TrainingRun) -> VirtualPatientModel:
    """The model trained on ``records`` as ``run`` says (:class:`TrainingRun`).

    Loaded from ``run.cache_dir`` when this exact run was trained before (module
    docstring); otherwise trained with :meth:`VirtualPatientModel.fit` and saved there.
    """
    from vpatient.virtual_patient import VirtualPatientModel

    records = list(records)
    settings, model_settings = run.resolved()
    if run.cache_dir is None:
        return VirtualPatientModel.fit(records, config, settings, model_settings, progress=run.progress)
    target = model_dir(records, config, tag, run)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.with_name(target.name + ".lock")):
        if (target / _COMPLETE).is_file():
            log.info("%s: loading the cached model %s", tag, target)
            return VirtualPatientModel.load(target)
        log.info("%s: training on %d patients (cache %s)", tag, len(records), target)
        started = time.perf_counter()
        model = VirtualPatientModel.fit(records, config, settings, model_settings, progress=run.progress)
        tmp = staging_dir(target)
        model.save(tmp)
        shutil.rmtree(target, ignore_errors=True)  # a partial folder left by a crash
        tmp.rename(target)
        log.info("%s: trained in %.0f s, saved to %s", tag, time.perf_counter() - started, target)
        return model


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


def fold_model(cohort: Cohort, index: int, n_folds: int, train: Sequence[PatientRecord], run: TrainingRun) -> VirtualPatientModel:
    """Fold ``index`` of ``n_folds``'s model, trained on ``train`` (tag ``<data>-fold<index>of<n_folds>``)."""
    return trained_model(train, cohort.config, f"{cohort.name}-fold{index}of{n_folds}", run)


def fold_models(cohort: Cohort, n_folds: int, run: TrainingRun) -> list[FoldModel]:
    """The forecasting benchmark's folds (``forecast_folds(cohort, n_folds, run.seed)``), each with its model.

    Every fold's model is :func:`fold_model`, trained with seed ``run.seed`` (as the
    forecasting benchmark trains every fold's world model with the split's seed).
    """
    folds = forecast_folds(cohort, n_folds, run.seed)
    return [FoldModel(fold, fold_model(cohort, fold.index, n_folds, fold.train, run)) for fold in folds]


def full_model(cohort: Cohort, run: TrainingRun) -> VirtualPatientModel:
    """The model trained on every record of ``cohort`` (tag ``<data>-all``)."""
    return trained_model(cohort.records, cohort.config, f"{cohort.name}-all", run)
