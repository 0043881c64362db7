"""The model card: intended use, training data, missing data, performance with its spread, calibration, limits.

It follows the model-card items (Mitchell et al. 2019) and the TRIPOD+AI items that
apply to a simulator. Performance comes from the benchmark results written by
``vpatient benchmark`` (``forecast-<data>.json``, ``pbc-trial.json``,
``training-<data>.json``) when they are found; the card says so when they are not.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from vpatient.data.cohort import Cohort
from vpatient.report.patient import training_cohort
from vpatient.report.render import figure_png, model_version, render, write_outputs

__all__ = ["ModelCard", "find_benchmarks", "model_card"]

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

    history = model.history.to_dict() if model.history is not None else {}
    history.pop("validation_ids", None)
    for key in ("train_loss", "validation_loss"):
        values = history.pop(key, None)
        if values:
            history[f"final {key.replace('_', ' ')}"] = values[-1]
            history["epochs run"] = len(values)
    config = model.config
    html = render(
        "model.html.j2",
        title=f"Model card: vpatient world model of {config.name}",
        config=config,
        data=data,
        layout=model.layout,
        world_settings=_settings(getattr(model.network, "settings", None)),
        train_settings=_settings(model.train_settings),
        history=history,
        training_run=training_run,
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
