"""The learned population that virtual patients are drawn from.

A virtual patient is an initial disease state z0 (with its lab offsets), static
covariates, a treatment arm, a visit schedule, a censoring time and measurement
missingness. :class:`Population` learns each from the training cohort:

- **state and covariates**: a Gaussian mixture per baseline treatment arm over the
  *aggregate posterior*: ``draws_per_patient`` draws of each training patient's
  q(z0, offsets | everything recorded) next to its standardised static covariates.
  Fitting per arm keeps the link between treatment and severity that the training data
  had (none in a randomised trial; strong under confounding). The number of components
  (1..``max_components``) is chosen by BIC. Arms with fewer patients than
  ``min_arm_size`` share a mixture fitted on everyone. An ensemble's members each have
  their own latent space, so each member gets its own mixtures; a virtual patient is
  realised by one member (``member_of``), its state drawn from that member's mixture.
- **covariates on their own scale**: draws are clipped to the range seen in training
  and categorical statics (sex) snap to their nearest category.
- **treatments**: a virtual patient of an arm receives the exposures of a randomly
  chosen training patient of that arm (as-treated templates).
- **visits**: the training visit times with each patient's follow-up (``as_observed``
  schedules take those of a training patient followed at least as long as the virtual
  one, cut at its end), the median gap between visits (``regular``) and the visit rate
  (``random``: exponential gaps).
- **recording precision**: per continuous variable, the coarsest power of ten that 99% of
  training values are multiples of (prothrombin in tenths of a second, cholesterol in
  whole mg/dl); virtual measurements are rounded to it, as the laboratory would.
- **missingness**: per variable, the share of baseline visits and of later visits at
  which it was measured.
- **censoring**: the reverse Kaplan-Meier estimate of time to loss of follow-up
  (patients without an event are censored; an event censors the censoring).

Everything is plain numbers, saved as ``population.json`` beside a checkpoint (no pickle).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ConfigDict, TypeAdapter, ValidationError
from sklearn.mixture import GaussianMixture

from vpatient.data.batching import make_batch
from vpatient.data.cohort import arm_of
from vpatient.data.timeline import median_visit_gap
from vpatient.errors import VPatientError
from vpatient.schemas import PatientRecord, TreatmentExposure
from vpatient.virtual_patient import VirtualPatientModel

__all__ = ["POPULATION_FILE", "ArmMixture", "Population"]

log = logging.getLogger(__name__)

POPULATION_FILE = "population.json"
_MAX_TEMPLATES = 500


@dataclass
class ArmMixture:
    """A Gaussian mixture over [posterior draw (P), standardised statics (S)] of one arm."""

    __pydantic_config__ = ConfigDict(allow_inf_nan=False)

    weights: list[float]
    means: list[list[float]]
    covariances: list[list[list[float]]]

    @classmethod
    def fit(cls, x: np.ndarray, max_components: int, seed: int) -> ArmMixture:
        best, best_bic = None, np.inf
        for k in range(1, max_components + 1):
            if len(x) < 5 * k:
                break
            gm = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=seed, n_init=2).fit(x)
            bic = gm.bic(x)
            if bic < best_bic:
                best, best_bic = gm, bic
        if best is None:
            raise VPatientError(f"too few training draws ({len(x)}) to fit a population model")
        return cls(best.weights_.tolist(), best.means_.tolist(), best.covariances_.tolist())

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        weights = np.asarray(self.weights)
        component = rng.choice(len(weights), size=n, p=weights / weights.sum())
        means = np.asarray(self.means)
        chol = np.linalg.cholesky(np.asarray(self.covariances))
        eps = rng.standard_normal((n, means.shape[1]))
        return means[component] + np.einsum("nij,nj->ni", chol[component], eps)


@dataclass
class Population:
    """Everything needed to draw new virtual patients like the training cohort (module docstring)."""

    # read back from files by pydantic (from_dict): every number finite
    __pydantic_config__ = ConfigDict(allow_inf_nan=False)

    posterior_dim: int
    static: list[str]
    static_low: list[float]
    static_high: list[float]
    static_categories: dict[str, list[float]]
    arms: dict[str, float]  # baseline arm -> share of training patients
    mixtures: list[dict[str, ArmMixture]]  # per ensemble member, by arm; "*" for the pooled fallback
    exposure_templates: dict[str, list[list[dict]]]
    visit_templates: list[list[float]]  # sorted by the follow-up of the patient they come from ...
    template_followup: list[float]  # ... which is this, ascending
    resolution: dict[str, float]  # continuous variable -> recording step (0: none found)
    median_visit_gap: float
    visits_per_year: float
    observed_share: dict[str, tuple[float, float]]  # variable -> (baseline, later visits)
    censoring_times: list[float]  # reverse Kaplan-Meier: step times ...
    censoring_survival: list[float]  # ... and P(still followed after each)
    max_followup: float
    n_training_patients: int
    seed: int

    # -- fitting -------------------------------------------------------------

    @classmethod
    @torch.no_grad()
    def fit(
        cls,
        model: VirtualPatientModel,
        records: Sequence[PatientRecord],
        seed: int = 0,
        draws_per_patient: int = 10,
        max_components: int = 4,
        min_arm_size: int = 30,
    ) -> Population:
        """Learn the population from training ``records`` encoded by ``model``."""
        records = list(records)
        if len(records) < 10:
            raise VPatientError(f"a population model needs at least 10 training patients, got {len(records)}")
        batch = make_batch(records, model.config, model.scalers)
        static = (batch.static * batch.static_mask).numpy().astype(np.float64)  # standardised, 0 = the mean
        arms = np.array([arm_of(r) for r in records])
        names, counts = np.unique(arms, return_counts=True)
        generator = torch.Generator().manual_seed(seed)
        mixtures = []
        for world in model.members:
            mean, var = world.posterior(batch, batch.followup_end)
            eps = torch.randn((len(records), draws_per_patient, mean.shape[-1]), generator=generator)
            draws = (mean.unsqueeze(1) + var.sqrt().unsqueeze(1) * eps).numpy().astype(np.float64)  # (N, K, P)
            features = np.concatenate([draws, np.repeat(static[:, None, :], draws_per_patient, axis=1)], axis=-1)
            by_arm = {"*": ArmMixture.fit(features.reshape(-1, features.shape[-1]), max_components, seed)}
            for arm, count in zip(names, counts, strict=True):
                if count >= min_arm_size:
                    by_arm[str(arm)] = ArmMixture.fit(features[arms == arm].reshape(-1, features.shape[-1]), max_components, seed)
            mixtures.append(by_arm)
        rng = np.random.default_rng(seed)
        templates = {}
        for arm in names:
            members = [r for r, a in zip(records, arms, strict=True) if a == arm]
            chosen = rng.choice(len(members), size=min(len(members), _MAX_TEMPLATES), replace=False)
            templates[str(arm)] = [[e.model_dump(mode="json") for e in members[i].treatments] for i in sorted(chosen)]
        raw_static = np.array([[r.static.get(name, np.nan) for name in model.layout.static] for r in records])
        low = np.nanmin(raw_static, axis=0) if raw_static.size else np.zeros(0)
        high = np.nanmax(raw_static, axis=0) if raw_static.size else np.zeros(0)
        categories = {
            name: sorted((model.config.variable(name).categories or {}).values())
            for name in model.layout.static
            if model.config.variable(name).categories
        }
        visits = [r.visit_times() for r in records]
        followup = np.array([r.end_of_followup for r in records])
        by_followup = np.argsort(followup, kind="stable")
        c_times, c_surv = _reverse_kaplan_meier(followup, np.array([not r.events for r in records]))
        return cls(
            posterior_dim=int(mean.shape[-1]),
            static=list(model.layout.static),
            static_low=np.nan_to_num(low).tolist(),
            static_high=np.nan_to_num(high).tolist(),
            static_categories=categories,
            arms={str(a): float(c / len(records)) for a, c in zip(names, counts, strict=True)},
            mixtures=mixtures,
            exposure_templates=templates,
            visit_templates=[[float(t) for t in visits[i]] for i in by_followup],
            template_followup=followup[by_followup].tolist(),
            resolution=_resolutions(records, model.layout.continuous),
            median_visit_gap=median_visit_gap(records),
            visits_per_year=float(sum(len(v) for v in visits) / max(followup.sum(), 1e-9)),
            observed_share=_observed_share(records, model),
            censoring_times=c_times.tolist(),
            censoring_survival=c_surv.tolist(),
            max_followup=float(followup.max()),
            n_training_patients=len(records),
            seed=seed,
        )

    # -- drawing ---------------------------------------------------------------

    @property
    def n_members(self) -> int:
        return len(self.mixtures)

    def member_of(self, subject_ids: np.ndarray) -> np.ndarray:
        """The ensemble member that realises each virtual patient: ids taken in turn, so members share patients evenly."""
        return np.asarray(subject_ids, dtype=np.int64) % self.n_members

    def mixture(self, arm: str, member: int = 0) -> ArmMixture:
        by_arm = self.mixtures[member]
        return by_arm.get(arm, by_arm["*"])

    def draw_arms(self, n: int, rng: np.random.Generator) -> np.ndarray:
        names = list(self.arms)
        p = np.asarray([self.arms[a] for a in names])
        return np.asarray(names, dtype=object)[rng.choice(len(names), size=n, p=p / p.sum())]

    def draw_states(
        self, arms: np.ndarray, rng: np.random.Generator, members: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior-space draws (n, P) and standardised statics (n, S) for patients of the given arms and members."""
        members = np.zeros(len(arms), dtype=np.int64) if members is None else np.asarray(members)
        out = np.zeros((len(arms), self.posterior_dim + len(self.static)))
        for member in range(self.n_members):
            for arm in np.unique(arms):
                rows = np.flatnonzero((arms == arm) & (members == member))
                if len(rows):
                    out[rows] = self.mixture(str(arm), member).sample(len(rows), rng)
        return out[:, : self.posterior_dim], out[:, self.posterior_dim :]

    def draw_exposures(self, arms: np.ndarray, rng: np.random.Generator) -> list[list[TreatmentExposure]]:
        """Each patient's exposures: those of a random training patient of its arm.

        Patients given the same template share its list (read it, never change it). One
        bounded draw per patient, in patient order: ``rng.integers(0, highs)`` takes the
        same numbers from the stream as a draw per patient would.
        """
        names, index = np.unique(np.asarray(arms, dtype=str), return_inverse=True)
        templates = [self.parsed_exposure_templates.get(str(arm)) or [[]] for arm in names]
        counts = np.asarray([len(t) for t in templates], dtype=np.int64)
        chosen = rng.integers(0, counts[index]) if len(index) else np.zeros(0, dtype=np.int64)
        return [templates[a][c] for a, c in zip(index.tolist(), chosen.tolist(), strict=True)]

    def visits_for(self, end: np.ndarray, draw: np.ndarray) -> list[np.ndarray]:
        """Visit times of a training patient followed at least ``end`` years (the longest if none), one per draw in [0, 1)."""
        return [np.asarray(self.visit_templates[i], dtype=float) for i in self.visit_templates_for(end, draw)]

    def visit_templates_for(self, end: np.ndarray, draw: np.ndarray) -> np.ndarray:
        """Which visit template (index into ``visit_templates``) :meth:`visits_for` gives each patient."""
        followup = np.asarray(self.template_followup)
        first = np.minimum(np.searchsorted(followup, end - 1e-9, side="left"), len(followup) - 1)
        chosen = first + np.floor(draw * (len(followup) - first)).astype(int)
        return np.minimum(chosen, len(followup) - 1)

    @cached_property
    def visit_template_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Every visit template in one flat array of times, and where each starts in it (one more entry: the end)."""
        lengths = [len(v) for v in self.visit_templates]
        flat = np.fromiter((t for v in self.visit_templates for t in v), dtype=float, count=sum(lengths))
        return flat, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    @cached_property
    def parsed_exposure_templates(self) -> dict[str, list[list[TreatmentExposure]]]:
        """The exposure templates of each arm as validated exposures, parsed once and shared by the patients drawn."""
        return {
            arm: [[TreatmentExposure.model_validate(e) for e in t] for t in ts] for arm, ts in self.exposure_templates.items()
        }

    def draw_censoring(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Times of loss to follow-up; inf beyond the last censoring seen in training."""
        times, surv = np.asarray(self.censoring_times), np.asarray(self.censoring_survival)
        u = rng.uniform(size=n)
        if len(times) == 0:
            return np.full(n, np.inf)
        # S is non-increasing: the first time with S(t) <= u is the inverse of the distribution.
        index = np.searchsorted(-surv, -u, side="left")
        return np.where(index < len(times), times[np.minimum(index, len(times) - 1)], np.inf)

    # -- files -------------------------------------------------------------------

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        """The population as JSON text (what chunk tasks receive: plain text travels anywhere)."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Population:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: Any) -> Population:
        """The population a ``to_dict`` wrote, checked: types, finite numbers, and shapes that fit one another."""
        if isinstance(data, dict) and isinstance(data.get("mixtures"), dict):
            data = {**data, "mixtures": [data["mixtures"]]}  # fitted before ensembles: one member's mixtures by arm
        try:
            population = _POPULATION_FILE.validate_python(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the file"
            raise VPatientError(f"unreadable or outdated population model ({where}: {first['msg']}){_REFIT}") from None
        problem = population._inconsistency()
        if problem:
            raise VPatientError(f"unreadable or outdated population model ({problem}){_REFIT}")
        return population

    def _inconsistency(self) -> str | None:
        """What does not fit together in a population read from a file (None when all does)."""
        width = self.posterior_dim + len(self.static)
        if self.posterior_dim < 1 or not self.mixtures or not self.arms or min(self.arms.values()) < 0:
            return "no posterior dimensions, no mixtures or no arms"
        if len(self.static_low) != len(self.static) or len(self.static_high) != len(self.static):
            return "static bounds do not match the static variables"
        for by_arm in self.mixtures:
            if "*" not in by_arm:
                return "a member without its pooled mixture '*'"
            for arm, mix in by_arm.items():
                weights, means, cov = (np.asarray(v, dtype=float) for v in (mix.weights, mix.means, mix.covariances))
                k = len(weights)
                if (
                    k == 0
                    or weights.min() < 0
                    or weights.sum() <= 0
                    or means.shape != (k, width)
                    or cov.shape != (k, width, width)
                ):
                    return f"mixture {arm!r} does not have {width} dimensions with non-negative weights"
                try:
                    np.linalg.cholesky(cov)
                except np.linalg.LinAlgError:
                    return f"mixture {arm!r} has a covariance that is not positive definite"
        for arm, templates in self.exposure_templates.items():
            for template in templates:
                for exposure in template:
                    try:
                        TreatmentExposure.model_validate(exposure)
                    except ValidationError:
                        return f"arm {arm!r} has an exposure that is not a treatment exposure"
        if not self.visit_templates or len(self.visit_templates) != len(self.template_followup):
            return "visit templates do not match their follow-up times"
        if np.any(np.diff(self.template_followup) < 0) or len(self.censoring_times) != len(self.censoring_survival):
            return "follow-up times out of order, or censoring times without their survival"
        return None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict()) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Population:
        """The population model saved at ``path``; every refusal names the file."""
        from vpatient.inputs import read_json_file

        data = read_json_file(path, "population model")
        try:
            return cls.from_dict(data)
        except VPatientError as exc:
            raise VPatientError(f"{path}: {exc}") from None


_REFIT = "; delete population.json beside the checkpoint and it is fitted again from the training data"
_POPULATION_FILE = TypeAdapter(Population)


def _observed_share(records: Sequence[PatientRecord], model: VirtualPatientModel) -> dict[str, tuple[float, float]]:
    """Per measured variable: share of baseline visits and of later visits that measured it."""
    names = [*model.layout.continuous, *model.layout.binary, *model.layout.ordinal, *(m for m, _ in model.layout.imaging)]
    seen = {name: [0, 0] for name in names}
    visits = [0, 0]
    for record in records:
        times = record.visit_times()
        if not times:
            continue
        first = times[0]
        visits[0] += 1
        visits[1] += len(times) - 1
        measured = {(o.variable, o.time) for o in record.observations} | {(s.modality, s.time) for s in record.imaging}
        for variable, t in measured:
            if variable in seen:
                seen[variable][0 if t == first else 1] += 1
    return {name: (c[0] / max(visits[0], 1), c[1] / max(visits[1], 1)) for name, c in seen.items()}


def _resolutions(records: Sequence[PatientRecord], variables: Sequence[str]) -> dict[str, float]:
    """Per variable, the coarsest power of ten (1000 .. 0.001) that 99% of its recorded values are multiples of."""
    values: dict[str, list[float]] = {name: [] for name in variables}
    for record in records:
        for obs in record.observations:
            if obs.variable in values:
                values[obs.variable].append(obs.value)
    out = {}
    for name, seen in values.items():
        x = np.asarray(seen, dtype=float)
        out[name] = 0.0
        for step in (1000.0, 100.0, 10.0, 1.0, 0.1, 0.01, 0.001):
            ratio = x / step
            if len(x) and np.mean(np.abs(ratio - np.round(ratio)) < 1e-6 * np.maximum(1.0, np.abs(ratio))) >= 0.99:
                out[name] = step
                break
    return out


def _reverse_kaplan_meier(followup: np.ndarray, censored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier of the censoring time (censoring is the 'event'; an event censors it)."""
    from lifelines import KaplanMeierFitter

    if not censored.any():
        return np.zeros(0), np.zeros(0)
    km = KaplanMeierFitter().fit(followup, censored.astype(int))
    table = km.survival_function_
    times = table.index.to_numpy(dtype=float)
    surv = table.iloc[:, 0].to_numpy(dtype=float)
    keep = times > 0
    return times[keep], surv[keep]
