"""The library side of the clinician what-if dashboard (``dashboards/app.py``).

The Streamlit app is thin: its widgets build the request objects defined here
(:class:`PlanSpec`, :class:`ForecastRequest`, :class:`WhatIfRequest`,
:class:`NextTestRequest`), a :class:`DashboardSession` computes (the model, its
dataset and a small cache of results, shared by every browser session), and the
functions here prepare what the renderers draw (tables, figures as PNG bytes, the
model card, a precomputed trial adjustment in plain words). Nothing in this module imports Streamlit, so all of it is testable
without a browser.

``vpatient dashboard`` (:func:`dashboard_command`) starts the app. With no ``--model``
it uses ``$VPATIENT_MODEL_DIR`` or the demo PBC model, trained once and cached under
``$VPATIENT_HOME/pbc2-model`` (default ``~/.cache/vpatient/pbc2-model``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer

from vpatient.errors import DataFormatError, Problem, RecordValidationError, VPatientError
from vpatient.schemas import (
    DatasetConfig,
    PatientRecord,
    TreatmentExposure,
    TreatmentPlan,
    VariableKind,
    parse_plan,
    parse_record,
)

__all__ = [
    "APP_PATH",
    "HOME_ENV",
    "MAX_PLANS",
    "MAX_UPLOAD_BYTES",
    "MODEL_ENV",
    "AdjustmentView",
    "DashboardSession",
    "ForecastRequest",
    "NextTestRequest",
    "PlanSpec",
    "UploadError",
    "WhatIfRequest",
    "dashboard_command",
    "demo_model_dir",
    "effect_table",
    "ensure_demo_model",
    "model_card",
    "parse_upload",
    "plot_timeline",
    "problems_table",
    "resolve_model_dir",
    "trial_adjustment_view",
]

MODEL_ENV = "VPATIENT_MODEL_DIR"  # checkpoint the app serves (set by `vpatient dashboard`)
HOME_ENV = "VPATIENT_HOME"  # where the demo model is cached (default ~/.cache/vpatient)
MAX_UPLOAD_BYTES = 5 * 1024 * 1024  # one patient's record is a few kB; refuse anything over 5 MB
MAX_PLANS = 3
UPLOAD_PREFIX = "upload:"
APP_PATH = Path(__file__).resolve().parents[1] / "dashboards" / "app.py"
_REPO_ROOT = Path(__file__).resolve().parents[1]
_CHECKPOINT_FILES = ("weights.pt", "config.json", "model.json", "scalers.json")

#: Plan actions a clinician can choose, by the label the app shows.
ACTIONS = {
    "as recorded": "continue",
    "start or change dose": "dose",
    "stop": "stop",
}


class UploadError(VPatientError, ValueError):
    """An uploaded file that is too large, of an unknown type, or not one patient's record."""


# --------------------------------------------------------------------------- the model on disk


