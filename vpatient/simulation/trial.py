"""In-silico trials: the same patients realised under every arm (common random numbers).

Each patient is realised once per arm with the same initial state, event draws,
loss-to-follow-up time and noise, so the arms differ only by treatment. The analysis
is the one a trial statistician would run on the simulated data:

- Kaplan-Meier curves of the primary event per arm (other event kinds censor it, as
  transplant censors death in the PBC trial), with 95% CIs;
- Cox hazard ratio of each arm against the reference arm (the first), with its 95% CI
  (lifelines; the arms replay the same patients, so each patient, with all its draws in
  both arms, is one cluster of the robust variance: the analysis of a paired, crossover
  trial);
- the difference in restricted mean survival time (RMST) up to the horizon, paired by
  patient (the model's event-free survival curves integrated), mean with a 95% CI;
- the mean model survival curve and mean lab trajectories per arm (typical values,
  as if event-free), with 95% CIs of the mean across patients.

One arm is a virtual cohort under its plan: the curves and the median event-free
time only; with nothing to compare, the hazard ratio and RMST tables are empty.

What the HR and RMST intervals include:

- the sampling error of the virtual trial. When real patients are replayed with
  several posterior draws each, the draws of one patient are one cluster: the Cox
  variance is the robust (sandwich) one by patient and the RMST difference is averaged
  within the patient first, so the interval speaks of a trial of that many patients,
  not of that many draws;
- the model's own uncertainty, when the model is an ensemble: each member realises the
  patients it is given (a sub-trial: every real patient when records are replayed with at
  least K draws each, a disjoint share of a virtual population), and the members'
  estimates pool by Rubin's rules (:mod:`vpatient.simulation.pooling`, which corrects for
  disjoint shares), between-member variance included. A single
  model has no such term: its intervals shrink with the virtual sample and know nothing
  of what other training data would have taught.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vpatient.errors import VPatientError
from vpatient.plans import exposures_under_plan
from vpatient.schemas import TimeUnit, TreatmentPlan
from vpatient.simulation.effects import restricted_mean
from vpatient.simulation.engine import Chunk, ModelRef, chunk_rng, resolve_model
from vpatient.simulation.pooling import PooledEstimate, pool
from vpatient.simulation.population import Population
from vpatient.simulation.sampling import VirtualPatients, draw_virtual_patients, realise
from vpatient.tables import markdown_table
from vpatient.virtual_patient import VirtualPatientModel

__all__ = ["TrialResult", "arm_outcomes", "hazard_ratio", "trial_chunk"]

PATIENTS_DIR, AGGREGATES_DIR = "patients", "aggregates"
_Z95 = 1.959963984540054


def arm_outcomes(
    model: VirtualPatientModel, patients: VirtualPatients, arms: Mapping[str, TreatmentPlan], years: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Realise ``patients`` under each arm's plan from t=0.

    Returns per-patient outcomes (one row per patient and arm) and per-arm sums over
    patients of each survival curve and lab trajectory on the monthly grid (sums, so
    chunks add up).
    """
    per_patient, sums = [], []
    for name, plan in arms.items():
        exposures = [exposures_under_plan(recorded, plan, 0.0) for recorded in patients.exposures]
        out = realise(model, patients, years, exposures)
        frame = out.events_frame(model, patients).rename(columns={"arm": "baseline_arm"})
        frame.insert(1, "trial_arm", name)
        for k, kind in enumerate(model.layout.events):
            frame[f"rmst_{kind}"] = restricted_mean(out.grid, out.survival[:, :, k], 0.0, years)
        per_patient.append(frame)
        curves = {f"survival:{kind}": out.survival[:, :, k] for k, kind in enumerate(model.layout.events)}
        curves |= {name_: out.expected[:, :, j] for j, name_ in enumerate(model.layout.continuous)}
        for quantity, values in curves.items():
            sums.append(
                pd.DataFrame(
                    {
                        "trial_arm": name,
                        "quantity": quantity,
                        "time": out.grid,
                        "sum": values.sum(axis=0),
                        "sum_sq": (values**2).sum(axis=0),
                        "n": len(patients),
                    }
                )
            )
    return pd.concat(per_patient, ignore_index=True), pd.concat(sums, ignore_index=True)


