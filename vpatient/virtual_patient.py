"""VirtualPatientModel: the trained world model as users meet it.

``VirtualPatientModel.fit(records, config)`` trains; ``.save(dir)`` / ``.load(dir)``
write and read a checkpoint directory (weights read with ``weights_only=True``, never
unpickled); ``.forecast(record, until=s, horizon=h)`` gives sample paths, quantiles and
survival curves of one patient as known at time s.

Forecasts condition on what is known at s: the posterior over the initial state comes
from the experts of visits up to s, and its samples are importance-weighted by the
likelihood of the patient's event history up to s (alive and event-free at s is
evidence about the state), then resampled, so every sample path counts equally.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vpatient import __version__, transforms
from vpatient.data.batching import FeatureLayout, Scalers, dose_tensors, make_batch
from vpatient.data.timeline import truncate_record
from vpatient.errors import VPatientError
from vpatient.model.dynamics import DenseSolution
from vpatient.model.vpm import ModelSettings, WorldModel
from vpatient.plans import exposures_under_plan
from vpatient.schemas import DatasetConfig, PatientRecord, TreatmentPlan
from vpatient.train import TrainingHistory, TrainSettings, fit_world_model

__all__ = ["CheckpointError", "Forecast", "SimulatedPaths", "VirtualPatientModel"]

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_POSTERIOR_CACHE = 64  # histories whose refined posterior is kept
_FILES = ("weights.pt", "config.json", "model.json", "scalers.json")


class CheckpointError(VPatientError, ValueError):
    """A checkpoint directory that is incomplete, corrupted, or not safe to load."""


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
    effective_sample_size: np.ndarray  # (B,) of the importance weights, before resampling
    noise_sd: np.ndarray  # (Dc,) measurement noise sd of each continuous variable, modelling scale


@dataclass
class Forecast:
    """One patient's forecast: sample paths and their summaries."""

    subject_id: str
    until: float
    config: DatasetConfig
    layout: FeatureLayout
    paths: SimulatedPaths  # a batch of one

    @property
    def times(self) -> np.ndarray:
        return self.paths.times[0]

    def summary(self, scale: str = "natural") -> pd.DataFrame:
        """Per continuous variable and time: mean and 5/25/50/75/95% predictive quantiles.

        ``scale="natural"`` reports lab units (mg/dl); ``"model"`` the transformed scale.
        Quantiles are those of the predictive mixture, every posterior path's mean with
        the measurement noise around it (exact, so bands are smooth rather than the
        quantiles of one noisy draw per path); the mean is that of the sampled draws.
        """
        rows = []
        samples = self.paths.predictive[0]  # (S, T, Dc)
        mixture = mixture_quantiles(self.paths.expected[0], self.paths.noise_sd, QUANTILES)  # (Q, T, Dc)
        for j, name in enumerate(self.layout.continuous):
            transform = self.config.variable(name).transform
            values = samples[..., j] if scale == "model" else transforms.inverse(samples[..., j], transform)
            qs = mixture[..., j] if scale == "model" else transforms.inverse(mixture[..., j], transform)  # (Q, T)
            for i, t in enumerate(self.times):
                rows.append(
                    {
                        "time": float(t),
                        "variable": name,
                        "mean": float(values[:, i].mean()),
                        **{f"q{int(q * 100):02d}": float(qs[k, i]) for k, q in enumerate(QUANTILES)},
                    }
                )
        frame = pd.DataFrame(rows)
        frame.insert(0, "subject_id", self.subject_id)
        return frame

    def survival_summary(self) -> pd.DataFrame:
        """Per event kind and time: probability of being free of it (given free at ``until``), with 90% interval."""
        rows = []
        for k, kind in enumerate(self.layout.events):
            surv = self.paths.survival[0, :, :, k]  # (S, T)
            inc = self.paths.incidence[0, :, :, k]
            for i, t in enumerate(self.times):
                rows.append(
                    {
                        "subject_id": self.subject_id,
                        "time": float(t),
                        "event": kind,
                        "survival": float(surv[:, i].mean()),
                        "survival_q05": float(np.quantile(surv[:, i], 0.05)),
                        "survival_q95": float(np.quantile(surv[:, i], 0.95)),
                        "incidence": float(inc[:, i].mean()),
                    }
                )
        return pd.DataFrame(rows)


