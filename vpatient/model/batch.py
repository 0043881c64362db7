"""The tensors the model consumes: a batch of patients and which variable sits on which axis.

Layout of a :class:`PatientBatch` of B patients with at most T visits (padding is
masked, never zero-filled silently):

=====================  ===============  ==============================================
field                  shape            meaning
=====================  ===============  ==============================================
times                  (B, T)           visit times since index (data's unit), padded with 0
visit_mask             (B, T)           1 where the visit exists
continuous, _mask      (B, T, Dc)       transformed, standardised continuous labs
binary, _mask          (B, T, Db)       0/1
ordinal, _mask         (B, T, Do)       class index into the variable's levels (long)
imaging, _mask         (B, T, Di)       standardised embedding dims, all modalities
static, static_mask    (B, S)           standardised static covariates
history_time           (B, H)           first time each history code is recorded, +inf if never
dose_times             (B, K)           times where the dose control changes, +inf padding
doses                  (B, K, U)        dose of each treatment from dose_times[k] on
event_time             (B, E)           time of each event kind, or end of follow-up
event_observed         (B, E)           1 if that event kind happened at event_time
followup_end           (B,)             end of follow-up
=====================  ===============  ==============================================

Batches are built from records by :func:`vpatient.data.batching.make_batch`; this module
imports neither pydantic nor pandas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

__all__ = ["ExpertGroup", "FeatureLayout", "PatientBatch"]


@dataclass(frozen=True)
class ExpertGroup:
    """Variables observed together (one diagnostic test): one Gaussian expert per visit.

    Indices point into the continuous / binary / ordinal / imaging feature axes.
    """

    name: str
    continuous: tuple[int, ...]
    binary: tuple[int, ...]
    ordinal: tuple[int, ...]
    imaging: tuple[int, ...]


@dataclass(frozen=True)
class FeatureLayout:
    """Which variable sits on which tensor axis.

    Derived once from a dataset config by :func:`vpatient.data.batching.layout_from_config`;
    the model sees only this, never the config.
    """

    continuous: tuple[str, ...]
    binary: tuple[str, ...]
    ordinal: tuple[str, ...]
    ordinal_levels: tuple[tuple[float, ...], ...]
    imaging: tuple[tuple[str, int], ...]  # (modality, dimension)
    static: tuple[str, ...]
    history: tuple[str, ...]
    treatments: tuple[str, ...]
    events: tuple[str, ...]
    groups: tuple[ExpertGroup, ...]

    @property
    def imaging_dim(self) -> int:
        return sum(d for _, d in self.imaging)

    def group(self, name: str) -> ExpertGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no expert group {name!r}; groups: {', '.join(g.name for g in self.groups)}")


@dataclass
class PatientBatch:
    """Tensors of a set of patients; see the module docstring for the layout."""

    subject_ids: list[str]
    times: torch.Tensor
    visit_mask: torch.Tensor
    continuous: torch.Tensor
    continuous_mask: torch.Tensor
    binary: torch.Tensor
    binary_mask: torch.Tensor
    ordinal: torch.Tensor
    ordinal_mask: torch.Tensor
    imaging: torch.Tensor
    imaging_mask: torch.Tensor
    static: torch.Tensor
    static_mask: torch.Tensor
    history_time: torch.Tensor
    dose_times: torch.Tensor
    doses: torch.Tensor
    event_time: torch.Tensor
    event_observed: torch.Tensor
    followup_end: torch.Tensor

    def __len__(self) -> int:
        return len(self.subject_ids)

    def select(self, index: Sequence[int] | torch.Tensor) -> PatientBatch:
        """The sub-batch of the given patients (rows)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        values: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            values[f.name] = [value[i] for i in idx.tolist()] if f.name == "subject_ids" else value[idx]
        return PatientBatch(**values)

    def repeat(self, n: int) -> PatientBatch:
        """Each patient repeated ``n`` times in a row (patient-major), for posterior samples."""
        return self.select(torch.arange(len(self)).repeat_interleave(n))

    def with_doses(self, dose_times: torch.Tensor, doses: torch.Tensor) -> PatientBatch:
        """The same patients under other treatment exposures (a what-if)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(dose_times=dose_times, doses=doses)
        return PatientBatch(**values)
