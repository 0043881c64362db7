"""Peer methods of the forecasting benchmark, each a :class:`~vpatient.evaluate.protocol.Forecaster`.

- :class:`MeanOnly`: the training mean of each variable; the floor every method must beat.
- :class:`LOCF`: last observation carried forward, with intervals from the training
  fold's empirical changes over similar time gaps.
- :class:`LinearMixedModel`: per variable, random intercept and slope in time (REML,
  numpy/scipy), BLUP forecasts with exact Gaussian prediction intervals.
- :class:`LandmarkCox`: one Cox model per survival landmark on the last values at s.
- :class:`LastValueRisk`: the last value of one lab as the risk score (PBC: log bilirubin).

All work on the modelling scale (after each variable's transform); the benchmark
standardises their outputs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
from scipy import optimize, stats

from vpatient import transforms
from vpatient.data.timeline import observations_frame
from vpatient.errors import ConfigError
from vpatient.evaluate.protocol import (
    DEFAULT_MAX_MISSING,
    MIN_VISITS,
    ProtocolError,
    forecast_variables,
    landmark_split,
    last_observations,
    survival_setup,
    treated_by,
)
from vpatient.schemas import DatasetConfig, PatientRecord, VariableKind

__all__ = ["LOCF", "LandmarkCox", "LastValueRisk", "LinearMixedModel", "MeanOnly", "MixedModelFit", "fit_mixed_model"]

log = logging.getLogger(__name__)

#: Interval level of every forecast: 5% and 95% quantiles.
_Q_LOW, _Q_HIGH = 0.05, 0.95
_Z90 = float(stats.norm.ppf(_Q_HIGH))


def _check_fitted(method: object, attribute: str) -> None:
    if not hasattr(method, attribute):
        raise RuntimeError(f"{type(method).__name__} is not fitted: call fit() first")


def _continuous(config: DatasetConfig) -> list[str]:
    return config.names(VariableKind.CONTINUOUS)


def _with_prediction(queries: pd.DataFrame, mean: np.ndarray, q05: np.ndarray, q95: np.ndarray) -> pd.DataFrame:
    out = queries.reset_index(drop=True).copy()
    out["mean"], out["q05"], out["q95"] = mean, q05, q95
    return out


# --------------------------------------------------------------------------- mean only


class MeanOnly:
    """Predicts each variable's training-fold mean; the interval is the training 5% and 95% quantiles."""

    name = "mean-only"
    forecasts: ClassVar[bool] = True
    predicts_risk: ClassVar[bool] = False
    risk_is_probability: ClassVar[bool] = False

    def fit(self, train: list[PatientRecord], config: DatasetConfig, seed: int) -> MeanOnly:
        frame = observations_frame(train, config, transformed=True)
        frame = frame[frame["variable"].isin(_continuous(config))]
        grouped = frame.groupby("variable")["value"]
        self.mean_ = grouped.mean().to_dict()
        self.q05_ = grouped.quantile(_Q_LOW).to_dict()
        self.q95_ = grouped.quantile(_Q_HIGH).to_dict()
        return self

    def forecast(self, histories: list[PatientRecord], queries: pd.DataFrame) -> pd.DataFrame:
        _check_fitted(self, "mean_")
        v = queries["variable"]
        return _with_prediction(
            queries, v.map(self.mean_).to_numpy(float), v.map(self.q05_).to_numpy(float), v.map(self.q95_).to_numpy(float)
        )

    def risk(self, histories: list[PatientRecord], landmark: float, windows: list[float], event: str) -> pd.DataFrame | None:
        return None


# --------------------------------------------------------------------------- LOCF


