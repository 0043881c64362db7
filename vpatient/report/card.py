"""The model card: intended use, training data, missing data, performance with its spread, calibration, limits.

It follows the model-card items (Mitchell et al. 2019) and the TRIPOD+AI items that
apply to a simulator. Performance comes from the benchmark results written by
``vpatient benchmark`` (``forecast-<data>.json``, ``pbc-trial.json``,
``training-<data>.json``) when they are found; the card says so when they are not.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vpatient.data.cohort import Cohort
from vpatient.report.patient import training_cohort
from vpatient.report.render import figure_png, model_version, render, write_outputs

__all__ = [
    "ModelCard",
    "RecipeNote",
    "checkpoint_adjustment",
    "data_name",
    "default_recipe",
    "find_benchmarks",
    "model_card",
    "model_identity",
    "recipe_note",
    "training_facts",
]

log = logging.getLogger(__name__)


@dataclass
class ModelCard:
    html: str
    benchmarks: dict

    def write(self, out: str | Path | None, pdf: str | Path | None = None) -> list[Path]:
        return write_outputs(self.html, out, pdf)


def find_benchmarks(model_dir: str | Path | None, explicit: str | Path | None = None) -> Path | None:
    """The benchmark results folder: ``explicit``, else benchmarks/results beside the model's repository or here."""
    candidates = [Path(explicit)] if explicit else []
    if model_dir is not None:
        root = Path(model_dir).resolve()
        candidates += [p / "benchmarks" / "results" for p in root.parents]
    candidates.append(Path.cwd() / "benchmarks" / "results")
    return next((c for c in candidates if c.is_dir()), None)


def _read(folder: Path | None, name: str) -> dict | None:
    if folder is None or not (folder / name).is_file():
        return None
    try:
        return json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("could not read %s: %s", folder / name, exc)
        return None


# --------------------------------------------------------------------------- what this checkpoint is
# One source for the dashboard's Model card tab and the HTML/PDF card: both show these rows and
# sentences, so the two can never describe different trainings.

#: Settings that change where or how fast training runs, not the model it makes: left out of a recipe comparison.
NOT_THE_RECIPE = frozenset({"threads", "seed"})


def data_name(model) -> str:
    """The training data's name as a page shows it: the dataset's, or the config's where the model was trained on a folder (no path)."""
    source = model.dataset_name
    return model.config.name if "/" in source or "\\" in source else source


def model_identity(model) -> str:
    """The model's name for a page: its data, its members and the vpatient version that trained it (no path)."""
    members = "a single model" if model.n_members == 1 else f"an ensemble of {model.n_members}"
    trained_with = f"vpatient {model.trained_with}" if model.trained_with else "an unrecorded vpatient version"
    return f"vpatient world model of {data_name(model)} ({members}), trained with {trained_with}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _histories(model) -> list:
    return list(model.member_histories or ([model.history] if model.history is not None else []))


def _stopped_by(history, settings) -> str:
    """Why one member's training ended: the time limit, the epoch limit, or early stopping."""
    if history.stopped_on_time:
        return f"the {settings.max_minutes:g}-minute time limit" if settings and settings.max_minutes else "the time limit"
    if settings is not None and len(history.train_loss) >= settings.epochs:
        return f"the epoch limit ({settings.epochs})"
    patience = f" (no validation improvement for {settings.patience} epochs)" if settings is not None else ""
    return f"early stopping{patience}"


def training_facts(model) -> dict[str, str]:
    """How this checkpoint was trained, as measured when it was trained (its training.json, members.json and model.json)."""
    histories, settings = _histories(model), model.train_settings
    facts = {
        "trained on": data_name(model),
        "trained with": f"vpatient {model.trained_with}" if model.trained_with else "unrecorded vpatient version",
        "ensemble members": "1 (a single model)" if model.n_members == 1 else str(model.n_members),
    }
    if not histories:
        return facts | {"training history": "not saved with this checkpoint"}
    first = histories[0]
    each = "" if len(histories) == 1 else " per member"
    seconds = [h.seconds for h in histories]
    facts |= {
        "patients (training / validation)": f"{first.n_train} / {first.n_validation}",
        f"epochs run{each} (best epoch)": ", ".join(f"{len(h.train_loss)} ({h.best_epoch})" for h in histories),
        "most epochs allowed": str(settings.epochs) if settings else "unrecorded",
        "stopped by": ", ".join(dict.fromkeys(_stopped_by(h, settings) for h in histories)),
        f"training time{each}": f"{min(seconds):.0f} s" if len(set(seconds)) == 1 else f"{min(seconds):.0f}-{max(seconds):.0f} s",
    }
    if first.validation_loss:
        facts["final validation loss"] = ", ".join(f"{h.validation_loss[-1]:.4g}" for h in histories if h.validation_loss)
    return facts


