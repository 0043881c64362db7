"""The shared-evaluation benchmark: vpatient and the landmark Cox model scored by meds-evaluation on one label table.

``vpatient benchmark meds-eval`` takes a task (:mod:`vpatient.tasks`; default PBC's
``death_2y``: death within 2 years of each visit) and answers every label row twice, out
of sample:

- every patient is held out exactly once (:func:`~vpatient.evaluate.protocol.held_out_records`:
  the forecasting benchmark's folds, patients with too few visits dealt to them in turn);
- **vpatient**: the fold's world model (:func:`~vpatient.evaluate.fold_models.fold_model`,
  cached and shared with the other benchmarks) predicts the fold's held-out rows with
  :func:`vpatient.predict.predict`, from each record cut at the prediction time;
- **landmark-cox**: :class:`~vpatient.evaluate.baselines.LandmarkCox` fitted on the same
  fold's training patients gives the risk within the window at each prediction time (a
  Cox model per landmark, on what is known there), from the same cut records.

Both prediction tables are scored by ``meds_evaluation.evaluate.evaluate_binary_classification``
(AUROC, AUPRC, Brier score, calibration error, and accuracy and F1 at probability 0.5;
each with rows equally weighted and with ``samples_per_subject`` rows resampled per
subject). Intervals: a bootstrap over subjects (all of a subject's rows together, the
same resamples for both methods), percentile 95%; the AUROC difference is paired.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field
from tqdm.auto import tqdm

from vpatient.benchmarks.base import DEFAULT_OUT_DIR, StrictModel, VersionedBenchmarkResult
from vpatient.data.cohort import Cohort
from vpatient.evaluate.baselines import LandmarkCox
from vpatient.evaluate.fold_models import DEFAULT_CACHE, TrainingRun, fold_model
from vpatient.evaluate.protocol import Forecaster, ProtocolError, held_out_records
from vpatient.model.latent_ode import ModelSettings
from vpatient.predict import label_histories, predict, prediction_frame, write_predictions
from vpatient.schemas import PatientRecord
from vpatient.tables import markdown_table
from vpatient.tasks import Task, TaskSpec, meds_subject_ids
from vpatient.train import TrainSettings

__all__ = [
    "METRICS",
    "MedsEvalResult",
    "MedsEvalSettings",
    "MethodScores",
    "ScoreInterval",
    "landmark_risks",
    "meds_scores",
    "run_meds_eval_benchmark",
]

log = logging.getLogger(__name__)

#: meds-evaluation's metric names -> how the report names them.
METRICS = {
    "roc_auc_score": "AUROC",
    "average_precision_score": "AUPRC",
    "brier_score": "Brier score",
    "calibration_error": "calibration error",
    "binary_accuracy": "accuracy at 0.5",
    "f1_score": "F1 at 0.5",
}
DEFAULT_TASK = "pbc2-death_2y"
VPATIENT, COX = "vpatient", "landmark-cox"


@dataclass(frozen=True)
class MedsEvalSettings:
    """How the benchmark runs: folds and training seed, posterior samples, bootstrap resamples."""

    seed: int = 0
    n_folds: int = 5
    n_samples: int = 200
    batch_size: int = 32
    n_bootstrap: int = 1000
    samples_per_subject: int = 4
    cache_dir: str | Path | None = DEFAULT_CACHE
    train_settings: TrainSettings | None = None
    model_settings: ModelSettings | None = None
    progress: bool = True


# --------------------------------------------------------------------------- result types


class ScoreInterval(StrictModel):
    """A score and its bootstrap 95% interval over subjects (None where no resample could score it)."""

    value: float
    low: float | None = None
    high: float | None = None


class MethodScores(StrictModel):
    """meds-evaluation's scores of one method's predictions of the label table."""

    method: str
    description: str
    samples_equally_weighted: dict[str, ScoreInterval] = Field(
        description="Every label row counts once; intervals by the bootstrap over subjects."
    )
    subjects_equally_weighted: dict[str, float] = Field(
        description="meds-evaluation's subject-balanced scores: samples_per_subject rows drawn per subject."
    )


class MedsEvalResult(VersionedBenchmarkResult):
    """The result of ``vpatient benchmark meds-eval`` (protocol: module docstring)."""

    benchmark: Literal["meds-eval"] = "meds-eval"
    data: str
    task: TaskSpec
    seed: int
    n_folds: int
    n_samples: int = Field(description="Posterior sample paths per label row (vpatient).")
    n_bootstrap: int
    samples_per_subject: int
    n_rows: int = Field(description="Label rows scored.")
    n_positive: int = Field(description="Label rows whose event happened within the window.")
    n_subjects: int
    meds_evaluation_version: str
    methods: list[MethodScores]
    auroc_difference: ScoreInterval = Field(description="AUROC of vpatient minus landmark-cox, paired bootstrap interval.")
    train_settings: dict
    model_settings: dict
    runtime_seconds: float

    @property
    def stem(self) -> str:
        """meds-eval for PBC's death_2y, else meds-eval-{data}-{task}."""
        default = self.data == "pbc2" and self.task.name == "death_2y"
        return self.benchmark if default else f"{self.benchmark}-{Path(self.data).stem}-{self.task.name}"

    def write(
        self,
        out_dir: str | Path = DEFAULT_OUT_DIR,
        *,
        json_path: str | Path | None = None,
        predictions: Mapping[str, pd.DataFrame] | None = None,
    ) -> list[Path]:
        """The JSON and markdown and, when given, each method's predictions as ``<stem>-<method>.parquet``.

        The parquet files are what ``meds-evaluation-cli predictions_path=...`` reads, so anyone
        can score them again with meds-evaluation's own command.
        """
        paths = super().write(out_dir, json_path=json_path)
        for method, frame in (predictions or {}).items():
            paths.append(write_predictions(frame, Path(out_dir) / f"{self.stem}-{method}.parquet"))
            log.info("wrote %s", paths[-1])
        return paths

    def to_markdown(self) -> str:
        t = self.task
        lines = [
            f"# Shared evaluation (meds-evaluation): {self.data}, task {t.name}",
            "",
            f"vpatient {self.vpatient_version}, meds-evaluation {self.meds_evaluation_version}, seed {self.seed}. "
            f"Task: {t.description}.",
            "",
            f"{self.n_rows} label rows of {self.n_subjects} subjects, {self.n_positive} positive "
            f"({self.n_positive / max(self.n_rows, 1):.1%}). Every row is predicted out of sample: {self.n_folds} folds over "
            "patients, each fold's rows by the models trained on the other folds' patients. vpatient: "
            f"{_members(self.train_settings)}, {self.n_samples} posterior sample paths per row.",
            "",
            f"Rows equally weighted, with 95% bootstrap intervals over subjects ({self.n_bootstrap} resamples):",
            "",
            markdown_table(self._table(), index=False),
            "",
            f"AUROC difference vpatient - landmark-cox: {_interval(self.auroc_difference)} (paired bootstrap).",
            "",
            f"Subjects equally weighted ({self.samples_per_subject} rows drawn per subject, meds-evaluation's resampling):",
            "",
            markdown_table(self._subject_table(), index=False),
            "",
            "Methods: " + "; ".join(f"**{m.method}**: {m.description}" for m in self.methods) + ".",
            "",
            f"Runtime {self.runtime_seconds:.0f} s.",
            "",
        ]
        return "\n".join(lines)

    def _table(self) -> pd.DataFrame:
        rows = []
        for m in self.methods:
            row = {"method": m.method}
            row.update({METRICS[k]: _interval(v) for k, v in m.samples_equally_weighted.items() if k in METRICS})
            rows.append(row)
        return pd.DataFrame(rows)

    def _subject_table(self) -> pd.DataFrame:
        rows = []
        for m in self.methods:
            row: dict[str, object] = {"method": m.method}
            row.update({METRICS[k]: f"{v:.3f}" for k, v in m.subjects_equally_weighted.items() if k in METRICS})
            rows.append(row)
        return pd.DataFrame(rows)