def trial_chunk(
    chunk: Chunk, *, model: ModelRef, population: str, arms: str, years: float, out_dir: str | None
) -> tuple[pd.DataFrame, pd.DataFrame] | int:
    """One chunk of a virtual-population trial; written under ``out_dir`` when given, else returned."""
    vpm = resolve_model(model)
    pop = Population.from_json(population)
    patients = draw_virtual_patients(pop, vpm, chunk.size, chunk_rng(chunk), chunk.first_id, years)
    plans = {name: TreatmentPlan.model_validate(plan) for name, plan in json.loads(arms).items()}
    per_patient, sums = arm_outcomes(vpm, patients, plans, years)
    if out_dir is None:
        return per_patient, sums
    for folder, frame in ((PATIENTS_DIR, per_patient), (AGGREGATES_DIR, sums)):
        path = Path(out_dir) / folder / chunk.name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return len(per_patient)


@dataclass
class TrialResult:
    """The analysed in-silico trial (module docstring); every table is a DataFrame."""

    arms: list[str]
    event: str
    years: float
    n_patients: int
    seed: int
    patients: pd.DataFrame  # one row per patient and arm
    kaplan_meier: pd.DataFrame  # arm, time, survival, lower, upper
    model_survival: pd.DataFrame  # arm, time, survival, lower, upper (mean of the model's curves)
    hazard_ratios: pd.DataFrame  # arm, reference, hazard_ratio, lower, upper, p
    rmst: pd.DataFrame  # arm, reference, horizon, arm_rmst, reference_rmst, difference, lower, upper
    trajectories: pd.DataFrame  # arm, variable, time, mean, lower, upper
    settings: dict = field(default_factory=dict)

    @property
    def reference(self) -> str:
        return self.arms[0]

    @classmethod
    def analyse(
        cls,
        per_patient: pd.DataFrame,
        sums: pd.DataFrame,
        arms: list[str],
        event: str,
        years: float,
        seed: int,
        settings: dict | None = None,
    ) -> TrialResult:
        if f"rmst_{event}" not in per_patient:
            known = [c.removeprefix("rmst_") for c in per_patient if c.startswith("rmst_")]
            raise VPatientError(f"unknown event {event!r}; the model's events are {', '.join(known)}")
        data = per_patient.assign(primary=(per_patient["observed"] & (per_patient["event"] == event)).astype(int))
        km_rows, hr_rows, rmst_rows = [], [], []
        grid = np.sort(sums["time"].unique())
        for arm in arms:
            km_rows.append(_kaplan_meier(data[data["trial_arm"] == arm], arm, grid))
        if "member" not in data:  # tables written before ensembles: one member, every patient its own cluster
            data = data.assign(member=0, source=data["subject_id"])
        ref = data[data["trial_arm"] == arms[0]].set_index("subject_id")
        for arm in arms[1:]:
            other = data[data["trial_arm"] == arm].set_index("subject_id")
            hr_rows.append({"arm": arm, "reference": arms[0], **hazard_ratio(ref, other)})
            paired = other[["member", "source"]].assign(difference=other[f"rmst_{event}"] - ref.loc[other.index, f"rmst_{event}"])
            rmst = _pooled_mean_difference(paired)
            low, high = rmst.interval() if rmst is not None else (np.nan, np.nan)
            rmst_rows.append(
                {
                    "arm": arm,
                    "reference": arms[0],
                    "horizon": years,
                    "arm_rmst": float(other[f"rmst_{event}"].mean()),
                    "reference_rmst": float(ref[f"rmst_{event}"].mean()),
                    "difference": rmst.estimate if rmst is not None else np.nan,
                    "lower": float(low),
                    "upper": float(high),
                    **_spread(rmst),
                }
            )
        totals = sums.groupby(["trial_arm", "quantity", "time"], sort=False)[["sum", "sum_sq", "n"]].sum().reset_index()
        mean = totals["sum"] / totals["n"]
        sd = np.sqrt(np.maximum(totals["sum_sq"] / totals["n"] - mean**2, 0.0) * totals["n"] / np.maximum(totals["n"] - 1, 1))
        half = _Z95 * sd / np.sqrt(totals["n"])
        curves = pd.DataFrame(
            {
                "arm": totals["trial_arm"],
                "quantity": totals["quantity"],
                "time": totals["time"],
                "mean": mean,
                "lower": mean - half,
                "upper": mean + half,
            }
        )
        is_surv = curves["quantity"] == f"survival:{event}"
        model_survival = curves[is_surv].drop(columns="quantity").rename(columns={"mean": "survival"}).reset_index(drop=True)
        labs = (
            curves[~curves["quantity"].str.startswith("survival:")]
            .rename(columns={"quantity": "variable"})
            .reset_index(drop=True)
        )
        return cls(
            arms=list(arms),
            event=event,
            years=years,
            n_patients=int(data["subject_id"].nunique()),
            seed=seed,
            patients=per_patient,
            kaplan_meier=pd.concat(km_rows, ignore_index=True),
            model_survival=model_survival,
            hazard_ratios=pd.DataFrame(hr_rows, columns=["arm", "reference", "hazard_ratio", "lower", "upper", "p", *_SPREAD]),
            rmst=pd.DataFrame(rmst_rows, columns=list(_RMST_COLUMNS)),
            trajectories=labs,
            settings=settings or {},
        )

    def survival_at(self, times: list[float], source: str = "kaplan_meier") -> pd.DataFrame:
        """Survival per arm at chosen times, from the Kaplan-Meier curves or the model's mean curves."""
        table = self.kaplan_meier if source == "kaplan_meier" else self.model_survival
        rows = []
        for arm in self.arms:
            part = table[table["arm"] == arm]
            for t in times:
                i = int(np.argmin(np.abs(part["time"].to_numpy() - t)))
                row = part.iloc[i]
                rows.append({"arm": arm, "time": t, "survival": row["survival"], "lower": row["lower"], "upper": row["upper"]})
        return pd.DataFrame(rows)

    def median_time(self, arm: str) -> tuple[float, float, float]:
        """An arm's median time free of the event and its 95% interval, from its Kaplan-Meier curve and band.

        The first time on the curve's grid where the curve (the band's lower, upper bound) falls to one half or
        below; NaN where it does not within the follow-up ("not reached"). The interval inverts the pointwise band
        (Brookmeyer-Crowley in spirit), so it is as coarse as the grid (monthly).
        """
        part = self.kaplan_meier[self.kaplan_meier["arm"] == arm]
        if part.empty:
            raise VPatientError(f"unknown arm {arm!r}; the trial's arms are {', '.join(self.arms)}")
        time = part["time"].to_numpy()

        def crossing(curve: pd.Series) -> float:
            below = np.flatnonzero(curve.to_numpy() <= 0.5)
            return float(time[below[0]]) if len(below) else np.nan

        return crossing(part["survival"]), crossing(part["lower"]), crossing(part["upper"])

    @property
    def time_unit(self) -> TimeUnit:
        """The unit of ``years`` and of every time in the tables: the model's (years for results saved before it was recorded)."""
        return TimeUnit(self.settings.get("time_unit", TimeUnit.YEARS))

    def to_markdown(self) -> str:
        unit = self.time_unit
        in_unit = [unit.from_years(t) for t in (1.0, 2.0, 5.0, 10.0)]
        marks = sorted({t for t in in_unit if t <= self.years + 1e-9} | {self.years})
        # "S(5y)" in years, "S(1826.25 days)" otherwise
        label = (lambda t: f"S({t:g}y)") if unit == TimeUnit.YEARS else (lambda t: f"S({t:g} {unit.value})")
        surv = self.survival_at(marks).pivot(index="arm", columns="time", values="survival").rename(columns=label)
        head = (
            f"# In-silico trial: {', '.join(self.arms)} ({self.n_patients} patients per arm, {self.years:g} {unit.value}, "
            f"event {self.event})\n\n"
            f"Kaplan-Meier survival free of {self.event}:\n\n{markdown_table(surv.reindex(self.arms))}\n\n"
        )
        if len(self.arms) < 2:
            return (
                head + "One arm: a virtual cohort under its plan, with no arm to compare (no hazard ratio, no RMST difference).\n"
            )
        hr = self.hazard_ratios.set_index("arm")
        rmst = self.rmst.set_index("arm")
        return (
            head + f"Hazard ratios against {self.reference} (Cox, 95% CI):\n\n{markdown_table(hr)}\n\n"
            f"Restricted mean {self.event}-free {unit.value} to {self.years:g} {unit.value} (paired, 95% CI):\n\n{markdown_table(rmst)}\n"
        )

    def save(self, out_dir: str | Path) -> list[Path]:
        """Tables as CSV, a summary as JSON and markdown.

        The figure of the curves is :func:`vpatient.plots.plot_trial` (``vpatient simulate trial`` writes it as ``trial.png``).
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in ("kaplan_meier", "model_survival", "hazard_ratios", "rmst", "trajectories"):
            path = out / f"{name}.csv"
            getattr(self, name).to_csv(path, index=False)
            written.append(path)
        summary = {
            "arms": self.arms,
            "event": self.event,
            "years": self.years,
            "n_patients": self.n_patients,
            "seed": self.seed,
            "settings": self.settings,
            "hazard_ratios": self.hazard_ratios.to_dict(orient="records"),
            "rmst": self.rmst.to_dict(orient="records"),
        }
        (out / "trial.json").write_text(json.dumps(summary, indent=2) + "\n")
        (out / "trial.md").write_text(self.to_markdown())
        return [*written, out / "trial.json", out / "trial.md"]


def _kaplan_meier(data: pd.DataFrame, arm: str, grid: np.ndarray) -> pd.DataFrame:
    from lifelines import KaplanMeierFitter

    km = KaplanMeierFitter().fit(data["time"], data["primary"])
    ci = km.confidence_interval_survival_function_
    at = km.survival_function_at_times(grid).to_numpy()
    lower = ci.iloc[:, 0].reindex(ci.index.union(grid)).ffill().loc[grid].to_numpy()
    upper = ci.iloc[:, 1].reindex(ci.index.union(grid)).ffill().loc[grid].to_numpy()
    return pd.DataFrame({"arm": arm, "time": grid, "survival": at, "lower": lower, "upper": upper})


#: Columns that say what an effect's interval is made of (see the module docstring).
_SPREAD = ("se", "sampling_se", "between_member_sd", "members", "df")
_RMST_COLUMNS = ("arm", "reference", "horizon", "arm_rmst", "reference_rmst", "difference", "lower", "upper", *_SPREAD)


def _spread(estimate: PooledEstimate | None) -> dict[str, float]:
    if estimate is None:
        return dict.fromkeys(_SPREAD, np.nan)
    return {
        "se": estimate.se,
        "sampling_se": estimate.within_se,
        "between_member_sd": estimate.between_sd,
        "members": estimate.members,
        "df": estimate.df,
    }


def hazard_ratio(reference: pd.DataFrame, other: pd.DataFrame) -> dict[str, float]:
    """Cox HR of ``other`` against ``reference`` (columns time, primary; member and source when simulated), 95% CI.

    One fit per ensemble member, robust by real patient where a patient has several
    draws, pooled by Rubin's rules (module docstring); NaN where there is no event.
    """
    if "member" not in reference:
        reference = reference.assign(member=0, source=np.arange(len(reference)))
        other = other.assign(member=0, source=np.arange(len(reference), len(reference) + len(other)))
    estimate = _pooled_log_hazard_ratio(reference, other)
    if estimate is None:
        return {"hazard_ratio": np.nan, "lower": np.nan, "upper": np.nan, "p": np.nan, **_spread(None)}
    low, high = estimate.interval()
    return {
        "hazard_ratio": float(np.exp(estimate.estimate)),
        "lower": float(np.exp(low)),
        "upper": float(np.exp(high)),
        "p": estimate.p_value(),
        **_spread(estimate),
    }


def _pooled_log_hazard_ratio(reference: pd.DataFrame, other: pd.DataFrame) -> PooledEstimate | None:
    """log HR of ``other`` against ``reference``: one Cox fit per member, pooled by Rubin's rules."""
    estimates, variances = [], []
    for member in sorted(set(reference["member"]) | set(other["member"])):
        fit = _cox(reference[reference["member"] == member], other[other["member"] == member])
        if fit is None:
            return None
        estimates.append(fit[0])
        variances.append(fit[1] ** 2)
    return pool(estimates, variances, disjoint=_disjoint(reference))