def cache_home() -> Path:
    """``$VPATIENT_HOME``, or ``~/.cache/vpatient``."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vpatient"


def demo_model_dir() -> Path:
    return cache_home() / "pbc2-model"


def _complete(directory: Path) -> bool:
    return directory.is_dir() and all((directory / name).is_file() for name in _CHECKPOINT_FILES)


def ensure_demo_model(
    directory: str | Path | None = None, epochs: int = 400, seed: int = 0, echo: Callable[[str], None] | None = None
) -> Path:
    """The demo PBC model's checkpoint directory, trained once (a few minutes on a CPU) if not there yet.

    Training writes to a temporary folder beside the target and renames it, so an
    interrupted run never leaves a half-written checkpoint that looks complete.
    """
    target = Path(directory) if directory is not None else demo_model_dir()
    if _complete(target):
        return target
    echo = echo or (lambda message: print(message, file=sys.stderr))
    from vpatient.datasets import load_dataset
    from vpatient.train import TrainSettings
    from vpatient.virtual_patient import VirtualPatientModel

    echo(f"no demo model at {target}: training one on the embedded PBC data (once; up to {epochs} epochs) ...")
    cohort = load_dataset("pbc2")
    model = VirtualPatientModel.fit(cohort.records, cohort.config, TrainSettings(epochs=epochs, seed=seed), progress=True)
    model.data_source = "pbc2"
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".pbc2-model-", dir=target.parent))
    model.save(scratch)
    if target.exists():
        shutil.rmtree(target)
    scratch.rename(target)
    echo(f"demo model saved in {target}")
    return target


def resolve_model_dir(explicit: str | Path | None = None, train_demo: bool = True) -> Path:
    """The checkpoint to serve: ``explicit``, else ``$VPATIENT_MODEL_DIR``, else the demo PBC model."""
    chosen = explicit or os.environ.get(MODEL_ENV)
    if chosen:
        return Path(chosen).expanduser()
    if not train_demo and not _complete(demo_model_dir()):
        raise VPatientError(f"no model given and no demo model at {demo_model_dir()}: run `vpatient dashboard` once")
    return ensure_demo_model()


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class PlanSpec:
    """One plan as the editor describes it: an action on a treatment from a time.

    ``action``: ``continue`` (treatments as recorded go on), ``dose`` (start the
    treatment, or change its dose, from ``start``), ``stop`` (stop it from ``start``).
    ``start`` is in years after the decision time.
    """

    name: str
    action: str = "continue"
    treatment: str | None = None
    start: float = 0.0
    dose: float = 1.0

    def to_plan(self, record: PatientRecord, at: float, config: DatasetConfig) -> TreatmentPlan:
        """The TreatmentPlan this describes for ``record`` decided at ``at``, validated against ``config``."""
        if self.action not in ACTIONS.values():
            raise VPatientError(
                f"plan {self.name!r}: unknown action {self.action!r}; choose one of {', '.join(ACTIONS.values())}"
            )
        ongoing = [e.model_copy(update={"start": max(e.start, at)}) for e in record.treatments if e.stop is None or e.stop > at]
        exposures: list[TreatmentExposure] = ongoing
        description = "treatments as recorded"
        if self.action != "continue":
            if not self.treatment:
                raise VPatientError(f"plan {self.name!r}: choose the treatment to {self.action}")
            switch = at + max(float(self.start), 0.0)
            exposures = []
            for e in ongoing:
                if e.treatment != self.treatment:
                    exposures.append(e)
                elif e.start < switch:
                    exposures.append(e.model_copy(update={"stop": switch if e.stop is None else min(e.stop, switch)}))
            if self.action == "dose":
                exposures.append(TreatmentExposure(treatment=self.treatment, start=switch, stop=None, dose=float(self.dose)))
                description = f"{self.treatment} at dose {self.dose:g} from t = {switch:.2f}"
            else:
                description = f"stop {self.treatment} from t = {switch:.2f}"
        plan = TreatmentPlan(name=self.name, description=description, exposures=exposures)
        return parse_plan(plan.model_dump(mode="json"), config)


@dataclass(frozen=True)
class ForecastRequest:
    subject: str  # a subject id of the dataset, or an upload key
    until: float | None = None  # None: the last visit
    horizon: float = 5.0
    n_samples: int = 200
    seed: int = 0


@dataclass(frozen=True)
class WhatIfRequest:
    subject: str
    plans: tuple[PlanSpec, ...]
    at: float | None = None
    horizon: float = 5.0
    n_samples: int = 200
    seed: int = 0


@dataclass(frozen=True)
class NextTestRequest:
    subject: str
    target: str = "risk:death:5"
    at: float | None = None
    n_samples: int = 256
    seed: int = 0


# --------------------------------------------------------------------------- uploads


def parse_upload(name: str, data: bytes, config: DatasetConfig) -> PatientRecord:
    """One patient's record from an uploaded file: MEDS CSV/parquet, or a PatientRecord's JSON.

    Raises UploadError (size, type, not exactly one subject), DataFormatError (bad MEDS
    layout) or RecordValidationError (the schemas' problems: subject, field, value).
    """
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"{name}: {len(data) / 1e6:.1f} MB is over the {MAX_UPLOAD_BYTES / 1e6:.0f} MB limit for one record")
    suffix = Path(name).suffix.lower()
    if suffix == ".json":
        try:
            payload = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UploadError(f"{name}: not valid JSON ({exc})") from None
        if isinstance(payload, list):
            if len(payload) != 1:
                raise UploadError(f"{name}: holds {len(payload)} records; upload one patient's record")
            payload = payload[0]
        return parse_record(payload, config)
    if suffix in (".csv", ".parquet"):
        from vpatient.data.meds import read_meds

        with tempfile.TemporaryDirectory(prefix="vpatient-upload-") as tmp:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(data)
            try:
                records = read_meds(path, config, warnings_out=[])
            except (RecordValidationError, DataFormatError, UploadError):
                raise
            except Exception as exc:  # a file pandas / pyarrow cannot read at all
                raise UploadError(f"{name}: cannot read it as MEDS {suffix[1:]} ({type(exc).__name__}: {exc})") from None
        if len(records) != 1:
            raise UploadError(f"{name}: holds {len(records)} subjects; upload one patient's record")
        return records[0]
    raise UploadError(f"{name}: unknown file type {suffix or '(none)'}; upload MEDS .csv / .parquet or a record's .json")


def problems_table(problems: Sequence[Problem]) -> pd.DataFrame:
    """Validation problems as rows a clinician can read: subject, field, value, message."""
    return pd.DataFrame(
        [
            {
                "severity": p.severity,
                "subject": p.subject_id if p.subject_id is not None else (p.owner or ""),
                "field": p.field,
                "value": str(p.value),
                "message": p.message,
            }
            for p in problems
        ],
        columns=["severity", "subject", "field", "value", "message"],
    )


# --------------------------------------------------------------------------- the session


class _LRU:
    def __init__(self, size: int):
        self.size = size
        self.items: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = compute()
        self.items[key] = value
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


@dataclass
class DashboardSession:
    """The loaded model, its dataset, uploaded records and a cache of recent results.

    One per server (Streamlit's ``cache_resource``); computing is serialised by a lock
    because the model's posterior cache is not thread-safe.
    """

    model: Any  # VirtualPatientModel
    model_dir: Path
    cohort: Any = None  # Cohort of the model's data source, when it can be loaded
    uploads: OrderedDict[str, PatientRecord] = field(default_factory=OrderedDict)
    _cache: _LRU = field(default_factory=lambda: _LRU(64))
    _lock: threading.RLock = field(default_factory=threading.RLock)

    @classmethod
    def load(cls, model_dir: str | Path) -> DashboardSession:
        from vpatient.datasets import load_dataset
        from vpatient.virtual_patient import VirtualPatientModel

        model = VirtualPatientModel.load(model_dir)
        cohort = None
        source = model.dataset_name
        try:
            cohort = load_dataset(source)
        except VPatientError:
            cohort = None  # a model of data not on this machine: uploads only
        return cls(model, Path(model_dir), cohort)

    @property
    def config(self) -> DatasetConfig:
        return self.model.config

    # -- patients ------------------------------------------------------------

    def subject_ids(self, query: str = "") -> list[str]:
        """Subject ids of the dataset containing ``query`` (all when empty)."""
        ids = self.cohort.subject_ids() if self.cohort is not None else []
        query = query.strip()
        return [i for i in ids if query in i] if query else ids

    def add_upload(self, name: str, data: bytes) -> str:
        """Validate an upload and keep it; returns the key requests name it by."""
        record = parse_upload(name, data, self.config)
        key = f"{UPLOAD_PREFIX}{record.subject_id}:{hashlib.sha256(data).hexdigest()[:12]}"
        with self._lock:
            self.uploads[key] = record
            while len(self.uploads) > 32:
                self.uploads.popitem(last=False)
        return key

    def record(self, subject: str) -> PatientRecord:
        if subject.startswith(UPLOAD_PREFIX):
            if subject not in self.uploads:
                raise VPatientError("the uploaded record is no longer in memory; upload it again")
            return self.uploads[subject]
        if self.cohort is None:
            raise VPatientError("this model's dataset is not available here: upload a patient's record")
        return self.cohort.subject(subject)

    def last_visit(self, subject: str) -> float:
        return float(max(self.record(subject).visit_times(), default=0.0))

    # -- computing -------------------------------------------------------------

    def _cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        with self._lock:
            return self._cache.get(key, compute)

    def forecast(self, request: ForecastRequest):
        record = self.record(request.subject)
        return self._cached(
            ("forecast", request),
            lambda: self.model.forecast(record, request.until, request.horizon, request.n_samples, request.seed),
        )

    def plans(self, request: WhatIfRequest) -> list[TreatmentPlan]:
        """The request's plans as validated TreatmentPlans (RecordValidationError lists every problem)."""
        record = self.record(request.subject)
        at = self.last_visit(request.subject) if request.at is None else request.at
        names = [p.name for p in request.plans]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        problems = [
            Problem(None, "name", n, "two plans share this name; give each plan its own", owner=f"plan {n!r}") for n in duplicated
        ]
        plans = []
        for spec in request.plans:
            try:
                plans.append(spec.to_plan(record, at, self.config))
            except RecordValidationError as exc:
                problems += exc.problems
        if problems:
            raise RecordValidationError(problems, header="invalid treatment plan")
        return plans

    def whatif(self, request: WhatIfRequest):
        from vpatient.simulation.simulator import Simulator

        record = self.record(request.subject)
        plans = self.plans(request)
        return self._cached(
            ("whatif", request),
            lambda: Simulator(self.model).whatif(record, plans, request.horizon, request.n_samples, request.seed, request.at),
        )

    def recommend(self, request: NextTestRequest):
        from vpatient.policy import recommend

        record = self.record(request.subject)
        return self._cached(
            ("recommend", request),
            lambda: recommend(self.model, record, request.target, request.at, request.n_samples, request.seed),
        )

    def figure(self, kind: str, request: Any) -> bytes:
        """PNG bytes of one figure (timeline, forecast, whatif), cached with the result it draws."""
        from vpatient import plots

        def draw() -> bytes:
            if kind == "timeline":
                fig = plot_timeline(self.record(request), self.config)
            elif kind == "forecast":
                fig = plots.plot_forecast(self.forecast(request), self.record(request.subject))
            elif kind == "whatif":
                fig = plots.plot_whatif(self.whatif(request))
            else:
                raise ValueError(f"unknown figure {kind!r}")
            return _png(fig)

        return self._cached(("figure", kind, request), draw)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


# --------------------------------------------------------------------------- renderers' data


def effect_table(result, kinds: Sequence[str] = ("probability", "years")) -> pd.DataFrame:
    """The what-if's effects against the reference plan, for display.

    ``kinds``: ``probability`` (difference in event-free probability at 1/2/5 years),
    ``years`` (difference in restricted mean event-free time), ``lab`` (typical lab
    values). Numbers are the library's own (``WhatIfResult.effects``), unrounded.
    """
    effects = result.effects()
    part = effects[effects["kind"].isin(kinds)]
    table = pd.DataFrame(
        {
            "plan": part["plan"],
            "vs": part["reference"],
            "quantity": part["quantity"]
            .str.replace("survival:", "free of ", regex=False)
            .str.replace("rmst:", "years free of ", regex=False),
            "horizon (years)": part["horizon"],
            "difference": part["difference"],
            "90% lower": part["lower"],
            "90% upper": part["upper"],
            "unit": part["unit"],
        }
    )
    return table.reset_index(drop=True)


def forecast_table(forecast, years: float | None = None) -> pd.DataFrame:
    """Each lab's forecast ``years`` after the forecast time (default: the horizon): median, 50% and 90% ranges."""
    summary = forecast.summary()
    times = np.unique(summary["time"].to_numpy())
    wanted = forecast.until + (years if years is not None else float(times.max()) - forecast.until)
    t = float(times[np.argmin(np.abs(times - wanted))])
    part = summary[np.isclose(summary["time"], t)]
    units = {v.name: v.unit or "" for v in forecast.config.variables}
    return pd.DataFrame(
        {
            "variable": part["variable"].to_numpy(),
            "at t": t,
            "median": part["q50"].to_numpy(),
            "50% range": [f"{a:.3g}-{b:.3g}" for a, b in zip(part["q25"], part["q75"], strict=True)],
            "90% range": [f"{a:.3g}-{b:.3g}" for a, b in zip(part["q05"], part["q95"], strict=True)],
            "unit": [units[v] for v in part["variable"]],
        }
    )


def styled(table: pd.DataFrame, digits: int = 3):
    """A Styler showing floats to ``digits`` significant digits (tiny effects stay readable); data unchanged."""
    floats = [c for c in table.columns if pd.api.types.is_float_dtype(table[c])]
    return table.style.format({c: f"{{:.{digits}g}}" for c in floats}).hide(axis="index")


def recommendation_table(recommendation) -> pd.DataFrame:
    """The ranked tests (best EIG per cost first), EIG in bits for reading."""
    table = recommendation.table()
    return pd.DataFrame(
        {
            "test": table["test"],
            "EIG (bits)": table["eig"] / math.log(2),
            "± MC error": table["mc_error"] / math.log(2),
            "cost": table["cost"],
            "EIG per cost": table["eig_per_cost"] / math.log(2),
            "done at t": table["done_at_t"],
            "predicted results (5-95%)": table["predicted_results"],
        }
    )


def test_explanation(recommendation, test: str) -> str:
    """Plain words on how one test's result would shrink the target's uncertainty."""
    gain = next(g for g in recommendation.gains if g.test == test)
    target = recommendation.target
    if target.kind == "risk":
        what = f"whether {target.event} happens within {target.horizon:g} years"
    elif target.kind == "forecast":
        what = f"{target.variable} in {target.horizon:g} years"
    else:
        what = "the latent disease state"
    if gain.done:
        return f"{test} was already done at t = {recommendation.at:.2f}: a repeat tells nothing new about {what}."
    bits = gain.eig / math.log(2)
    ranges = "; ".join(f"{k}: {v}" for k, v in gain.predicted.items()) or "no prediction"
    return (
        f"Ordering {test} (cost {gain.cost:g}) is expected to reduce the uncertainty about {what} by "
        f"{bits:.4f} bits (Monte Carlo error ± {gain.mc_error / math.log(2):.4f}). "
        f"Its results are predicted to fall in: {ranges}. A wide predicted range that the model "
        "would read differently at each end is what makes a test informative."
    )


def plot_timeline(record: PatientRecord, config: DatasetConfig):
    """Small multiples of one patient's record: labs (units, reference ranges), signs, treatments, events."""
    import matplotlib.pyplot as plt

    from vpatient.plots import panels

    labs = [v for v in config.of_kind(VariableKind.CONTINUOUS)]
    signs = [v for v in config.of_kind(VariableKind.BINARY, VariableKind.ORDINAL)]
    n_panels = len(labs) + (1 if signs else 0)
    fig, axes = panels(max(n_panels, 1), None, height=2.4)
    end = max([record.end_of_followup, *[o.time for o in record.observations]], default=1.0)

    def context(ax) -> None:
        for k, exp in enumerate(record.treatments):
            stop = exp.stop if exp.stop is not None else end
            ax.axvspan(exp.start, stop, color=f"C{k + 1}", alpha=0.08, label=f"{exp.treatment} (dose {exp.dose:g})")
        for event in record.events:
            ax.axvline(event.time, color="crimson", ls="-", lw=1.5, label=event.kind)
        ax.set_xlim(min(0.0, *[o.time for o in record.observations]) - 0.1, end + 0.1)
        ax.grid(alpha=0.3)

    for ax, spec in zip(axes, labs, strict=False):
        seen = sorted((o.time, o.value) for o in record.observations if o.variable == spec.name)
        if seen:
            t, v = zip(*seen, strict=True)
            ax.plot(t, v, "o-", color="black", ms=3.5, lw=1)
        else:
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", color="grey")
        if spec.reference_range:
            ax.axhspan(*spec.reference_range, color="green", alpha=0.08)
        if spec.transform.value == "log" and seen:
            ax.set_yscale("log")
        ax.set_title(f"{spec.name} ({spec.unit})" if spec.unit else spec.name, fontsize=10)
        context(ax)
    if signs:
        ax = axes[len(labs)]
        for row, spec in enumerate(signs):
            seen = [(o.time, o.value) for o in record.observations if o.variable == spec.name]
            if not seen:
                continue
            t, v = (np.asarray(x) for x in zip(*seen, strict=True))
            top = max(spec.levels) if spec.levels else 1.0
            low = min(spec.levels) if spec.levels else 0.0
            shade = (v - low) / (top - low) if top > low else v
            ax.scatter(t, np.full(len(t), row), c=shade, cmap="Reds", vmin=-0.2, vmax=1, edgecolors="black", s=30, zorder=3)
        ax.set_yticks(range(len(signs)), [s.name for s in signs], fontsize=8)
        ax.set_ylim(-0.7, len(signs) - 0.3)
        ax.set_title("clinical signs (darker: present / worse)", fontsize=10)
        context(ax)
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    handles, labels = [], []
    for ax in axes[:n_panels]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=8)
    fig.suptitle(f"subject {record.subject_id}: record up to t = {record.end_of_followup:.2f} {config.time_unit.value}")
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    plt.figure(fig.number)
    return fig


def model_card(model, model_dir: Path, results_dir: Path | None = None) -> dict:
    """What the model is, in plain words: training data, settings, benchmark figures, intended use and limits."""
    history = model.history
    settings = model.train_settings
    source = model.dataset_name
    training = {
        "trained on": source,
        "checkpoint": str(model_dir),
        "patients (training / validation)": f"{history.n_train} / {history.n_validation}" if history else "unknown",
        "epochs run (best)": f"{len(history.train_loss)} ({history.best_epoch})" if history else "unknown",
        "training time": f"{history.seconds:.0f} s" if history else "unknown",
        "most epochs allowed": settings.epochs if settings else "unknown",
        "latent state dimension": model.world.settings.latent_dim,
        "variables": ", ".join(model.config.names(VariableKind.CONTINUOUS, VariableKind.BINARY, VariableKind.ORDINAL)),
        "treatments": ", ".join(model.config.treatments) or "none",
        "events": ", ".join(model.config.event_kinds) or "none",
    }
    results_dir = results_dir or _REPO_ROOT / "benchmarks" / "results"
    benchmarks: list[dict] = []
    notes: list[str] = []
    path = results_dir / f"forecast-{source}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        for row in data.get("forecast", []):
            benchmarks.append(
                {
                    "benchmark": f"forecast of later visits ({data.get('settings', {}).get('n_folds', '?')}-fold CV)",
                    "method": row["method"],
                    "MAE (SD units)": round(row["mae_mean"], 3),
                    "90% interval coverage": round(row["coverage_mean"], 3),
                }
            )
        c_index = [r for r in data.get("survival", []) if r["method"] == "vpatient" and r.get("c_index_mean") is not None]
        for row in c_index:
            notes.append(
                f"death within {row['window']:g} y of landmark {row['landmark']:g} y: C-index {row['c_index_mean']:.3f}"
                f" ± {row['c_index_std']:.3f}"
            )
        notes.append(
            f"Benchmark of the default training recipe on {source} (vpatient {data.get('vpatient_version')}); "
            "this checkpoint's own training may differ."
        )
    else:
        notes.append(f"No benchmark results for {source} found beside this installation (benchmarks/results).")
    intended = (
        "Intended use: exploring how a patient's labs and event risks might evolve, and how treatment plans and "
        "diagnostic tests compare, for research and teaching. It is a model of the training cohort, not a validated "
        "clinical decision tool."
    )
    limits = (
        "Limits: it learned from "
        f"{history.n_train + history.n_validation if history else 'an unknown number of'} patients of {source}; "
        "predictions for patients unlike them (other diseases, eras, treatments, doses outside the trained range) "
        "are extrapolations. What-if effects assume the treatment effect the model learned from the data is causal "
        "(true for a randomised trial such as PBC, not in general). Intervals are the model's uncertainty given its "
        "assumptions, not guarantees."
    )
    return {
        "training": training,
        "benchmarks": pd.DataFrame(benchmarks),
        "notes": notes,
        "intended_use": intended,
        "limits": limits,
    }


@dataclass(frozen=True)
class AdjustmentView:
    """What the model card shows of the real trial's prognostic-score adjustment (``trial-adjustment.json``).

    ``sentences`` and ``table`` are empty when there is no result to show; ``hint`` then
    says, in one line, how to produce it, and ``problem`` why a file found could not be read.
    """

    title: str
    sentences: list[str]
    table: pd.DataFrame
    hint: str = ""
    problem: str = ""


def trial_adjustment_view(model_dir: Path, data: str | None = None) -> AdjustmentView:
    """The adjustment saved in ``model_dir`` in plain words and one row per outcome, or a hint to compute it.

    Computing it cross-fits fold models (minutes), far too slow for a dashboard, so only a
    precomputed result is shown: ``vpatient trial adjust --out MODEL_DIR`` writes it.
    ``data`` names the trial in the hint (default: pbc2).
    """
    from vpatient.report.adjustment import (
        ADJUSTMENT_FILE,
        SECTION_TITLE,
        adjusted_effects,
        effect_sentence,
        estimate_text,
        load_adjustment,
        percent,
        precision_sentence,
        scoring_sentence,
    )

    path = Path(model_dir) / ADJUSTMENT_FILE
    command = f"`vpatient trial adjust --data {data or 'pbc2'} --out {model_dir}` (it cross-fits 5 fold models: minutes)"
    if not path.is_file():
        hint = f"No {ADJUSTMENT_FILE} beside this model; to show the adjustment, run {command}."
        return AdjustmentView(SECTION_TITLE, [], pd.DataFrame(), hint=hint)
    try:
        result = load_adjustment(path)
    except VPatientError as exc:
        return AdjustmentView(SECTION_TITLE, [], pd.DataFrame(), hint=f"To write it anew, run {command}.", problem=str(exc))
    effects = adjusted_effects(result)
    sentences = [f"{effect_sentence(result, e)} {precision_sentence(e)}" for e in effects]
    table = pd.DataFrame(
        {
            "outcome": [e.outcome for e in effects],
            "effect": ["hazard ratio" if e.analysis == "cox" else e.effect for e in effects],
            "without the score": [estimate_text(e, "unadjusted") for e in effects],
            "with the score": [estimate_text(e, "adjusted") for e in effects],
            "SE change": [percent(-e.se_reduction, signed=True) for e in effects],
            "sample-size saving": [percent(e.sample_size_saving, signed=True) for e in effects],
        }
    )
    return AdjustmentView(SECTION_TITLE, [*sentences, scoring_sentence(result)], table)


# --------------------------------------------------------------------------- the command


def dashboard_command(
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Checkpoint directory (default: $VPATIENT_MODEL_DIR, else the demo PBC model)."),
    ] = None,
    port: Annotated[int, typer.Option("--port", help="Port to serve on (0: a free one).")] = 8501,
    address: Annotated[str, typer.Option("--address", help="Address to listen on.")] = "localhost",
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Do not open a browser window.")] = False,
) -> None:
    """Start the clinician what-if dashboard (Streamlit) on a trained model."""
    try:
        import streamlit  # noqa: F401
    except ImportError:
        raise VPatientError("the dashboard needs Streamlit: pip install 'vpatient[dashboard]'") from None
    if not APP_PATH.is_file():
        raise VPatientError(f"dashboard app not found at {APP_PATH}: run from a source checkout (pip install -e .)")
    model_dir = resolve_model_dir(model, train_demo=True).resolve()
    from vpatient.virtual_patient import VirtualPatientModel

    VirtualPatientModel.load(model_dir)  # a clear error now rather than in the browser
    if port == 0:
        import socket

        with socket.socket() as sock:
            sock.bind((address, 0))
            port = sock.getsockname()[1]
    env = os.environ | {MODEL_ENV: str(model_dir)}
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_PATH),
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--server.headless",
        "true" if no_browser else "false",
        "--server.maxUploadSize",
        str(max(1, MAX_UPLOAD_BYTES // (1024 * 1024))),
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",
    ]
    typer.echo(f"vpatient dashboard on http://{address}:{port} (model {model_dir}); Ctrl+C stops it", err=True)
    if os.name == "posix":
        # Become the server rather than its parent: a service manager or test that stops this
        # process stops Streamlit itself, and no orphaned server is left listening.
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, command, env)
    try:
        code = subprocess.call(command, env=env)
    except KeyboardInterrupt:
        code = 0
    if code:
        raise typer.Exit(code)