def checkpoint_adjustment(model_dir: str | Path | None) -> dict[str, Any] | None:
    """The real trial's prognostic-score adjustment saved beside the checkpoint (``vpatient trial adjust --out``), in words; None without one."""
    from vpatient.errors import VPatientError
    from vpatient.report.procova import ADJUSTMENT_FILE, SECTION_TITLE, adjustment_sentences, load_adjustment

    if model_dir is None or not (Path(model_dir) / ADJUSTMENT_FILE).is_file():
        return None
    section = {"title": SECTION_TITLE, "file": ADJUSTMENT_FILE, "sentences": [], "problem": ""}
    try:
        section["sentences"] = adjustment_sentences(load_adjustment(Path(model_dir) / ADJUSTMENT_FILE, ADJUSTMENT_FILE))
    except VPatientError as exc:
        section["problem"] = str(exc)
    return section


def default_recipe() -> dict[str, Any]:
    """The training `vpatient train` does when told nothing (TrainSettings' defaults, DEFAULT_MEMBERS members): the benchmarks' recipe."""
    from vpatient.benchmarks.options import DEFAULT_MEMBERS
    from vpatient.train import TrainSettings

    return TrainSettings(members=DEFAULT_MEMBERS).to_dict()


@dataclass(frozen=True)
class RecipeNote:
    """How the training behind some benchmark figures compares with this checkpoint's."""

    text: str
    differs: bool  # the figures were not measured on a model trained as this one was


def recipe_note(model, recorded: Mapping[str, Any] | None = None, figures: str = "the benchmark figures below") -> RecipeNote:
    """Say whether ``figures`` describe this checkpoint's training: ``recorded`` is the settings the benchmark saved, else the default recipe."""
    from vpatient.train import TrainSettings

    recipe = TrainSettings().to_dict() | dict(recorded) if recorded else default_recipe()
    name = "the recipe they recorded" if recorded else "the default recipe"
    theirs = f"{name}, up to {recipe['epochs']} epochs with early stopping, {_plural(recipe['members'], 'member')}"
    histories = _histories(model)
    epochs = ", ".join(str(len(h.train_loss)) for h in histories) or "an unrecorded number of"
    this = f"this checkpoint: {epochs} epochs, {_plural(model.n_members, 'member')}"
    settings = model.train_settings.to_dict() if model.train_settings is not None else None
    if settings is None:
        return RecipeNote(
            f"Not measured on this checkpoint, which saved no training settings ({this}); {figures}: {theirs}.", True
        )
    differing = [k for k in recipe if k not in NOT_THE_RECIPE and k in settings and settings[k] != recipe[k]]
    if not differing:
        return RecipeNote(f"This checkpoint was trained with {theirs}: {figures} measure that recipe (on held-out folds).", False)
    changes = ", ".join(f"{k.replace('_', ' ')} {settings[k]} (there {recipe[k]})" for k in differing)
    return RecipeNote(
        f"Not measured on this checkpoint. {this[0].upper()}{this[1:]}; {figures}: {theirs}. It differs in {changes}.", True
    )


def model_card(
    sim,
    *,
    benchmarks: str | Path | None = None,
    training: Cohort | bool | None = True,
    command: str | None = None,
) -> ModelCard:
    """Render the model card of ``sim.model`` (its checkpoint directory is ``sim.model_dir``)."""
    model = sim.model
    data = model.dataset_name
    folder = find_benchmarks(sim.model_dir, benchmarks)
    forecast = _read(folder, f"forecast-{data}.json")
    trial = _read(folder, "pbc-trial.json") if data.startswith("pbc") else None
    training_run = _read(folder, f"training-{data}.json")
    cohort = training_cohort(model) if training is True else (training or None)

    overview, arms, events, variables = [], [], [], []
    if cohort is not None:
        from vpatient.data.summary import summarize

        summary = summarize(cohort)
        overview = _records(summary.overview)
        arms, events, variables = _records(summary.arms), _records(summary.events), _records(summary.variables)

    forecast_rows, survival_rows = [], []
    if forecast:
        for r in forecast.get("forecast", []):
            forecast_rows.append(
                {k: r.get(k) for k in ("method", "mae_mean", "mae_std", "coverage_mean", "coverage_std", "n_cells")}
                | {"folds": len(r.get("mae_folds") or [])}
            )
        for r in forecast.get("survival", []):
            if r.get("c_index_mean") is None:
                continue
            survival_rows.append(
                {
                    k: r.get(k)
                    for k in (
                        "method",
                        "landmark",
                        "window",
                        "n_at_risk",
                        "deaths",
                        "folds_scored",
                        "c_index_mean",
                        "c_index_std",
                        "brier_mean",
                        "brier_std",
                    )
                }
            )
    by_variable = []
    if forecast:
        ours = next((r for r in forecast.get("forecast", []) if r.get("method") == "vpatient"), None)
        if ours:
            for name, mae in (ours.get("mae_by_variable") or {}).items():
                by_variable.append({"variable": name, "mae": mae, "coverage": (ours.get("coverage_by_variable") or {}).get(name)})
    trial_rows = []
    if trial:
        for setting in ("in_sample", "cross_validated"):
            part = trial.get(setting) or {}
            for r in part.get("survival", []):
                trial_rows.append(
                    {
                        "setting": setting.replace("_", "-"),
                        **{
                            k: r.get(k)
                            for k in ("arm", "time", "observed", "observed_lower", "observed_upper", "model_mean", "inside")
                        },
                    }
                )

    # every figure the template may show, None when its benchmark result was not found (the template is strict)
    figures: dict[str, str | None] = {"calibration": None, "trial": None, "training": None}
    predictions = folder / f"forecast-{data}-predictions.parquet" if folder is not None else None
    if predictions is not None and predictions.is_file():
        figures["calibration"] = _calibration_figure(pd.read_parquet(predictions), forecast)
    if trial_rows:
        figures["trial"] = _trial_calibration_figure(trial_rows)
    if (model_dir := sim.model_dir) is not None and (Path(model_dir) / "training_curve.png").is_file():
        import base64

        figures["training"] = "data:image/png;base64," + base64.b64encode(
            (Path(model_dir) / "training_curve.png").read_bytes()
        ).decode("ascii")

    config = model.config
    html = render(
        "model.html.j2",
        title=f"Model card: vpatient world model of {config.name}",
        config=config,
        data=data,
        layout=model.layout,
        world_settings=_settings(getattr(model.network, "settings", None)),
        train_settings=_settings(model.train_settings),
        model_identity=model_identity(model),
        training=training_facts(model),
        recipe=recipe_note(model),
        trial_recipe=recipe_note(model, (trial or {}).get("train_settings"), "the trial figures below") if trial else None,
        training_run=training_run,
        adjustment=checkpoint_adjustment(sim.model_dir),
        overview=overview,
        arms=arms,
        events=events,
        variables=variables,
        forecast=forecast,
        forecast_rows=forecast_rows,
        survival_rows=survival_rows,
        by_variable=by_variable,
        trial=trial,
        trial_rows=trial_rows,
        benchmarks_dir=str(folder) if folder else None,
        figures=figures,
        uncertainty_note=model.uncertainty_note(),
        version=model_version(sim.model_dir),
        command=command,
        card_link=None,
    )
    return ModelCard(html, {"forecast": forecast, "trial": trial, "training": training_run})


