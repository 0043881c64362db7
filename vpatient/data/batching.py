"""Records -> tensors: patient records become the :class:`~vpatient.model.batch.PatientBatch` the model consumes.

The layout of a batch (shapes, masks, padding) is documented in :mod:`vpatient.model.batch`;
:func:`layout_from_config` derives which variable sits on which axis from a dataset config.
Continuous labs are put on the modelling scale (their transform) and standardised.

Scalers are fitted on training records only (scikit-learn ``StandardScaler``, which
ignores missing values) and saved with a model as plain JSON numbers, with the two
time statistics of the training data: the time scale the network runs on (the median
gap between visits) and the median follow-up (the default forecast horizon when the
config sets none). Both are in the data's own time unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.preprocessing import StandardScaler

from vpatient import transforms
from vpatient.data.timeline import median_visit_gap
from vpatient.model.batch import ExpertGroup, FeatureLayout, PatientBatch
from vpatient.plans import dose_at
from vpatient.schemas import DatasetConfig, PatientRecord, TreatmentExposure, VariableKind

__all__ = ["Scalers", "dense_arrays", "dose_tensors", "layout_from_config", "make_batch", "standardised_batch"]


def layout_from_config(config: DatasetConfig) -> FeatureLayout:
    """The tensor layout of a dataset config: which variable sits on which axis, and the expert groups (one per test)."""
    kinds = VariableKind
    continuous = tuple(config.names(kinds.CONTINUOUS))
    binary = tuple(config.names(kinds.BINARY))
    ordinal_specs = config.of_kind(kinds.ORDINAL)
    imaging = tuple((v.name, int(v.dimension or 0)) for v in config.of_kind(kinds.IMAGING_EMBEDDING))
    imaging_offsets = np.cumsum([0] + [d for _, d in imaging])
    group_of: dict[str, list[str]] = {}
    for var in config.of_kind(kinds.CONTINUOUS, kinds.BINARY, kinds.ORDINAL, kinds.IMAGING_EMBEDDING):
        group_of.setdefault(var.test or f"untested_{var.kind.value}", []).append(var.name)
    groups = []
    for name, members in group_of.items():
        img = [j for i, (m, _) in enumerate(imaging) if m in members for j in range(imaging_offsets[i], imaging_offsets[i + 1])]
        groups.append(
            ExpertGroup(
                name=name,
                continuous=tuple(i for i, v in enumerate(continuous) if v in members),
                binary=tuple(i for i, v in enumerate(binary) if v in members),
                ordinal=tuple(i for i, v in enumerate(ordinal_specs) if v.name in members),
                imaging=tuple(int(j) for j in img),
            )
        )
    return FeatureLayout(
        continuous=continuous,
        binary=binary,
        ordinal=tuple(v.name for v in ordinal_specs),
        ordinal_levels=tuple(tuple(v.levels or ()) for v in ordinal_specs),
        imaging=imaging,
        static=tuple(config.names(kinds.STATIC)),
        history=tuple(config.names(kinds.HISTORY)),
        treatments=tuple(config.treatments),
        events=tuple(config.event_kinds),
        groups=tuple(groups),
    )


_ARRAYS = ("continuous_mean", "continuous_std", "imaging_mean", "imaging_std", "static_mean", "static_std")


@dataclass
class Scalers:
    """What is fitted on the training records besides the weights.

    Means and standard deviations of continuous labs (transformed), imaging dims and
    statics; ``time_scale``, the median gap between consecutive visits (the network's
    unit of time, :class:`~vpatient.model.latent_ode.LatentODE`), and ``median_followup``,
    both in the data's time unit. A checkpoint saved before them loads with 1.0 (the
    unit itself, so its numbers do not change) and None.
    """

    continuous_mean: np.ndarray
    continuous_std: np.ndarray
    imaging_mean: np.ndarray
    imaging_std: np.ndarray
    static_mean: np.ndarray
    static_std: np.ndarray
    time_scale: float = 1.0
    median_followup: float | None = None

    @classmethod
    def fit(cls, records: Sequence[PatientRecord], config: DatasetConfig) -> Scalers:
        """Fit on training records only."""
        layout = layout_from_config(config)
        raw = dense_arrays(records, config, layout)
        visits = raw["visit_mask"].astype(bool)
        cont = raw["continuous"][visits]
        img = raw["imaging"][visits]
        static = raw["static"]
        followup = [r.end_of_followup for r in records]
        return cls(
            *_mean_std(cont),
            *_mean_std(img),
            *_mean_std(static),
            time_scale=median_visit_gap(records),
            median_followup=float(np.median(followup)) if followup else None,
        )

    def to_dict(self) -> dict[str, list[float] | float | None]:
        arrays: dict[str, list[float] | float | None] = {name: getattr(self, name).tolist() for name in _ARRAYS}
        return arrays | {"time_scale": self.time_scale, "median_followup": self.median_followup}

    @classmethod
    def from_dict(cls, data: dict) -> Scalers:
        """The scalers ``to_dict`` wrote, checked: finite vectors, positive spreads, a positive time scale (else ValueError)."""
        arrays = {name: np.asarray(data[name], dtype=np.float64) for name in _ARRAYS}
        for name, values in arrays.items():
            if values.ndim != 1 or not np.isfinite(values).all() or (name.endswith("_std") and (values <= 0).any()):
                raise ValueError(f"{name} must be a list of finite numbers{', all > 0' if name.endswith('_std') else ''}")
        for kind in ("continuous", "imaging", "static"):
            if len(arrays[f"{kind}_mean"]) != len(arrays[f"{kind}_std"]):
                raise ValueError(f"{kind}_mean and {kind}_std differ in length")
        followup = data.get("median_followup")
        time_scale = float(data.get("time_scale", 1.0))
        if not (np.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"time_scale = {time_scale!r} is not a positive time")
        if followup is not None and not (np.isfinite(float(followup)) and float(followup) > 0):
            raise ValueError(f"median_followup = {followup!r} is not a positive time")
        return cls(
            **arrays,
            time_scale=time_scale,
            median_followup=float(followup) if followup is not None else None,
        )


def _mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if values.shape[-1] == 0:
        return np.zeros(0), np.ones(0)
    observed = ~np.isnan(values)
    mean = np.zeros(values.shape[1])
    std = np.ones(values.shape[1])
    fit_cols = observed.sum(axis=0) > 1
    if fit_cols.any():
        scaler = StandardScaler().fit(values[:, fit_cols])  # NaNs are disregarded in fit
        mean[fit_cols] = scaler.mean_
        std[fit_cols] = np.where(scaler.scale_ > 1e-8, scaler.scale_, 1.0)
    return mean, std


def make_batch(records: Sequence[PatientRecord], config: DatasetConfig, scalers: Scalers) -> PatientBatch:
    """Tensors of ``records``, standardised with ``scalers`` (fitted on training data)."""
    layout = layout_from_config(config)
    raw = dense_arrays(records, config, layout)
    dose_times, doses = dose_tensors([r.treatments for r in records], layout.treatments)
    return standardised_batch(raw, dose_times, doses, [r.subject_id for r in records], scalers)


def standardised_batch(
    raw: dict[str, np.ndarray], dose_times: torch.Tensor, doses: torch.Tensor, subject_ids: list[str], scalers: Scalers
) -> PatientBatch:
    """The batch of :func:`dense_arrays`' arrays and :func:`dose_tensors`' doses, standardised with ``scalers``.

    :func:`make_batch` from records, and the streamed training data
    (:mod:`vpatient.train.stream`) from arrays cached per shard, both end here.
    """
    cont = (raw["continuous"] - scalers.continuous_mean) / scalers.continuous_std
    img = (raw["imaging"] - scalers.imaging_mean) / scalers.imaging_std
    static = (raw["static"] - scalers.static_mean) / scalers.static_std

    def t(x: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.as_tensor(np.nan_to_num(x, nan=0.0, posinf=np.inf), dtype=dtype)

    return PatientBatch(
        subject_ids=list(subject_ids),
        times=t(raw["times"]),
        visit_mask=t(raw["visit_mask"]),
        continuous=t(cont),
        continuous_mask=t(~np.isnan(cont)),
        binary=t(raw["binary"]),
        binary_mask=t(~np.isnan(raw["binary"])),
        ordinal=t(raw["ordinal"], torch.long),
        ordinal_mask=t(~np.isnan(raw["ordinal"])),
        imaging=t(img),
        imaging_mask=t(~np.isnan(img)),
        static=t(static),
        static_mask=t(~np.isnan(static)),
        history_time=torch.as_tensor(raw["history_time"], dtype=torch.float32),
        dose_times=dose_times,
        doses=doses,
        event_time=t(raw["event_time"]),
        event_observed=t(raw["event_observed"]),
        followup_end=t(raw["followup_end"]),
    )


def dose_tensors(
    exposures: Sequence[Sequence[TreatmentExposure]], treatments: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Piecewise-constant dose control of each patient as (dose_times (B, K), doses (B, K, U)).

    The dose of treatment u at time t is ``doses[b, k, u]`` for the last k with
    ``dose_times[b, k] <= t``; the first breakpoint is always t=0 (dose 0 before any start).
    """
    points = [sorted({0.0} | {e.start for e in exp} | {e.stop for e in exp if e.stop is not None}) for exp in exposures]
    k_max = max((len(p) for p in points), default=1)
    times = np.full((len(exposures), k_max), np.inf)
    doses = np.zeros((len(exposures), k_max, len(treatments)))
    for b, (exp, pts) in enumerate(zip(exposures, points, strict=True)):
        times[b, : len(pts)] = pts
        for u, name in enumerate(treatments):
            doses[b, : len(pts), u] = dose_at(exp, name, np.asarray(pts))
    return torch.as_tensor(times, dtype=torch.float32), torch.as_tensor(doses, dtype=torch.float32)