class VirtualPatientModel:
    """A trained world model with its dataset config and scalers."""

    def __init__(
        self,
        world: WorldModel,
        config: DatasetConfig,
        scalers: Scalers,
        history: TrainingHistory | None = None,
        train_settings: TrainSettings | None = None,
        data_source: str | None = None,
    ):
        self.world = world.eval()
        self.data_source = data_source  # what it was trained on ("pbc2", a path), for finding patients
        self.refine_steps = 60  # posterior refinement steps per forecast (0: amortised posterior only)
        # Refined posteriors of recent histories: a what-if edited plan by plan re-infers nothing.
        self._posteriors: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()
        self.config = config
        self.scalers = scalers
        self.layout = FeatureLayout.from_config(config)
        self.history = history
        self.train_settings = train_settings

    @property
    def dataset_name(self) -> str:
        """The dataset the model was trained on (its data source, else its config's name): where its patients are."""
        return self.data_source or self.config.name

    # -- training ----------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        records: Sequence[PatientRecord],
        config: DatasetConfig,
        settings: TrainSettings | None = None,
        model_settings: ModelSettings | None = None,
        progress: bool = True,
    ) -> VirtualPatientModel:
        """Train on ``records`` (scalers fitted on the training split only)."""
        settings = settings or TrainSettings()
        world, scalers, history = fit_world_model(records, config, settings, model_settings, progress)
        return cls(world, config, scalers, history, settings)

    # -- checkpoints -------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the checkpoint directory: weights, config, scalers, settings, metrics."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(self.world.state_dict(), out / "weights.pt")
        self.config.save(out / "config.json")
        meta = {
            "vpatient_version": __version__,
            "model_settings": self.world.settings.to_dict(),
            "train_settings": self.train_settings.to_dict() if self.train_settings else None,
            "data_source": self.data_source,
        }
        (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
        (out / "scalers.json").write_text(json.dumps(self.scalers.to_dict()) + "\n")
        if self.history is not None:
            (out / "training.json").write_text(json.dumps(self.history.to_dict(), indent=2) + "\n")
            _plot_training_curve(self.history, out / "training_curve.png")
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
        try:
            meta = json.loads((path / "model.json").read_text())
            settings = ModelSettings(**meta["model_settings"])
            scalers = Scalers.from_dict(json.loads((path / "scalers.json").read_text()))
            history = (
                TrainingHistory(**json.loads((path / "training.json").read_text()))
                if (path / "training.json").is_file()
                else None
            )
            train_settings = TrainSettings(**meta["train_settings"]) if meta.get("train_settings") else None
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: unreadable checkpoint metadata ({exc})") from None
        config = DatasetConfig.load(path / "config.json")
        try:
            state = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only refuses pickled objects; a damaged file fails to parse
            raise CheckpointError(
                f"{path / 'weights.pt'} is not a plain tensor file vpatient can load safely ({type(exc).__name__}); "
                "vpatient never unpickles arbitrary objects"
            ) from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path / 'weights.pt'} does not hold a dictionary of tensors")
        world = WorldModel(FeatureLayout.from_config(config), settings)
        try:
            world.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{path}: weights do not fit the model described by its config ({str(exc).splitlines()[0]})"
            ) from None
        return cls(world, config, scalers, history, train_settings, meta.get("data_source"))

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

    def _simulate(self, alternatives, histories, times, n_samples, seed, chunk_size, refine_steps) -> list[SimulatedPaths]:
        if not histories:
            raise VPatientError("nothing to simulate: no patient records given")
        if n_samples < 1:
            raise VPatientError(f"n_samples = {n_samples!r}: at least 1 posterior sample path is needed")
        if len(times) != len(histories):
            raise VPatientError(f"{len(histories)} histories but {len(times)} time grids: give one grid per history")
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
        batch = make_batch(histories, self.config, self.scalers)
        cutoff = batch.followup_end
        generator = torch.Generator().manual_seed(seed)
        mean, var = self._posterior(histories, batch, cutoff, refine_steps, seed, generator)
        n, s = len(histories), n_samples
        eps = torch.randn((n, s, mean.shape[-1]), generator=generator)
        z0 = (mean.unsqueeze(1) + var.sqrt().unsqueeze(1) * eps).reshape(n * s, -1)
        rep = batch.repeat(s)
        t_max = max(float(np.max(t)) if len(t) else 0.0 for t in times)
        t_max = max(t_max, float(cutoff.max()))
        factual = None
        if refine_steps > 0:  # the refined posterior already weighed the event history up to the cut-off
            flat, ess = torch.arange(n * s), torch.full((n,), float(s))
        else:  # weight the amortised draws by the event history up to the cut-off, then resample
            factual = self.world.rollout(z0, rep, until=t_max)
            log_w = self.world.event_log_likelihood(factual, rep.event_time, rep.event_observed).reshape(n, s)
            keep, ess = _resample(log_w, generator)  # (n, s) indices into the draws
            flat = (torch.arange(n).unsqueeze(1) * s + keep).reshape(-1)
            z0 = z0[flat]
        noise_state = generator.get_state()  # every plan decodes with the same observation noise
        out = []
        for plans in alternatives:
            if plans is not None and any(p is not None for p in plans):
                exposures = [
                    exposures_under_plan(h.treatments, p, h.end_of_followup) if p is not None else h.treatments
                    for h, p in zip(histories, plans, strict=True)
                ]
                dose_times, doses = dose_tensors(exposures, self.layout.treatments)
                planned = rep.with_doses(dose_times.repeat_interleave(s, 0), doses.repeat_interleave(s, 0))
                solution = self.world.rollout(z0, planned, until=t_max)
            elif factual is None:
                solution = self.world.rollout(z0, rep, until=t_max)
            else:  # the factual solve already holds these paths: keep the resampled rows
                solution = _select_solution(factual, flat)
            generator.set_state(noise_state)
            out.append(self._decode(histories, times, solution, self.world.offsets(z0), cutoff, n, s, generator, ess))
        return out

    def _posterior(self, histories, batch, cutoff, refine_steps: int, seed: int, generator: torch.Generator):
        """q(z0) of each history, refined; cached with the generator's state after it, so a hit gives the same numbers."""
        if refine_steps == 0:
            return self.world.posterior(batch, cutoff)
        key = (tuple(h.model_dump_json() for h in histories), refine_steps, seed)
        if key in self._posteriors:
            self._posteriors.move_to_end(key)
            mean, var, state = self._posteriors[key]
            generator.set_state(state)
            return mean, var
        mean, var = self.world.posterior(batch, cutoff)
        mean, var = self.world.refine_posterior(batch, mean, var, steps=refine_steps, generator=generator)
        self._posteriors[key] = (mean, var, generator.get_state())
        if len(self._posteriors) > _POSTERIOR_CACHE:
            self._posteriors.popitem(last=False)
        return mean, var

    def _decode(self, histories, times, solution, offsets, cutoff, n, s, generator, ess) -> SimulatedPaths:
        t_len = max(len(t) for t in times)
        grid = np.zeros((n, t_len))
        for b, t in enumerate(times):
            grid[b, : len(t)] = t
            grid[b, len(t) :] = t[-1] if len(t) else 0.0
        t_rep = torch.as_tensor(grid, dtype=torch.float32).repeat_interleave(s, 0)
        state = solution.at(t_rep)  # (n*s, T, D)
        latent = self.world.settings.latent_dim
        n_events = len(self.layout.events)
        z = state[..., :latent]
        decoder = self.world.decoder
        mean_c = torch.as_tensor(self.scalers.continuous_mean, dtype=torch.float32)
        std_c = torch.as_tensor(self.scalers.continuous_std, dtype=torch.float32)
        if decoder.continuous is not None:
            expected = decoder.continuous_mean(z, offsets, t_rep)
            noise = torch.randn(expected.shape, generator=generator) * decoder.continuous_sd()
            predictive = (expected + noise) * std_c + mean_c
            expected = expected * std_c + mean_c
        else:
            expected = predictive = z.new_zeros(*z.shape[:-1], 0)
        binary = torch.sigmoid(decoder.binary_logits(z)) if decoder.binary is not None else z.new_zeros(*z.shape[:-1], 0)
        if decoder.imaging is not None:
            img_mean = torch.as_tensor(self.scalers.imaging_mean, dtype=torch.float32)
            img_std = torch.as_tensor(self.scalers.imaging_std, dtype=torch.float32)
            imaging = decoder.imaging_mean(z) * img_std + img_mean
        else:
            imaging = z.new_zeros(*z.shape[:-1], 0)
        cumhaz = state[..., latent : latent + n_events]
        incidence = state[..., latent + n_events :]
        at_cut = solution.at(cutoff.repeat_interleave(s).unsqueeze(1))  # (n*s, 1, D)
        cumhaz_cut = at_cut[..., latent : latent + n_events]
        all_cut = cumhaz_cut.sum(dim=-1, keepdim=True)
        survival = torch.exp(-(cumhaz - cumhaz_cut).clamp(min=0))
        incidence = (incidence - at_cut[..., latent + n_events :]).clamp(min=0) * torch.exp(all_cut)

        def shape(x: torch.Tensor) -> np.ndarray:
            return x.reshape(n, s, *x.shape[1:]).numpy().astype(np.float64)

        return SimulatedPaths(
            subject_ids=[h.subject_id for h in histories],
            times=grid,
            predictive=shape(predictive),
            expected=shape(expected),
            binary_probability=shape(binary),
            imaging=shape(imaging),
            survival=shape(survival),
            incidence=shape(incidence),
            cutoff=cutoff.numpy().astype(np.float64),
            effective_sample_size=ess.numpy().astype(np.float64),
            noise_sd=(decoder.continuous_sd() * std_c).detach().numpy().astype(np.float64)
            if decoder.continuous is not None
            else np.zeros(0),
        )

    # -- forecasting -------------------------------------------------------------

    def forecast(
        self,
        record: PatientRecord,
        until: float | None = None,
        horizon: float = 5.0,
        n_samples: int = 200,
        seed: int = 0,
        step: float = 1.0 / 12,
        plan: TreatmentPlan | None = None,
    ) -> Forecast:
        """Forecast one patient from what is known at ``until`` (default: its last visit).

        Returns sample paths on a grid from 0 to until + horizon (monthly by default):
        the fitted past and the forecast, with predictive quantiles and survival curves.
        """
        if until is None:
            until = max(record.visit_times(), default=0.0)
        if not math.isfinite(until) or until < 0:
            raise VPatientError(f"subject {record.subject_id}: until = {until!r}: must be a time >= 0")
        if horizon <= 0:
            raise VPatientError(f"horizon = {horizon!r}: must be > 0 years")
        history = truncate_record(record, until)
        # The past on a grid from 0, the future on a grid from ``until``: "k years ahead" is a grid point.
        grid = np.unique(
            np.concatenate([np.arange(0.0, until, step), until + np.arange(0.0, horizon + 1e-9, step), [until + horizon]])
        )
        paths = self.simulate([history], [grid], n_samples=n_samples, seed=seed, plans=[plan] if plan else None)
        return Forecast(record.subject_id, float(until), self.config, self.layout, paths)


def mixture_quantiles(means: np.ndarray, sd: np.ndarray, levels: Sequence[float], iterations: int = 40) -> np.ndarray:
    """Quantiles of an equal-weight Gaussian mixture along axis 0: means (S, ...), sd broadcast to means[0].

    The mixture CDF is monotone, so each quantile is found by bisection between the
    extreme component quantiles; returns (len(levels), ...).
    """
    from scipy.special import ndtr, ndtri

    sd = np.broadcast_to(np.maximum(sd, 1e-12), means.shape[1:])
    out = []
    for q in levels:
        z = float(ndtri(q))
        lo = means.min(axis=0) + z * sd - 1e-9
        hi = means.max(axis=0) + z * sd + 1e-9
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            below = ndtr((mid - means) / sd).mean(axis=0) < q
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        out.append(0.5 * (lo + hi))
    return np.stack(out)


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
    )


def _plot_training_curve(history: TrainingHistory, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(history.train_loss, label="training (random cut-offs)")
    ax.plot(history.validation_loss, label="validation (forecast cut-off)")
    ax.axvline(history.best_epoch, color="grey", ls="--", lw=1, label=f"best epoch {history.best_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative ELBO per patient")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