def _disjoint(frame: pd.DataFrame) -> bool:
    """Whether the members realised different patients (no real patient seen by two members)."""
    return frame["member"].nunique() > 1 and bool((frame.groupby("source")["member"].nunique() == 1).all())


def _cox(reference: pd.DataFrame, other: pd.DataFrame) -> tuple[float, float] | None:
    """log HR and its standard error (robust by real patient when a patient has several draws); None without events."""
    from lifelines import CoxPHFitter

    data = pd.concat(
        [
            pd.DataFrame(
                {"time": reference["time"], "primary": reference["primary"], "treated": 0, "source": reference["source"]}
            ),
            pd.DataFrame({"time": other["time"], "primary": other["primary"], "treated": 1, "source": other["source"]}),
        ],
        ignore_index=True,
    )
    if data["primary"].sum() == 0 or data["treated"].nunique() < 2:
        return None
    clustered = data["source"].duplicated().any()
    fit = CoxPHFitter().fit(
        data if clustered else data.drop(columns="source"),
        duration_col="time",
        event_col="primary",
        cluster_col="source" if clustered else None,
    )
    row = fit.summary.loc["treated"]
    return float(row["coef"]), float(row["se(coef)"])


def _pooled_mean_difference(paired: pd.DataFrame) -> PooledEstimate | None:
    """Mean paired ``difference`` per member (averaged within each real patient first), pooled by Rubin's rules."""
    estimates, variances = [], []
    for _, part in paired.groupby("member", sort=True):
        per_patient = part.groupby("source")["difference"].mean()
        if len(per_patient) < 2:
            return None
        estimates.append(float(per_patient.mean()))
        variances.append(float(per_patient.var(ddof=1)) / len(per_patient))
    return pool(estimates, variances, disjoint=_disjoint(paired)) if estimates else None