def _members(train_settings: dict) -> str:
    """How the fold's world model is made: one network or an ensemble (the training benchmark's recipe is five)."""
    members = int(train_settings.get("members", 1))
    return "one model per fold" if members == 1 else f"an ensemble of {members} per fold"


def _interval(score: ScoreInterval) -> str:
    if score.low is None or score.high is None:
        return f"{score.value:.3f}"
    return f"{score.value:.3f} ({score.low:.3f} to {score.high:.3f})"


# --------------------------------------------------------------------------- predictions


def landmark_risks(
    method: Forecaster, histories: Sequence[PatientRecord], times: np.ndarray, window: float, event: str
) -> np.ndarray:
    """A landmark method's risk of ``event`` within ``window`` of each cut history, one :meth:`risk` call per distinct time."""
    risk = np.full(len(histories), np.nan)
    for t in np.unique(times):
        rows = np.flatnonzero(times == t)
        answer = method.risk([histories[i] for i in rows], float(t), [window], event)
        if answer is None:
            raise ProtocolError(f"{method.name} gives no risk")
        by_subject = dict(zip(answer["subject_id"], answer["risk"], strict=True))
        risk[rows] = [by_subject[histories[i].subject_id] for i in rows]
    return risk


def _fold_predictions(
    cohort: Cohort, task: Task, settings: MedsEvalSettings, run: TrainingRun, bar: tqdm
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both methods' out-of-sample predictions of every label row, in the label table's order."""
    spec = task.spec
    labels = task.labels.reset_index(drop=True)
    # every label subject must be in the data: checked on the whole table at once, before any training
    label_histories(cohort.records, labels, spec.time_unit, spec.event, source=f"task {spec.name}")
    vp = np.full(len(labels), np.nan)
    cox = np.full(len(labels), np.nan)
    for k, (train, test) in enumerate(held_out_records(cohort, settings.n_folds, settings.seed)):
        rows = np.flatnonzero(labels["subject_id"].isin(meds_subject_ids(r.subject_id for r in test)).to_numpy())
        if not rows.size:
            continue
        fold_task = Task(spec, labels.iloc[rows])
        bar.set_postfix(step=f"fold {k} model")
        model = fold_model(cohort, k, settings.n_folds, train, run)
        bar.set_postfix(step=f"fold {k} vpatient")
        answer = predict(model, test, fold_task, seed=settings.seed, n_samples=settings.n_samples, batch_size=settings.batch_size)
        vp[rows] = answer["predicted_boolean_probability"].to_numpy(float)
        bar.set_postfix(step=f"fold {k} landmark-cox")
        histories, times = label_histories(test, fold_task.labels, spec.time_unit, spec.event)
        cox_model = LandmarkCox().fit(list(train), cohort.config, settings.seed)
        cox[rows] = landmark_risks(cox_model, histories, times, spec.window, spec.event)
        bar.update(len(rows))
    return prediction_frame(labels, vp), prediction_frame(labels, cox)


# --------------------------------------------------------------------------- scores


def meds_scores(predictions: pd.DataFrame, samples_per_subject: int = 4, seed: int = 0) -> dict[str, dict[str, float]]:
    """meds-evaluation's binary scores of a prediction table (both weightings), as plain floats."""
    import polars as pl
    from meds_evaluation.evaluate import evaluate_binary_classification

    frame = pl.from_pandas(predictions)
    result = evaluate_binary_classification(frame, samples_per_subject=samples_per_subject, resampling_seed=seed)
    return {weighting: {k: float(v) for k, v in scores.items()} for weighting, scores in result.items()}


def _bootstrap(frames: dict[str, pd.DataFrame], n: int, seed: int, bar: tqdm) -> dict[str, list[dict[str, float]]]:
    """Each method's row-weighted scores on ``n`` resamples of subjects (the same resamples for every method)."""
    rng = np.random.default_rng(seed)
    subjects = frames[VPATIENT]["subject_id"].to_numpy()
    ids = np.unique(subjects)
    rows_of = {sid: np.flatnonzero(subjects == sid) for sid in ids}
    out: dict[str, list[dict[str, float]]] = {name: [] for name in frames}
    for _ in range(n):
        draw = rng.choice(ids, size=len(ids), replace=True)
        rows = np.concatenate([rows_of[sid] for sid in draw])
        # a subject drawn twice counts as two subjects: copies get their own ids
        copy_ids = np.repeat(np.arange(len(draw), dtype="int64"), [len(rows_of[sid]) for sid in draw])
        labels = frames[VPATIENT]["boolean_value"].to_numpy()[rows]
        bar.update()
        if labels.all() or not labels.any():
            continue  # one class only: no AUROC
        for name, frame in frames.items():
            sample = frame.iloc[rows].reset_index(drop=True)
            sample["subject_id"] = copy_ids
            out[name].append(meds_scores(sample, samples_per_subject=1, seed=seed)["samples_equally_weighted"])
    return out


def _with_interval(value: float, draws: Sequence[float]) -> ScoreInterval:
    finite = np.asarray([d for d in draws if math.isfinite(d)], dtype=float)
    if not finite.size:
        return ScoreInterval(value=value)
    low, high = np.quantile(finite, [0.025, 0.975])
    return ScoreInterval(value=value, low=float(low), high=float(high))


# --------------------------------------------------------------------------- the benchmark


def run_meds_eval_benchmark(
    cohort: Cohort, task: Task, settings: MedsEvalSettings | None = None
) -> tuple[MedsEvalResult, dict[str, pd.DataFrame]]:
    """Run the protocol of the module docstring on ``cohort`` and the label rows of ``task``.

    Returns the result and each method's predictions (meds-evaluation's layout), by method.
    """
    s = settings or MedsEvalSettings()
    started = time.perf_counter()
    run = TrainingRun(s.seed, s.cache_dir, s.train_settings, s.model_settings)
    train_settings, model_settings = run.resolved()
    bar = tqdm(
        total=len(task.labels) + s.n_bootstrap, desc="meds-eval benchmark", unit="row", file=sys.stderr, disable=not s.progress
    )
    vp, cox = _fold_predictions(cohort, task, s, run, bar)
    frames = {VPATIENT: vp, COX: cox}
    bar.set_postfix(step="bootstrap")
    draws = _bootstrap(frames, s.n_bootstrap, s.seed, bar)
    bar.close()
    descriptions = {
        VPATIENT: "the world model's probability of the event within the window, from the record cut at the prediction time",
        COX: "a Cox model per prediction time on the last values, age, sex and treatment known then (LandmarkCox)",
    }
    methods = []
    for name, frame in frames.items():
        scores = meds_scores(frame, s.samples_per_subject, s.seed)
        rows = scores["samples_equally_weighted"]
        methods.append(
            MethodScores(
                method=name,
                description=descriptions[name],
                samples_equally_weighted={k: _with_interval(v, [d[k] for d in draws[name]]) for k, v in rows.items()},
                subjects_equally_weighted=scores["subjects_equally_weighted"],
            )
        )
    auroc = {m.method: m.samples_equally_weighted["roc_auc_score"].value for m in methods}
    difference = [a["roc_auc_score"] - b["roc_auc_score"] for a, b in zip(draws[VPATIENT], draws[COX], strict=True)]
    labels = task.labels
    result = MedsEvalResult(
        data=cohort.name,
        task=task.spec,
        seed=s.seed,
        n_folds=s.n_folds,
        n_samples=s.n_samples,
        n_bootstrap=s.n_bootstrap,
        samples_per_subject=s.samples_per_subject,
        n_rows=len(labels),
        n_positive=int(labels["boolean_value"].sum()),
        n_subjects=int(labels["subject_id"].nunique()),
        meds_evaluation_version=version("meds-evaluation"),
        methods=methods,
        auroc_difference=_with_interval(auroc[VPATIENT] - auroc[COX], difference),
        train_settings=train_settings.to_dict(),
        model_settings=model_settings.to_dict(),
        runtime_seconds=round(time.perf_counter() - started, 1),
    )
    return result, frames