def dense_arrays(records: Sequence[PatientRecord], config: DatasetConfig, layout: FeatureLayout) -> dict[str, np.ndarray]:
    """NaN-padded numpy arrays of ``records`` on the natural -> modelling scale (not standardised), one row per record.

    Keys: times, visit_mask, continuous, binary, ordinal, imaging (visits padded to the
    most any record has), static, history_time, event_time, event_observed, followup_end.
    """
    n = len(records)
    visit_times = [r.visit_times() for r in records]
    t_max = max((len(v) for v in visit_times), default=1) or 1
    cont_idx = {name: i for i, name in enumerate(layout.continuous)}
    bin_idx = {name: i for i, name in enumerate(layout.binary)}
    ord_idx = {name: i for i, name in enumerate(layout.ordinal)}
    img_offset = dict(zip([m for m, _ in layout.imaging], np.cumsum([0] + [d for _, d in layout.imaging])[:-1], strict=True))
    transform_of = {v.name: v.transform for v in config.variables}
    out = {
        "times": np.zeros((n, t_max)),
        "visit_mask": np.zeros((n, t_max)),
        "continuous": np.full((n, t_max, len(layout.continuous)), np.nan),
        "binary": np.full((n, t_max, len(layout.binary)), np.nan),
        "ordinal": np.full((n, t_max, len(layout.ordinal)), np.nan),
        "imaging": np.full((n, t_max, layout.imaging_dim), np.nan),
        "static": np.full((n, len(layout.static)), np.nan),
        "history_time": np.full((n, len(layout.history)), np.inf),
        "event_time": np.zeros((n, len(layout.events))),
        "event_observed": np.zeros((n, len(layout.events))),
        "followup_end": np.zeros(n),
    }
    for b, (record, times) in enumerate(zip(records, visit_times, strict=True)):
        slot = {t: i for i, t in enumerate(times)}
        out["times"][b, : len(times)] = times
        out["visit_mask"][b, : len(times)] = 1.0
        for obs in record.observations:
            i = slot[obs.time]
            if obs.variable in cont_idx:
                out["continuous"][b, i, cont_idx[obs.variable]] = transforms.forward(obs.value, transform_of[obs.variable])
            elif obs.variable in bin_idx:
                out["binary"][b, i, bin_idx[obs.variable]] = obs.value
            elif obs.variable in ord_idx:
                j = ord_idx[obs.variable]
                out["ordinal"][b, i, j] = layout.ordinal_levels[j].index(obs.value)
        for study in record.imaging:
            start = img_offset[study.modality]
            out["imaging"][b, slot[study.time], start : start + len(study.embedding)] = study.embedding
        for s, name in enumerate(layout.static):
            out["static"][b, s] = record.static.get(name, np.nan)
        for h, name in enumerate(layout.history):
            times_h = [e.time for e in record.history if e.code == name]
            if times_h:
                out["history_time"][b, h] = min(times_h)
        out["followup_end"][b] = record.end_of_followup
        for e, kind in enumerate(layout.events):
            times_e = [ev.time for ev in record.events if ev.kind == kind]
            out["event_time"][b, e] = min(times_e) if times_e else record.end_of_followup
            out["event_observed"][b, e] = 1.0 if times_e else 0.0
    return out
