"""VirtualPatientModel: the trained world model as users meet it.

``VirtualPatientModel.fit(records, config)`` trains; ``.save(dir)`` / ``.load(dir)``
write and read a checkpoint directory (weights read with ``weights_only=True``, never
unpickled); ``.forecast(record, until=s, horizon=h)`` gives sample paths, quantiles and
survival curves of one patient as known at time s.

Forecasts condition on what is known at s: the posterior over the initial state comes
from the experts of visits up to s, and its samples are importance-weighted by the
likelihood of the patient's event history up to s (alive and event-free at s is
evidence about the state), then resampled, so every sample path counts equally.

A model may be an ensemble of members (:mod:`vpatient.ensemble`). Its sample paths are
then split between the members in contiguous blocks (member k draws samples
``member_slices(n_samples, K)[k]``), so every summary, interval and effect is over the
pooled mixture and includes the spread between members: the model's own uncertainty
beside the patient's latent state and the measurement noise.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch

from vpatient import limits, transforms
from vpatient.data.batching import Scalers, dose_tensors, layout_from_config, make_batch
from vpatient.data.cohort import Cohort
from vpatient.data.timeline import truncate_record
from vpatient.errors import CheckpointError, VPatientError, choose
from vpatient.manifest import MANIFEST_FILE, sha256_of, verify_manifest, write_manifest
from vpatient.model.batch import FeatureLayout, PatientBatch
from vpatient.model.dynamics import DenseSolution
from vpatient.model.latent_ode import LatentODE, ModelSettings
from vpatient.plans import exposures_under_plan
from vpatient.schemas import DatasetConfig, PatientRecord, TreatmentPlan
from vpatient.train import TrainingHistory, TrainSettings, fit_latent_ode
from vpatient.train.data import SINGLE_PROCESS, Rank
from vpatient.train.shard_cache import ShardCache
from vpatient.train.stream import DEFAULT_BUFFER_PATIENTS, fit_network
from vpatient.version import __version__

__all__ = ["CheckpointError", "Forecast", "NumericalError", "Scale", "SimulatedPaths", "VirtualPatientModel", "member_slices"]

log = logging.getLogger(__name__)

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_POSTERIOR_CACHE = 64  # histories whose refined posterior is kept
T = TypeVar("T")

_SURVIVAL_COLUMNS = ("subject_id", "time", "event", "survival", "survival_q05", "survival_q95", "incidence")
_FILES = ("config.json", "model.json", "scalers.json")
_OPTIONAL_FILES = ("training.json", "members.json")  # read when present


class NumericalError(VPatientError, ArithmeticError):
    """A simulation whose numbers are not finite: the model's dynamics blew up for a patient."""


class Scale(StrEnum):
    """The scale continuous values are reported on."""

    NATURAL = "natural"  # the variable's own units (mg/dl)
    MODEL = "model"  # after the variable's transform (log bilirubin), not standardised


@dataclass
class SimulatedPaths:
    """Posterior sample paths of a batch of patients on per-patient time grids.

    Arrays are patient-major: (B, S, T, ...). Continuous values are on the modelling
    scale (transformed, e.g. log bilirubin), not standardised.
    """

    subject_ids: list[str]
    times: np.ndarray  # (B, T)
    predictive: np.ndarray  # (B, S, T, Dc): with observation noise
    expected: np.ndarray  # (B, S, T, Dc): the decoder mean, without noise
    binary_probability: np.ndarray  # (B, S, T, Db)
    imaging: np.ndarray  # (B, S, T, Di): expected embeddings (decoder mean), natural scale
    survival: np.ndarray  # (B, S, T, E): P(free of event k at t | free at the cut-off), other kinds censoring
    incidence: np.ndarray  # (B, S, T, E): P(first event is k, by t | event-free at the cut-off)
    cutoff: np.ndarray  # (B,)
    effective_sample_size: np.ndarray  # (B,) of the importance weights, before resampling (summed over members)
    noise_sd: np.ndarray  # (S, Dc) measurement noise sd of each sample's member and continuous variable, modelling scale
    member: np.ndarray  # (S,) the ensemble member that drew each sample (all 0 for a single model)