def _records(frame: pd.DataFrame) -> list[dict]:
    frame = frame.reset_index() if not isinstance(frame.index, pd.RangeIndex) else frame
    return [{str(k): v for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _settings(obj) -> dict:
    if obj is None:
        return {}
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    return dict(vars(obj))


def _calibration_figure(predictions: pd.DataFrame, forecast: dict | None) -> str:
    """Held-out forecasts (cross-validation): observed vs predicted mean by decile, and 90% interval coverage."""
    import matplotlib.pyplot as plt

    ours = predictions[predictions["method"] == "vpatient"] if "method" in predictions else predictions
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    lim = [np.inf, -np.inf]
    for k, (name, part) in enumerate(ours.groupby("variable", sort=True)):
        part = part.dropna(subset=["mean", "observed"])
        if len(part) < 20:
            continue
        deciles = pd.qcut(part["mean"], 10, labels=False, duplicates="drop")
        g = part.groupby(deciles)[["mean", "observed"]].mean()
        a.plot(g["mean"], g["observed"], "o-", ms=3, color=f"C{k}", label=name)
        lim = [min(lim[0], g.min().min()), max(lim[1], g.max().max())]
    if np.isfinite(lim).all():
        a.plot(lim, lim, color="grey", ls="--", lw=1)
    a.set_xlabel("predicted mean (standardised, decile mean)")
    a.set_ylabel("observed (decile mean)")
    a.set_title("forecast calibration by decile (held-out folds)", fontsize=10)
    a.legend(fontsize=7)
    a.grid(alpha=0.3)
    inside = ours.dropna(subset=["observed"])
    cov = ((inside["observed"] >= inside["q05"]) & (inside["observed"] <= inside["q95"])).groupby(inside["variable"]).mean()
    b.barh(cov.index, cov.to_numpy(), color="C0")
    b.axvline(0.9, color="crimson", ls="--", lw=1, label="nominal 90%")
    b.set_xlim(0, 1)
    b.set_title("coverage of the 90% predictive interval", fontsize=10)
    b.legend(fontsize=7, loc="lower left")
    b.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return figure_png(fig)


def _trial_calibration_figure(rows: list[dict]) -> str:
    """Model mean survival against the observed Kaplan-Meier survival per arm and time (with its 95% CI)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for k, setting in enumerate(sorted({r["setting"] for r in rows})):
        part = [r for r in rows if r["setting"] == setting and r["observed"] is not None and r["model_mean"] is not None]
        x = np.array([r["model_mean"] for r in part])
        y = np.array([r["observed"] for r in part])
        err = np.array([[r["observed"] - r["observed_lower"], r["observed_upper"] - r["observed"]] for r in part]).T
        ax.errorbar(x + 0.004 * k, y, yerr=err, fmt="o", ms=4, color=f"C{k}", label=setting, capsize=2)
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
    ax.set_xlim(0.3, 1.0)
    ax.set_ylim(0.3, 1.0)
    ax.set_xlabel("model mean survival")
    ax.set_ylabel("observed Kaplan-Meier (95% CI)")
    ax.set_title("survival calibration per arm and time", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return figure_png(fig)