class LOCF:
    """Last observation carried forward.

    Interval: the empirical 5% and 95% quantiles of the change (later value minus last
    observed value) among the ``neighbours`` training cells whose gap since the last
    observation is closest to the query's gap. The training cells come from applying
    the protocol's own landmark split to every training subject, so the changes are
    those the forecast faces. A variable never observed in a history falls back to the
    training mean and quantiles (as :class:`MeanOnly`).
    """

    name = "locf"
    forecasts: ClassVar[bool] = True
    predicts_risk: ClassVar[bool] = False
    risk_is_probability: ClassVar[bool] = False

    def __init__(self, neighbours: int = 100) -> None:
        self.neighbours = neighbours

    def fit(self, train: list[PatientRecord], config: DatasetConfig, seed: int) -> LOCF:
        self.config_ = config
        self.fallback_ = MeanOnly().fit(train, config, seed)
        variables = _continuous(config)
        changes: dict[str, list[tuple[float, float]]] = {v: [] for v in variables}
        for record in train:
            if len(record.visit_times()) < MIN_VISITS:
                continue
            history, targets = landmark_split(record)
            last = last_observations(history, config, variables)
            for o in targets:
                if o.variable in last:
                    t_last, y_last = last[o.variable]
                    y = float(_forward(config, o.variable, o.value))
                    changes[o.variable].append((o.time - t_last, y - y_last))
        # (gap, change) pairs sorted by gap, per variable
        self.changes_ = {v: np.array(sorted(pairs), dtype=float).reshape(-1, 2) for v, pairs in changes.items()}
        return self

    def forecast(self, histories: list[PatientRecord], queries: pd.DataFrame) -> pd.DataFrame:
        _check_fitted(self, "changes_")
        base = self.fallback_.forecast(histories, queries)
        mean, q05, q95 = (base[c].to_numpy(float).copy() for c in ("mean", "q05", "q95"))
        variables = sorted(queries["variable"].unique())
        last = {h.subject_id: last_observations(h, self.config_, variables) for h in histories}
        sid, var, time = queries["subject_id"].to_numpy(), queries["variable"].to_numpy(), queries["time"].to_numpy(float)
        for v in variables:
            rows = np.flatnonzero(var == v)
            found = [(i, last[sid[i]][v]) for i in rows if v in last.get(sid[i], {})]
            if not found:
                continue
            idx = np.array([i for i, _ in found])
            t_last = np.array([tv[0] for _, tv in found])
            y_last = np.array([tv[1] for _, tv in found])
            mean[idx] = y_last
            lo, hi = self._change_quantiles(v, time[idx] - t_last)
            q05[idx], q95[idx] = y_last + lo, y_last + hi
        return _with_prediction(queries, mean, q05, q95)

    def _change_quantiles(self, variable: str, gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pairs = self.changes_.get(variable)
        if pairs is None or len(pairs) == 0:
            raise ProtocolError(f"LOCF: no training changes of {variable!r} to build intervals from")
        k = min(self.neighbours, len(pairs))
        distance = np.abs(gaps[:, None] - pairs[None, :, 0])  # (queries, training cells)
        nearest = np.argpartition(distance, k - 1, axis=1)[:, :k]
        deltas = pairs[nearest, 1]  # (queries, k)
        return np.quantile(deltas, _Q_LOW, axis=1), np.quantile(deltas, _Q_HIGH, axis=1)

    def risk(self, histories: list[PatientRecord], landmark: float, windows: list[float], event: str) -> pd.DataFrame | None:
        return None


def _forward(config: DatasetConfig, variable: str, value: float) -> float:
    return float(transforms.forward(value, config.variable(variable).transform))


# --------------------------------------------------------------------------- linear mixed model


@dataclass(frozen=True)
class MixedModelFit:
    """A fitted linear mixed model y = X beta + Z b + e, Z = [1, t], b ~ N(0, D), e ~ N(0, sigma2).

    ``relative_factor`` is the lower-triangular Lambda with D = sigma2 * Lambda Lambda^T
    (the parameterisation that is optimised).
    """

    beta: np.ndarray  # (p,)
    beta_cov: np.ndarray  # (p, p) covariance of the GLS estimate
    sigma2: float
    relative_factor: np.ndarray  # (2, 2) Lambda
    n_obs: int
    n_subjects: int
    deviance: float
    converged: bool

    @property
    def random_cov(self) -> np.ndarray:
        """D, the (2, 2) covariance of the random intercept and slope."""
        return self.sigma2 * self.relative_factor @ self.relative_factor.T

    def predict(
        self, x_hist: np.ndarray, z_hist: np.ndarray, y_hist: np.ndarray, x_new: np.ndarray, z_new: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """BLUP mean and predictive standard deviation of new rows of one subject, given its history.

        The variance is exact for a subject outside the training data (its b, e are
        independent of beta-hat): Var(b | y_hist) projected on z, plus sigma2, plus the
        uncertainty of beta-hat carried through both x beta and the BLUP (c = x - X_h' K' z).
        """
        lam = self.relative_factor
        a = np.eye(2) + lam.T @ z_hist.T @ z_hist @ lam  # (2, 2)
        k = lam @ np.linalg.solve(a, lam.T @ z_hist.T)  # (2, n_hist): b_hat = K r
        b_hat = k @ (y_hist - x_hist @ self.beta)  # (2,)
        mean = x_new @ self.beta + z_new @ b_hat
        b_cov = self.sigma2 * lam @ np.linalg.solve(a, lam.T)  # Var(b | y_hist)
        c = x_new - z_new @ k @ x_hist  # (q, p)
        var = np.einsum("qp,pr,qr->q", c, self.beta_cov, c) + np.einsum("qi,ij,qj->q", z_new, b_cov, z_new) + self.sigma2
        return mean, np.sqrt(var)


def fit_mixed_model(x: np.ndarray, z: np.ndarray, y: np.ndarray, groups: np.ndarray, reml: bool = True) -> MixedModelFit:
    """Fit y = X beta + Z b_g + e by (RE)ML, random effects b_g ~ N(0, D) with a full 2x2 D.

    ``x`` (n, p), ``z`` (n, 2), ``y`` (n,), ``groups`` (n,) the subject of each row.
    beta and sigma2 are profiled out (GLS and closed form), leaving the three entries of
    the relative Cholesky factor Lambda (D = sigma2 Lambda Lambda^T) to L-BFGS-B, as in
    lme4. Every subject enters only through Z'Z, Z'X, Z'y, so one evaluation is a few
    batched 2x2 operations whatever the number of subjects.
    """
    n, p = x.shape
    _, index = np.unique(groups, return_inverse=True)
    m = int(index.max()) + 1
    ztz = np.zeros((m, 2, 2))
    ztx = np.zeros((m, 2, p))
    zty = np.zeros((m, 2))
    np.add.at(ztz, index, z[:, :, None] * z[:, None, :])
    np.add.at(ztx, index, z[:, :, None] * x[:, None, :])
    np.add.at(zty, index, z * y[:, None])
    xtx, xty, yty = x.T @ x, x.T @ y, float(y @ y)
    dof = n - p if reml else n

    def profiled(theta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, float]:
        lam = np.array([[theta[0], 0.0], [theta[1], theta[2]]])
        a = np.eye(2) + np.einsum("ji,mjk,kl->mil", lam, ztz, lam)  # (m, 2, 2)
        u = np.einsum("ji,mjp->mip", lam, ztx)  # (m, 2, p)
        w = np.einsum("ji,mj->mi", lam, zty)  # (m, 2)
        a_inv = np.linalg.inv(a)
        a_inv_u = a_inv @ u
        a_inv_w = np.einsum("mij,mj->mi", a_inv, w)
        xvx = xtx - np.einsum("mip,miq->pq", u, a_inv_u)  # X' V~^-1 X, V = sigma2 V~
        xvy = xty - np.einsum("mip,mi->p", u, a_inv_w)
        yvy = yty - float(np.einsum("mi,mi->", w, a_inv_w))
        beta = np.linalg.solve(xvx, xvy)
        quad = max(yvy - float(beta @ xvy), 1e-300)
        sigma2 = quad / dof
        deviance = float(np.linalg.slogdet(a)[1].sum()) + dof * (1.0 + math.log(2 * math.pi * sigma2))
        if reml:
            deviance += float(np.linalg.slogdet(xvx)[1])
        return deviance, beta, xvx, sigma2

    def objective(theta: np.ndarray) -> float:
        try:
            value = profiled(theta)[0]
        except np.linalg.LinAlgError:
            return 1e300
        return value if math.isfinite(value) else 1e300

    result = optimize.minimize(objective, x0=np.array([1.0, 0.0, 0.3]), method="L-BFGS-B")
    if not result.success:
        log.debug("mixed model: L-BFGS-B did not report convergence (%s); polishing with Nelder-Mead", result.message)
        result = optimize.minimize(
            objective, x0=result.x, method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-8, "maxiter": 2000}
        )
    deviance, beta, xvx, sigma2 = profiled(result.x)
    lam = np.array([[result.x[0], 0.0], [result.x[1], result.x[2]]])
    return MixedModelFit(
        beta=beta,
        beta_cov=sigma2 * np.linalg.inv(xvx),
        sigma2=sigma2,
        relative_factor=lam,
        n_obs=n,
        n_subjects=m,
        deviance=deviance,
        converged=bool(result.success),
    )


class LinearMixedModel:
    """Per variable a linear mixed model with random intercept and slope in time (REML).

    Fixed effects: intercept, time, age (at baseline), sex and treatment (1 from the
    start of any treatment exposure); a covariate constant in the training fold is left
    out. Forecasts are BLUPs from the subject's history with 90% Gaussian prediction
    intervals (:meth:`MixedModelFit.predict`). Missing age or sex: the training mean.
    """

    name = "lmm"
    forecasts: ClassVar[bool] = True
    predicts_risk: ClassVar[bool] = False
    risk_is_probability: ClassVar[bool] = False
    COVARIATES: ClassVar[tuple[str, ...]] = ("intercept", "time", "age", "sex", "treatment")

    def __init__(self, reml: bool = True) -> None:
        self.reml = reml

    def fit(self, train: list[PatientRecord], config: DatasetConfig, seed: int) -> LinearMixedModel:
        self.config_ = config
        self.static_means_ = {
            k: float(np.mean([r.static[k] for r in train if k in r.static])) if any(k in r.static for r in train) else 0.0
            for k in ("age", "sex")
        }
        frame = self._design(train, observations_frame(train, config, transformed=True))
        self.columns_: dict[str, list[str]] = {}
        self.fits_: dict[str, MixedModelFit] = {}
        for variable, rows in frame.groupby("variable"):
            if variable not in _continuous(config) or rows["subject_id"].nunique() < 3:
                continue
            cols = [c for c in self.COVARIATES if c in ("intercept", "time") or rows[c].std() > 0]
            self.columns_[variable] = cols
            self.fits_[variable] = fit_mixed_model(
                rows[cols].to_numpy(float),
                rows[["intercept", "time"]].to_numpy(float),
                rows["value"].to_numpy(float),
                rows["subject_id"].to_numpy(),
                reml=self.reml,
            )
            if not self.fits_[variable].converged:
                log.warning("lmm: the fit of %s did not converge", variable)
        return self

    def _design(self, records: Sequence[PatientRecord], frame: pd.DataFrame) -> pd.DataFrame:
        """Add the covariate columns to a long frame (subject_id, time, variable, ...)."""
        by_id = {r.subject_id: r for r in records}
        frame = frame.copy()
        frame["intercept"] = 1.0
        for k in ("age", "sex"):
            frame[k] = (
                frame["subject_id"].map({s: r.static.get(k, self.static_means_[k]) for s, r in by_id.items()}).astype(float)
            )
        frame["treatment"] = [treated_by(by_id[s], t) for s, t in zip(frame["subject_id"], frame["time"], strict=True)]
        return frame

    def forecast(self, histories: list[PatientRecord], queries: pd.DataFrame) -> pd.DataFrame:
        _check_fitted(self, "fits_")
        queries = queries.reset_index(drop=True)
        hist = self._design(histories, observations_frame(histories, self.config_, transformed=True))
        new = self._design(histories, queries)
        mean = np.full(len(queries), np.nan)
        sd = np.full(len(queries), np.nan)
        hist_groups = dict(tuple(hist.groupby(["subject_id", "variable"])))
        for (sid, variable), rows in new.groupby(["subject_id", "variable"]):
            fit = self.fits_.get(variable)
            if fit is None:
                raise ProtocolError(f"lmm: no model of {variable!r} (too few training data)")
            cols = self.columns_[variable]
            past = hist_groups.get((sid, variable), hist.iloc[:0])
            m, s = fit.predict(
                past[cols].to_numpy(float),
                past[["intercept", "time"]].to_numpy(float),
                past["value"].to_numpy(float),
                rows[cols].to_numpy(float),
                rows[["intercept", "time"]].to_numpy(float),
            )
            mean[rows.index], sd[rows.index] = m, s
        return _with_prediction(queries, mean, mean - _Z90 * sd, mean + _Z90 * sd)

    def risk(self, histories: list[PatientRecord], landmark: float, windows: list[float], event: str) -> pd.DataFrame | None:
        return None


# --------------------------------------------------------------------------- survival peers


class LandmarkCox:
    """A Cox model per survival landmark s on what is known at s.

    Covariates: the last observed value (modelling scale) of each continuous variable
    with at most ``max_missing`` missing visits in the training fold, age at s (baseline
    age + s), sex, and treatment (an exposure started by s); missing last values take
    the training mean. Fitted on the training subjects in follow-up at s, with the
    outcome censored at s + the largest window (the landmark "stopped" Cox model, so
    proportional hazards need hold only over the horizon scored). lifelines'
    ``CoxPHFitter(penalizer=...)``, a small ridge penalty for stability on small folds.
    Risk within s + w is 1 - S(w | x). A training fold with no event after s has nothing
    to fit: the risk is then 0 for everyone (that fold's Kaplan-Meier estimate), with a
    warning, rather than stopping the whole benchmark at a late landmark.
    """

    name = "landmark-cox"
    forecasts: ClassVar[bool] = False
    predicts_risk: ClassVar[bool] = True
    risk_is_probability: ClassVar[bool] = True

    def __init__(self, penalizer: float = 0.01, max_missing: float = DEFAULT_MAX_MISSING) -> None:
        self.penalizer = penalizer
        self.max_missing = max_missing

    def fit(self, train: list[PatientRecord], config: DatasetConfig, seed: int) -> LandmarkCox:
        self.train_ = list(train)
        self.config_ = config
        self.variables_, _ = forecast_variables(self.train_, config, self.max_missing)
        self.models_: dict[tuple[float, float, str], tuple[object | None, list[str], dict[str, float]]] = {}
        return self

    def forecast(self, histories: list[PatientRecord], queries: pd.DataFrame) -> pd.DataFrame:
        raise NotImplementedError("LandmarkCox predicts risk only (forecasts = False)")

    def _covariates(self, histories: Sequence[PatientRecord], landmark: float) -> pd.DataFrame:
        rows = []
        for h in histories:
            last = last_observations(h, self.config_, self.variables_)
            row = {v: last[v][1] if v in last else np.nan for v in self.variables_}
            row["age_at_landmark"] = h.static.get("age", np.nan) + landmark
            row["sex"] = h.static.get("sex", np.nan)
            row["treatment"] = treated_by(h, landmark)
            rows.append(row)
        return pd.DataFrame(rows, index=[h.subject_id for h in histories], dtype=float)

    def _model(self, landmark: float, horizon: float, event: str) -> tuple[object | None, list[str], dict[str, float]]:
        key = (landmark, horizon, event)
        if key not in self.models_:
            from lifelines import CoxPHFitter

            setup = survival_setup(self.train_, landmark, event)
            if setup.event.sum() == 0:
                log.warning("landmark-cox: no %s after s=%g in the training fold; its risk is 0 for everyone", event, landmark)
                self.models_[key] = (None, [], {})
                return self.models_[key]
            x = self._covariates(setup.histories, landmark)
            fill = x.mean().fillna(0.0).to_dict()
            x = x.fillna(fill)
            columns = [c for c in x.columns if x[c].std() > 0]
            data = x[columns].copy()
            data["T"] = np.minimum(setup.time, horizon)
            data["E"] = setup.event * (setup.time <= horizon)
            model = CoxPHFitter(penalizer=self.penalizer).fit(data, duration_col="T", event_col="E")
            self.models_[key] = (model, columns, fill)
        return self.models_[key]

    def risk(self, histories: list[PatientRecord], landmark: float, windows: list[float], event: str) -> pd.DataFrame | None:
        _check_fitted(self, "models_")
        model, columns, fill = self._model(landmark, max(windows), event)
        if model is None:
            return pd.DataFrame(
                [(h.subject_id, float(w), 0.0) for h in histories for w in windows], columns=["subject_id", "window", "risk"]
            )
        x = self._covariates(histories, landmark).fillna(fill)[columns]
        surv = model.predict_survival_function(x, times=list(windows))  # (windows, subjects)
        return pd.DataFrame(
            [(sid, float(w), 1.0 - float(surv.iloc[i, j])) for j, sid in enumerate(x.index) for i, w in enumerate(windows)],
            columns=["subject_id", "window", "risk"],
        )


class LastValueRisk:
    """The last observed value of one variable (modelling scale) as the risk score, for every window.

    A reference, not a model: it ranks subjects (C-index) but is no probability, so it
    gets no Brier score. Subjects with no value of it take the training mean.
    """

    forecasts: ClassVar[bool] = False
    predicts_risk: ClassVar[bool] = True
    risk_is_probability: ClassVar[bool] = False

    def __init__(self, variable: str = "bilirubin") -> None:
        self.variable = variable
        self.name = f"last-{variable}"

    def applies(self, config: DatasetConfig) -> str | None:
        """Why this reference does not apply to ``config`` (it has no continuous variable of the name); None if it does."""
        if self.variable not in config.names(VariableKind.CONTINUOUS):
            return f"config {config.name!r} has no continuous variable {self.variable!r}"
        return None

    def fit(self, train: list[PatientRecord], config: DatasetConfig, seed: int) -> LastValueRisk:
        reason = self.applies(config)
        if reason is not None:
            raise ConfigError(f"{self.name}: {reason}")
        self.config_ = config
        frame = observations_frame(train, config, transformed=True)
        self.mean_ = float(frame.loc[frame["variable"] == self.variable, "value"].mean())
        return self

    def forecast(self, histories: list[PatientRecord], queries: pd.DataFrame) -> pd.DataFrame:
        raise NotImplementedError(f"{self.name} predicts risk only (forecasts = False)")

    def risk(self, histories: list[PatientRecord], landmark: float, windows: list[float], event: str) -> pd.DataFrame | None:
        _check_fitted(self, "mean_")
        rows = []
        for h in histories:
            last = last_observations(h, self.config_, [self.variable])
            value = last[self.variable][1] if self.variable in last else self.mean_
            rows += [(h.subject_id, float(w), value) for w in windows]
        return pd.DataFrame(rows, columns=["subject_id", "window", "risk"])