@dataclass
class Forecast:
    """One patient's forecast: sample paths and their summaries.

    Its paths are not changed once it is made: each summary is computed once and kept, so the
    several views of one forecast (a dashboard's headline numbers, charts and table) share it.
    """

    subject_id: str
    until: float
    config: DatasetConfig
    layout: FeatureLayout
    paths: SimulatedPaths  # a batch of one
    _summaries: dict[tuple[str, ...], pd.DataFrame] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def times(self) -> np.ndarray:
        return self.paths.times[0]

    @property
    def horizon(self) -> float:
        """How far past ``until`` the forecast runs (the data's time unit)."""
        return float(self.times[-1] - self.until)

    def milestones(self, parts: int = 5) -> list[float]:
        """The forecast time and every ``parts``-th of the horizon (yearly over 5 years), each at its nearest grid time."""
        grid = self.times
        return sorted({float(grid[np.abs(grid - (self.until + self.horizon * k / parts)).argmin()]) for k in range(parts + 1)})

    def summary(
        self, scale: Scale | str = Scale.NATURAL, since: float | None = None, variables: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Per continuous variable and time: the point forecast ``median`` and 5/25/75/95% predictive quantiles.

        ``scale="natural"`` reports lab units (mg/dl); ``"model"`` the transformed scale;
        any other value is refused (an OptionError, a ValueError, listing the scales).
        ``since`` keeps the times from it on (a what-if's plans, from the decision time) and
        ``variables`` those continuous variables (default: all; a name not among them is refused);
        nothing is computed for the rest, and the rows kept are those of the whole summary.
        Quantiles are those of the predictive mixture, every posterior path's mean with
        the measurement noise around it (exact, so bands are smooth rather than the
        quantiles of one noisy draw per path). They are computed on the model's scale and
        back-transformed, which is exact for a monotone transform; a mean would not be:
        averaging exp of noisy log draws lands far above the typical value of a noisy lab.
        """
        scale = choose(Scale, scale, "scale")
        names = list(self.layout.continuous)
        unknown = sorted(set(variables or ()) - set(names))
        if unknown:
            raise VPatientError(f"variables {unknown} are not continuous variables of this model; choose from {names}")
        chosen = tuple(n for n in names if variables is None or n in variables)  # in the layout's order, as the whole
        key = (scale.value, "all" if since is None else repr(float(since)), *chosen)
        if key not in self._summaries:
            self._summaries[key] = self._summary(scale, since, chosen)
        return self._summaries[key].copy()  # a copy: a caller's edits never reach the next caller

    def _summary(self, scale: Scale, since: float | None, variables: tuple[str, ...]) -> pd.DataFrame:
        # each time's and variable's quantiles are computed alone (a bisection per cell), so leaving some out changes none kept
        kept = slice(None) if since is None else slice(int(np.searchsorted(self.times, since - 1e-9)), None)
        columns = [self.layout.continuous.index(name) for name in variables]
        times = self.times[kept]
        means = self.paths.expected[0][:, kept][..., columns]
        mixture = mixture_quantiles(means, self.paths.noise_sd[:, None, columns], QUANTILES)  # (Q, T, len(variables))
        names = {q: "median" if q == 0.5 else f"q{int(q * 100):02d}" for q in QUANTILES}
        rows = []
        for j, name in enumerate(variables):
            transform = self.config.variable(name).transform
            qs = mixture[..., j] if scale == Scale.MODEL else transforms.inverse(mixture[..., j], transform)  # (Q, T)
            for i, t in enumerate(times):
                rows.append({"time": float(t), "variable": name, **{names[q]: float(qs[k, i]) for k, q in enumerate(QUANTILES)}})
        frame = pd.DataFrame(rows, columns=["time", "variable", "median", *(names[q] for q in QUANTILES if q != 0.5)])
        frame.insert(0, "subject_id", self.subject_id)
        return frame

    def survival_summary(self) -> pd.DataFrame:
        """Per event kind and time: probability of being free of it (given free at ``until``), with 90% interval."""
        if ("survival",) not in self._summaries:
            self._summaries[("survival",)] = self._survival_summary()
        return self._summaries[("survival",)].copy()

    def _survival_summary(self) -> pd.DataFrame:
        rows = []
        for k, kind in enumerate(self.layout.events):
            surv = self.paths.survival[0, :, :, k]  # (S, T)
            inc = self.paths.incidence[0, :, :, k]
            low, high = np.quantile(surv, [0.05, 0.95], axis=0)  # (T,) each: the same numbers as time by time, at once
            for i, t in enumerate(self.times):
                rows.append(
                    {
                        "subject_id": self.subject_id,
                        "time": float(t),
                        "event": kind,
                        "survival": float(surv[:, i].mean()),
                        "survival_q05": float(low[i]),
                        "survival_q95": float(high[i]),
                        "incidence": float(inc[:, i].mean()),
                    }
                )
        # its columns also without events (a config without any): callers select by them
        return pd.DataFrame(rows, columns=list(_SURVIVAL_COLUMNS))


class VirtualPatientModel:
    """A trained world model (one or an ensemble of members) with its dataset config and scalers.

    ``networks`` is one :class:`~vpatient.model.latent_ode.LatentODE` or the list of an ensemble's
    members; :attr:`network` is the first.
    """

    def __init__(
        self,
        networks: LatentODE | Sequence[LatentODE],
        config: DatasetConfig,
        scalers: Scalers,
        history: TrainingHistory | None = None,
        train_settings: TrainSettings | None = None,
        data_source: str | None = None,
        member_histories: Sequence[TrainingHistory] | None = None,
    ):
        members = [networks] if isinstance(networks, LatentODE) else list(networks)
        if not members:
            raise VPatientError("a model needs at least one member")
        self.members: list[LatentODE] = [m.eval() for m in members]
        self.data_source = data_source  # what it was trained on ("pbc2", a path), for finding patients
        # The most posterior refinement steps per forecast (0: amortised posterior only); refinement
        # stops earlier once the patient's ELBO has converged.
        self.refine_steps = 60
        self.refine_tolerance = 0.05  # converged: 5 steps gain less than this fraction of the ELBO gained so far
        self.refine_steps_used = 0  # refinement steps the latest inference took (the members refine together)
        # Refined posteriors of recent histories: a what-if edited plan by plan re-infers nothing.
        self._posteriors: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = OrderedDict()
        self.config = config
        self.scalers = scalers
        self.layout = layout_from_config(config)
        self.history = history if history is not None else (member_histories[0] if member_histories else None)
        self.member_histories = list(member_histories) if member_histories else ([history] if history else [])
        self.train_settings = train_settings
        self.trained_with = __version__  # the vpatient version that trained it; a loaded checkpoint's says its own

    @property
    def network(self) -> LatentODE:
        """The first member: its settings and layout are every member's. Code that draws from the model uses all members."""
        return self.members[0]

    @property
    def n_members(self) -> int:
        return len(self.members)

    def member(self, k: int) -> VirtualPatientModel:
        """Member ``k`` alone, as a single model sharing this model's config and scalers."""
        history = self.member_histories[k] if k < len(self.member_histories) else None
        return VirtualPatientModel(self.members[k], self.config, self.scalers, history, self.train_settings, self.data_source)

    def uncertainty_note(self, trial: bool = False) -> str:
        """What this model's intervals include, in plain words, for reports and the dashboard.

        ``trial=True`` describes the intervals of an in-silico trial's effect (hazard
        ratio, RMST difference) rather than those of one patient's forecast or what-if.
        """
        if trial:
            common = "Intervals of the trial's effects include the sampling error of a trial of this many patients"
            if self.n_members > 1:
                return (
                    f"{common} and the model's own uncertainty: each of its {self.n_members} members (trained on different "
                    "bootstrap resamples of the training patients) runs its share of the trial, and the members' "
                    "estimates are pooled by Rubin's rules, so their disagreement widens the interval."
                )
            return (
                f"{common} only. This is a single trained model: what other training data would have taught it is not "
                "included, so an effect can look significant when the data cannot support it."
            )
        parts = "the patient's unknown disease state (posterior draws) and, for predicted measurements, measurement noise"
        if self.n_members > 1:
            return (
                f"Intervals include {parts}, and the model's own uncertainty: the {self.n_members} members of its ensemble, "
                "each trained on a different bootstrap resample of the training patients, share the draws, so where they "
                "disagree the interval widens."
            )
        return (
            f"Intervals include {parts} only. This is a single trained model: its own uncertainty (what other "
            "training data would have taught it) is not included, so treatment effects may look more certain than they are."
        )

    @property
    def time_unit(self) -> str:
        """The unit of every time this model takes and returns (its config's ``time_unit``), e.g. ``"years"``."""
        return self.config.time_unit.value

    @property
    def default_horizon(self) -> float:
        """How far forecasts and what-ifs look ahead unless told: the config's ``horizon``, else the training data's median follow-up.

        A checkpoint from before either was recorded keeps the old default, 5.
        """
        if self.config.horizon is not None:
            return self.config.horizon
        return self.scalers.median_followup if self.scalers.median_followup is not None else 5.0

    @property
    def grid_step(self) -> float:
        """Resolution of forecast, what-if and simulated outputs, in the data's unit: a month, or a
        quarter of the typical visit gap (the time scale) where visits are closer than four months."""
        return min(self.config.time_unit.month, self.scalers.time_scale / 4)

    def check_work(self, start: float, span: float, start_option: str, span_option: str, step: float | None = None) -> None:
        """Refuse a forecast from ``start`` over ``span`` that runs past the horizon limit or needs too many grid points.

        The limits are :mod:`vpatient.limits`' (horizon: a multiple of the training data's median
        follow-up); the message names the option at fault (``start_option`` or ``span_option``).
        """
        followup = self.scalers.median_followup or self.default_horizon
        step = self.grid_step if step is None else step
        if not (math.isfinite(step) and step > 0):
            raise VPatientError(f"step = {step!r}: must be > 0 {self.time_unit}")
        for option, value, end in ((start_option, start, start), (span_option, span, start + span)):
            limits.check_time_span(option, value, end, followup, self.time_unit)
            grid = f"the grid to {option} = {limits.number(value)} {self.time_unit} (a point every {step:.3g} {self.time_unit})"
            limits.check_at_most(limits.GRID_POINTS, grid, end / step)

    def followup_warning(self, end: float, cohort: Cohort | None = None) -> str | None:
        """The warning a forecast that runs to time ``end`` needs against the training data's follow-up, or None.

        ``cohort`` is the training data (default: :attr:`data_source`, when it can be loaded).
        Past the longest follow-up the dynamics are extrapolated; past the 90th percentile few
        patients inform them. Patient reports and the command line show the same words.
        """
        if cohort is None and self.data_source:
            try:
                cohort = self.patients()
            except (VPatientError, OSError) as exc:
                log.warning("training data %s could not be loaded to check the horizon: %s", self.data_source, exc)
        follow = [r.end_of_followup for r in cohort.records] if cohort is not None else []
        if not follow:
            return None
        longest, q90, unit = float(np.max(follow)), float(np.quantile(follow, 0.9)), self.time_unit
        if end > longest + 1e-9:
            return (
                f"The forecast runs to t = {end:.1f} {unit}, beyond the longest training "
                f"follow-up ({longest:.1f} {unit}): the dynamics there are extrapolated."
            )
        if end > q90:
            return (
                f"The forecast runs to t = {end:.1f} {unit}, past the follow-up of 90% "
                f"of training patients ({q90:.1f} {unit}): few patients inform this part."
            )
        return None

    @property
    def dataset_name(self) -> str:
        """The dataset the model was trained on (its data source, else its config's name): where its patients are."""
        return self.data_source or self.config.name

    def patients(self, data: str | Path | None = None, config: str | Path | None = None, seed: int = 0) -> Cohort:
        """The cohort of the patients to run this model on: ``data`` (default: :attr:`dataset_name`).

        A MEDS path is read with ``config``, else the config stored with it, else the
        model's own. Its time unit must be the model's: a record in days read by a model
        of years would be a silently wrong answer, so it is refused.
        """
        from vpatient.datasets import load_dataset

        cohort = load_dataset(data or self.dataset_name, config, seed=seed, default_config=self.config)
        if cohort.config.time_unit != self.config.time_unit:
            raise VPatientError(
                f"{cohort.name}: its times are in {cohort.config.time_unit.value} but the model's are in {self.time_unit}; "
                "use a config with the model's time_unit"
            )
        return cohort

    # -- training ----------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        records: Sequence[PatientRecord],
        config: DatasetConfig,
        settings: TrainSettings | None = None,
        model_settings: ModelSettings | None = None,
        progress: bool = True,
        workers: int | None = None,
        rank: Rank = SINGLE_PROCESS,
    ) -> VirtualPatientModel:
        """Train on ``records``: one model, or ``settings.members`` members on bootstrap resamples.

        ``workers`` members train at once in separate processes (default: one per core).
        ``rank``: this process's place in data-parallel training (its process group formed:
        :mod:`vpatient.train.distributed`), where every member is trained by all the ranks.
        """
        settings = settings or TrainSettings()
        if rank.world > 1:
            return cls._fit_data_parallel(records, config, settings, model_settings, progress, workers, rank)
        if settings.members > 1:
            from vpatient.ensemble import fit_ensemble

            members, scalers, histories = fit_ensemble(records, config, settings, model_settings, workers, progress)
            return cls(members, config, scalers, None, settings, member_histories=histories)
        network, scalers, history = fit_latent_ode(records, config, settings, model_settings, progress)
        return cls(network, config, scalers, history, settings)

    @classmethod
    def _fit_data_parallel(
        cls,
        source: Sequence[PatientRecord] | ShardCache,
        config: DatasetConfig,
        settings: TrainSettings,
        model_settings: ModelSettings | None,
        progress: bool,
        workers: int | None,
        rank: Rank,
        buffer_patients: int | None = None,
    ) -> VirtualPatientModel:
        """:meth:`fit` or :meth:`fit_streamed` by the ranks of a process group: every member by all of them."""
        from vpatient.ensemble import fit_data_parallel

        if workers is not None:
            raise VPatientError("workers train members side by side in one process each; with ranks, leave workers out")
        networks, scalers, histories = fit_data_parallel(
            source, config, settings, model_settings, rank, progress, buffer_patients
        )
        if settings.members == 1:
            return cls(networks[0], config, scalers, histories[0], settings)
        return cls(networks, config, scalers, None, settings, member_histories=histories)

    @classmethod
    def fit_streamed(
        cls,
        cache: ShardCache,
        config: DatasetConfig,
        settings: TrainSettings | None = None,
        model_settings: ModelSettings | None = None,
        progress: bool = True,
        workers: int | None = None,
        buffer_patients: int = DEFAULT_BUFFER_PATIENTS,
        *,
        rank: Rank = SINGLE_PROCESS,
    ) -> VirtualPatientModel:
        """:meth:`fit` on a MEDS directory parsed into a shard cache, read ``buffer_patients`` at a time (streamed training).

        Ensemble members read the cache themselves (:mod:`vpatient.train.stream`); ``rank``:
        this process's place in data-parallel training of one model (it reads its own shards).
        """
        settings = settings or TrainSettings()
        if rank.world > 1:
            return cls._fit_data_parallel(cache, config, settings, model_settings, progress, workers, rank, buffer_patients)
        if settings.members > 1:
            from vpatient.ensemble import fit_ensemble

            members, scalers, histories = fit_ensemble(
                cache, config, settings, model_settings, workers, progress, buffer_patients=buffer_patients
            )
            return cls(members, config, scalers, None, settings, member_histories=histories)
        network, scalers, history = fit_network(
            cache, config, settings, model_settings, progress, buffer_patients=buffer_patients, rank=rank
        )
        return cls(network, config, scalers, history, settings)

    # -- checkpoints -------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the checkpoint directory: weights of every member, config, scalers, settings, metrics.

        Member 0's weights are ``weights.pt`` (a single model is exactly that); member k's
        are ``weights-k.pt``. ``model.json`` lists them with their SHA-256, so a damaged
        member is refused by name, and ``manifest.json`` (written last) records the SHA-256
        of every file :meth:`load` reads, so a changed or missing file is refused by name.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        files = []
        for k, network in enumerate(self.members):
            name = _member_file(k)
            torch.save(network.state_dict(), out / name)
            files.append({"file": name, "sha256": sha256_of(out / name)})
        self.config.save(out / "config.json")
        meta = {
            "vpatient_version": __version__,
            "model_settings": self.network.settings.to_dict(),
            "train_settings": self.train_settings.to_dict() if self.train_settings else None,
            "data_source": self.data_source,
            "members": files,
            "manifest": MANIFEST_FILE,  # a checkpoint that names one and lacks it was not completely saved or copied
        }
        (out / "scalers.json").write_text(json.dumps(self.scalers.to_dict()) + "\n")
        if self.history is not None:
            (out / "training.json").write_text(json.dumps(self.history.to_dict(), indent=2) + "\n")
            _plot_training_curve(self.history, out / "training_curve.png")
        if len(self.member_histories) > 1:
            (out / "members.json").write_text(json.dumps([h.to_dict() for h in self.member_histories], indent=2) + "\n")
        (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
        read = [f["file"] for f in files] + [*_FILES, *(n for n in _OPTIONAL_FILES if (out / n).is_file())]
        write_manifest(out, read)  # last: its presence marks a complete save
        return out

    @classmethod
    def load(cls, directory: str | Path) -> VirtualPatientModel:
        """Read a checkpoint directory; refuses anything that is not plain tensors and JSON."""
        path = Path(directory)
        if not path.is_dir():
            raise CheckpointError(f"no model directory at {path}; train one with `vpatient train --out {path}`")
        missing = [name for name in _FILES if not (path / name).is_file()]
        if missing:
            raise CheckpointError(f"{path} is not a complete vpatient checkpoint: missing {', '.join(missing)}")
        checked = verify_manifest(path)
        meta = _read_part(path, "model.json", _Meta.parse)
        scalers = _read_part(path, "scalers.json", Scalers.from_dict)
        history = (
            _read_part(path, "training.json", lambda h: TrainingHistory(**h)) if (path / "training.json").is_file() else None
        )
        member_histories = (
            _read_part(path, "members.json", lambda hs: [TrainingHistory(**h) for h in hs])
            if (path / "members.json").is_file()
            else None
        )
        if not checked and meta.manifest:
            raise CheckpointError(f"{path} is not a complete vpatient checkpoint: {meta.manifest} is missing")
        if not checked:
            log.info("%s was saved without a manifest (an older checkpoint): its files are not checked against digests", path)
        config = DatasetConfig.load(path / "config.json")
        layout = layout_from_config(config)
        widths = (len(scalers.continuous_mean), len(scalers.imaging_mean), len(scalers.static_mean))
        if widths != (len(layout.continuous), sum(d for _, d in layout.imaging), len(layout.static)):
            raise CheckpointError(f"{path / 'scalers.json'}: does not match the variables of {path / 'config.json'}")
        members = [
            _load_member(path, name, digest, k, len(meta.files), layout, meta.settings, scalers.time_scale)
            for k, (name, digest) in enumerate(meta.files)
        ]
        model = cls(members, config, scalers, history, meta.train_settings, meta.data_source, member_histories)
        model.trained_with = meta.vpatient_version
        return model

    # -- simulation ------------------------------------------------------------

    @torch.no_grad()
    def simulate(
        self,
        histories: Sequence[PatientRecord],
        times: Sequence[np.ndarray],
        n_samples: int = 200,
        seed: int = 0,
        plans: Sequence[TreatmentPlan | None] | None = None,
        chunk_size: int = 32,
        refine_steps: int | None = None,
    ) -> SimulatedPaths:
        """Posterior sample paths of each history (cut at its end of follow-up) at its own times.

        ``plans`` (one per history, or None) replace the treatments from the cut-off on;
        the same seed gives the same posterior draws whatever the plan (common random
        numbers), so differences between plans are the treatment's effect, not noise.
        """
        per_history = list(plans) if plans is not None else None
        return self._simulate([per_history], histories, times, n_samples, seed, chunk_size, refine_steps)[0]

    @torch.no_grad()
    def simulate_plans(
        self,
        histories: Sequence[PatientRecord],
        times: Sequence[np.ndarray],
        plans: Sequence[TreatmentPlan | None],
        n_samples: int = 200,
        seed: int = 0,
        chunk_size: int = 32,
        refine_steps: int | None = None,
    ) -> list[SimulatedPaths]:
        """Sample paths of every history under each plan (None: as recorded), one result per plan.

        The posterior is inferred once; every plan rolls out the same draws with the same
        observation noise (common random numbers), so two identical plans agree exactly.
        """
        if not plans:
            raise VPatientError("no plans given: name at least one treatment plan to simulate")
        alternatives = [[plan] * len(histories) for plan in plans]
        return self._simulate(alternatives, histories, times, n_samples, seed, chunk_size, refine_steps)

    def event_risk(
        self,
        histories: Sequence[PatientRecord],
        times: Sequence[np.ndarray],
        event: str,
        n_samples: int = 200,
        seed: int = 0,
        chunk_size: int = 32,
    ) -> np.ndarray:
        """P(``event`` by each of a history's ``times`` | event-free at its end of follow-up): (B, T), padded as in simulate.

        The mean over posterior sample paths of one minus the event's survival (other
        event kinds censor), as :meth:`simulate` draws them with the same arguments.
        """
        if event not in self.layout.events:
            known = ", ".join(self.layout.events) or "none"
            raise VPatientError(f"the model does not predict event {event!r}; the events it predicts: {known}")
        paths = self.simulate(histories, times, n_samples=n_samples, seed=seed, chunk_size=chunk_size)
        return 1.0 - paths.survival[..., self.layout.events.index(event)].mean(axis=1)

    def _simulate(self, alternatives, histories, times, n_samples, seed, chunk_size, refine_steps) -> list[SimulatedPaths]:
        if not histories:
            raise VPatientError("nothing to simulate: no patient records given")
        if n_samples < self.n_members:
            raise VPatientError(
                f"n_samples = {n_samples!r}: at least one posterior sample path per ensemble member ({self.n_members}) is needed"
            )
        limits.check_at_most(limits.SAMPLES, "n_samples", n_samples)
        if len(times) != len(histories):
            raise VPatientError(f"{len(histories)} histories but {len(times)} time grids: give one grid per history")
        limits.check_at_most(limits.GRID_POINTS, "the time points of one patient's grid", max(len(t) for t in times))
        for per_history in alternatives:
            if per_history is not None and len(per_history) != len(histories):
                raise VPatientError(f"{len(histories)} histories but {len(per_history)} plans: give one plan per history")
        refine_steps = self.refine_steps if refine_steps is None else refine_steps
        parts: list[list[SimulatedPaths]] = []
        for start in range(0, len(histories), chunk_size):
            stop = start + chunk_size
            chunk_alternatives = [p[start:stop] if p is not None else None for p in alternatives]
            parts.append(
                self._simulate_chunk(
                    histories[start:stop], times[start:stop], n_samples, seed + start, chunk_alternatives, refine_steps
                )
            )
        return [_concat_paths([part[a] for part in parts]) for a in range(len(alternatives))]

    def _simulate_chunk(self, histories, times, n_samples, seed, alternatives, refine_steps) -> list[SimulatedPaths]:
        """Sample paths of a chunk of histories under each alternative set of plans.

        Every member infers its posterior from the same generator state, and the standard
        normal draws of z0 and of the measurement noise are drawn once for all samples;
        member k turns its block of them into its own samples. An ensemble of identical
        members therefore gives the single member's answer.
        """
        batch = make_batch(histories, self.config, self.scalers)
        cutoff = batch.followup_end
        generator = torch.Generator().manual_seed(seed)
        n, s = len(histories), n_samples
        blocks = member_slices(s, self.n_members)
        posteriors = self.member_posteriors(histories, batch, cutoff, refine_steps, seed, generator)
        eps = torch.randn((n, s, posteriors[0][0].shape[-1]), generator=generator)
        t_max = max(float(np.max(t)) if len(t) else 0.0 for t in times)
        t_max = max(t_max, float(cutoff.max()))
        draws = []  # per member: (z0 (n*s_k, P), repeated batch, factual solution or None, resampled rows)
        ess = torch.zeros(n)
        for network, (mean, var), block in zip(self.members, posteriors, blocks, strict=True):
            s_k = block.stop - block.start
            z0 = (mean.unsqueeze(1) + var.sqrt().unsqueeze(1) * eps[:, block]).reshape(n * s_k, -1)
            rep = batch.repeat(s_k)
            if refine_steps > 0:  # the refined posterior already weighed the event history up to the cut-off
                draws.append((z0, rep, None, None))
                ess += s_k
                continue
            # weight the amortised draws by the event history up to the cut-off, then resample
            factual = network.rollout(z0, rep, until=t_max)
            log_w = network.event_log_likelihood(factual, rep.event_time, rep.event_observed).reshape(n, s_k)
            keep, member_ess = _resample(log_w, generator)  # (n, s_k) indices into the draws
            flat = (torch.arange(n).unsqueeze(1) * s_k + keep).reshape(-1)
            draws.append((z0[flat], rep, factual, flat))
            ess += member_ess
        noise_state = generator.get_state()  # every plan decodes with the same observation noise
        out = []
        for plans in alternatives:
            planned = plans is not None and any(p is not None for p in plans)
            if planned:
                exposures = [
                    exposures_under_plan(h.treatments, p, h.end_of_followup) if p is not None else h.treatments
                    for h, p in zip(histories, plans, strict=True)
                ]
                dose_times, doses = dose_tensors(exposures, self.layout.treatments)
            decoded = []
            for network, (z0, rep, factual, flat), block in zip(self.members, draws, blocks, strict=True):
                s_k = block.stop - block.start
                if planned:
                    controlled = rep.with_doses(dose_times.repeat_interleave(s_k, 0), doses.repeat_interleave(s_k, 0))
                    solution = network.rollout(z0, controlled, until=t_max)
                elif factual is None:
                    solution = network.rollout(z0, rep, until=t_max)
                else:  # the factual solve already holds these paths: keep the resampled rows
                    solution = _select_solution(factual, flat)
                decoded.append(self._decode(network, times, solution, network.offsets(z0), cutoff, n, s_k))
                _check_finite(decoded[-1], histories)
            generator.set_state(noise_state)
            out.append(self._combine(histories, decoded, blocks, cutoff, generator, ess))
        return out

    def member_posteriors(
        self,
        histories: Sequence[PatientRecord],
        batch: PatientBatch,
        cutoff: torch.Tensor,
        refine_steps: int,
        seed: int,
        generator: torch.Generator,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every member's q(z0) (mean, variance) of each history, refined by at most ``refine_steps`` steps.

        The members are refined together (one vectorised ELBO over their weights) with the
        same draws, so identical members infer identically, as a single model would. The
        steps taken are left in :attr:`refine_steps_used`; the result is cached with the
        generator's state after it, so a hit gives the same numbers.
        """
        amortised = [network.posterior(batch, cutoff) for network in self.members]
        if refine_steps == 0:
            self.refine_steps_used = 0
            return amortised
        key = (tuple(h.model_dump_json() for h in histories), refine_steps, self.refine_tolerance, seed)
        if key not in self._posteriors:
            means, variances = (torch.stack(part) for part in zip(*amortised, strict=True))
            means, variances, steps = self.network.refine_posterior(
                batch, means, variances, refine_steps, generator=generator, tolerance=self.refine_tolerance, members=self.members
            )
            self._posteriors[key] = (means, variances, generator.get_state(), steps)
            if len(self._posteriors) > _POSTERIOR_CACHE:
                self._posteriors.popitem(last=False)
        self._posteriors.move_to_end(key)
        means, variances, state, steps = self._posteriors[key]
        generator.set_state(state)
        self.refine_steps_used = steps
        return list(zip(means, variances, strict=True))

    def _decode(self, network, times, solution, offsets, cutoff, n, s) -> dict[str, torch.Tensor]:
        """One member's noise-free decodings of its samples, each (n, s, T, ...), standardised labs."""
        t_len = max(len(t) for t in times)
        grid = np.zeros((n, t_len))
        for b, t in enumerate(times):
            grid[b, : len(t)] = t
            grid[b, len(t) :] = t[-1] if len(t) else 0.0
        t_rep = torch.as_tensor(grid, dtype=torch.float32).repeat_interleave(s, 0)
        state = solution.at(t_rep)  # (n*s, T, D)
        latent = network.settings.latent_dim
        n_events = len(self.layout.events)
        z = state[..., :latent]
        decoder = network.decoder
        empty = z.new_zeros(*z.shape[:-1], 0)
        expected = decoder.continuous_mean(z, offsets, t_rep) if decoder.continuous is not None else empty
        noise_sd = decoder.continuous_sd() if decoder.continuous is not None else z.new_zeros(0)
        binary = torch.sigmoid(decoder.binary_logits(z)) if decoder.binary is not None else empty
        if decoder.imaging is not None:
            img_mean = torch.as_tensor(self.scalers.imaging_mean, dtype=torch.float32)
            img_std = torch.as_tensor(self.scalers.imaging_std, dtype=torch.float32)
            imaging = decoder.imaging_mean(z) * img_std + img_mean
        else:
            imaging = empty
        cumhaz = state[..., latent : latent + n_events]
        incidence = state[..., latent + n_events :]
        at_cut = solution.at(cutoff.repeat_interleave(s).unsqueeze(1))  # (n*s, 1, D)
        cumhaz_cut = at_cut[..., latent : latent + n_events]
        all_cut = cumhaz_cut.sum(dim=-1, keepdim=True)
        survival = torch.exp(-(cumhaz - cumhaz_cut).clamp(min=0))
        incidence = (incidence - at_cut[..., latent + n_events :]).clamp(min=0) * torch.exp(all_cut)
        parts = {"expected": expected, "binary": binary, "imaging": imaging, "survival": survival, "incidence": incidence}
        out = {name: x.reshape(n, s, *x.shape[1:]) for name, x in parts.items()}
        out["grid"] = torch.as_tensor(grid)
        out["noise_sd"] = noise_sd.detach().expand(s, -1)  # (s, Dc)
        return out

    def _combine(self, histories, decoded, blocks, cutoff, generator, ess) -> SimulatedPaths:
        """Pool the members' samples (in block order) and add the measurement noise, drawn once for all."""

        def pooled(name: str) -> torch.Tensor:
            parts = [d[name] for d in decoded]
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

        expected = pooled("expected")  # (n, S, T, Dc), standardised
        noise_sd = torch.cat([d["noise_sd"] for d in decoded]) if len(decoded) > 1 else decoded[0]["noise_sd"]
        mean_c = torch.as_tensor(self.scalers.continuous_mean, dtype=torch.float32)
        std_c = torch.as_tensor(self.scalers.continuous_std, dtype=torch.float32)
        flat = expected.reshape(-1, *expected.shape[2:])  # (n*S, T, Dc): the noise is drawn in this layout
        noise = torch.randn(flat.shape, generator=generator).reshape(expected.shape) * noise_sd[None, :, None, :]
        predictive = (expected + noise) * std_c + mean_c
        expected = expected * std_c + mean_c
        member = np.concatenate([np.full(b.stop - b.start, k) for k, b in enumerate(blocks)])

        def array(x: torch.Tensor) -> np.ndarray:
            return x.numpy().astype(np.float64)

        return SimulatedPaths(
            subject_ids=[h.subject_id for h in histories],
            times=decoded[0]["grid"].numpy(),
            predictive=array(predictive),
            expected=array(expected),
            binary_probability=array(pooled("binary")),
            imaging=array(pooled("imaging")),
            survival=array(pooled("survival")),
            incidence=array(pooled("incidence")),
            cutoff=array(cutoff),
            effective_sample_size=array(ess),
            noise_sd=array(noise_sd * std_c),
            member=member,
        )

    # -- forecasting -------------------------------------------------------------

    def forecast(
        self,
        record: PatientRecord,
        until: float | None = None,
        horizon: float | None = None,
        n_samples: int = 200,
        seed: int = 0,
        step: float | None = None,
        plan: TreatmentPlan | None = None,
    ) -> Forecast:
        """Forecast one patient from what is known at ``until`` (default: its last visit).

        Returns sample paths on a grid from 0 to until + horizon, every ``step``: the
        fitted past and the forecast, with predictive quantiles and survival curves. Times
        are in the data's unit; ``horizon`` defaults to :attr:`default_horizon` and ``step``
        to :attr:`grid_step`.
        """
        if until is None:
            until = max(record.visit_times(), default=0.0)
        horizon = self.default_horizon if horizon is None else horizon
        step = self.grid_step if step is None else step
        if not math.isfinite(until) or until < 0:
            raise VPatientError(f"subject {record.subject_id}: until = {until!r}: must be a time >= 0")
        if not (math.isfinite(horizon) and horizon > 0):
            raise VPatientError(f"horizon = {horizon!r}: must be > 0 {self.time_unit}")
        if not (math.isfinite(step) and step > 0):
            raise VPatientError(f"step = {step!r}: must be > 0 {self.time_unit}")
        self.check_work(until, horizon, "until", "horizon", step)
        history = truncate_record(record, until)
        # The past on a grid from 0, the future on a grid from ``until``: "k steps ahead" is a grid point.
        grid = np.unique(
            np.concatenate([np.arange(0.0, until, step), until + np.arange(0.0, horizon + 1e-9, step), [until + horizon]])
        )
        paths = self.simulate([history], [grid], n_samples=n_samples, seed=seed, plans=[plan] if plan else None)
        return Forecast(record.subject_id, float(until), self.config, self.layout, paths)


def mixture_quantiles(means: np.ndarray, sd: np.ndarray, levels: Sequence[float], iterations: int = 40) -> np.ndarray:
    """Quantiles of an equal-weight Gaussian mixture along axis 0: means (S, ...), sd broadcast to means (per component).

    The mixture CDF is monotone, so each quantile is found by bisection between the
    extreme component quantiles; returns (len(levels), ...).
    """
    from scipy.special import ndtr, ndtri

    sd = np.broadcast_to(np.maximum(sd, 1e-12), means.shape)
    out = []
    for q in levels:
        z = float(ndtri(q))
        lo = (means + z * sd).min(axis=0) - 1e-9
        hi = (means + z * sd).max(axis=0) + 1e-9
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            below = ndtr((mid - means) / sd).mean(axis=0) < q
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        out.append(0.5 * (lo + hi))
    return np.stack(out)


def member_slices(n_samples: int, n_members: int) -> list[slice]:
    """The contiguous block of sample indices each member draws: as equal as can be, earlier members one more."""
    sizes = [n_samples // n_members + (k < n_samples % n_members) for k in range(n_members)]
    edges = [0, *np.cumsum(sizes).tolist()]
    return [slice(a, b) for a, b in itertools.pairwise(edges)]


def _member_file(k: int) -> str:
    return "weights.pt" if k == 0 else f"weights-{k}.pt"


def _read_part(path: Path, name: str, parse: Callable[[Any], T]) -> T:
    """``parse`` of the JSON file ``name`` of the checkpoint at ``path``; any problem is a CheckpointError naming the file."""
    from vpatient.inputs import read_json_file

    file = path / name
    try:
        return parse(read_json_file(file, "checkpoint"))
    except CheckpointError:
        raise
    except VPatientError as exc:  # the reader's and the settings' own messages name the file
        raise CheckpointError(str(exc) if str(file) in str(exc) else f"{file}: {exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{file}: unreadable checkpoint file ({type(exc).__name__}: {exc})") from None


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError(f"a JSON object is expected, not {type(data).__name__}")
    return data


@dataclass(frozen=True)
class _Meta:
    """What ``model.json`` says: the settings, the member weight files and their digests, the manifest's name."""

    settings: ModelSettings
    train_settings: TrainSettings | None
    files: list[tuple[str, str | None]]  # (weights file, its SHA-256 or None) per member
    data_source: str | None
    manifest: str | None
    vpatient_version: str | None = None  # None: a checkpoint saved before the version was recorded

    @classmethod
    def parse(cls, data: Any) -> _Meta:
        """Checked as a settings file is checked (types and ranges); a checkpoint from before ensembles has one member."""
        from vpatient.train import SettingsFile, build_settings

        meta = _object(data)
        train_values = meta.get("train_settings")
        values = SettingsFile.check(_object(meta["model_settings"]) | _object(train_values or {}), "settings", parsed_json=True)
        train, model = build_settings(values)
        members = meta.get("members") or [{"file": "weights.pt"}]
        if not isinstance(members, list) or not all(isinstance(m, dict) and isinstance(m.get("file"), str) for m in members):
            raise TypeError("members must list objects with a file name")
        files = [(m["file"], m.get("sha256")) for m in members]
        if not all(d is None or isinstance(d, str) for _, d in files):
            raise TypeError("a member's sha256 must be a string")
        strings = [meta.get(k) for k in ("data_source", "manifest", "vpatient_version")]
        if not all(v is None or isinstance(v, str) for v in strings):
            raise TypeError("data_source, manifest and vpatient_version must be strings")
        return cls(model, train if train_values else None, files, *strings)


def _load_member(
    path: Path,
    name: str,
    digest: str | None,
    k: int,
    n_members: int,
    layout: FeatureLayout,
    settings: ModelSettings,
    time_scale: float,
) -> LatentODE:
    """Member k's weights, checked against the digest recorded at saving; every refusal names the member."""
    which = f"member {k} of {n_members} ({name})" if n_members > 1 else name
    file = path / name
    if Path(name).name != name or not file.is_file():
        raise CheckpointError(f"{path} is not a complete vpatient checkpoint: {which} is missing")
    if digest is not None and sha256_of(file) != digest:
        raise CheckpointError(f"{path}: {which} is corrupted (its SHA-256 differs from the one recorded when it was saved)")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses pickled objects; a damaged file fails to parse
        raise CheckpointError(
            f"{path}: {which} is not a plain tensor file vpatient can load safely ({type(exc).__name__}); "
            "vpatient never unpickles arbitrary objects"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: {which} does not hold a dictionary of tensors")
    network = LatentODE(layout, settings, time_scale)
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: {which}: weights do not fit the model described by its config ({str(exc).splitlines()[0]})"
        ) from None
    return network


def _check_finite(decoded: dict[str, torch.Tensor], histories: Sequence[PatientRecord]) -> None:
    """Refuse a rollout whose outputs are not finite (the dynamics blew up), naming the first patient it happened to."""
    for name in ("expected", "binary", "imaging", "survival", "incidence"):
        values = decoded[name]  # (n, s, T, ...)
        if values.numel() == 0:
            continue
        finite = torch.isfinite(values.reshape(values.shape[0], -1)).all(dim=1)
        if not bool(finite.all()):
            subject = histories[int((~finite).nonzero()[0])].subject_id
            raise NumericalError(
                f"subject {subject}: the simulation produced non-finite values ({name}): the model's dynamics blew up "
                "for this patient; try a shorter horizon, check the record's values, or retrain the model"
            )


def _resample(log_w: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Systematic resampling of each row's draws by their weights; also the effective sample size."""
    w = torch.softmax(log_w, dim=1)  # (n, s)
    ess = 1.0 / (w**2).sum(dim=1)
    n, s = w.shape
    u = (torch.rand((n, 1), generator=generator) + torch.arange(s).unsqueeze(0)) / s
    cdf = torch.cumsum(w, dim=1)
    cdf[:, -1] = 1.0
    return torch.searchsorted(cdf, u).clamp(max=s - 1), ess


def _select_solution(solution: DenseSolution, rows: torch.Tensor) -> DenseSolution:
    return DenseSolution(
        solution.grid,
        solution.states[:, rows],
        solution.slope_from[:, rows],
        solution.slope_to[:, rows],
        solution.latent_dim,
        solution.n_events,
    )


def _concat_paths(parts: list[SimulatedPaths]) -> SimulatedPaths:
    if len(parts) == 1:
        return parts[0]
    t_len = max(p.times.shape[1] for p in parts)

    def pad(x: np.ndarray, axis: int) -> np.ndarray:
        extra = t_len - x.shape[axis]
        if extra == 0:
            return x
        edge = np.take(x, [-1], axis=axis)
        return np.concatenate([x, np.repeat(edge, extra, axis=axis)], axis=axis)

    return SimulatedPaths(
        subject_ids=[sid for p in parts for sid in p.subject_ids],
        times=np.concatenate([pad(p.times, 1) for p in parts]),
        predictive=np.concatenate([pad(p.predictive, 2) for p in parts]),
        expected=np.concatenate([pad(p.expected, 2) for p in parts]),
        binary_probability=np.concatenate([pad(p.binary_probability, 2) for p in parts]),
        imaging=np.concatenate([pad(p.imaging, 2) for p in parts]),
        survival=np.concatenate([pad(p.survival, 2) for p in parts]),
        incidence=np.concatenate([pad(p.incidence, 2) for p in parts]),
        cutoff=np.concatenate([p.cutoff for p in parts]),
        effective_sample_size=np.concatenate([p.effective_sample_size for p in parts]),
        noise_sd=parts[0].noise_sd,
        member=parts[0].member,
    )


def _plot_training_curve(history: TrainingHistory, path: Path) -> None:
    # A bare Figure draws without pyplot, so no backend is selected behind the caller's back.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(history.train_loss, label="training (random cut-offs)")
    ax.plot(history.validation_loss, label="validation (forecast cut-off)")
    ax.axvline(history.best_epoch, color="grey", ls="--", lw=1, label=f"best epoch {history.best_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative ELBO per patient")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
