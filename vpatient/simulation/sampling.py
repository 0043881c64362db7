"""Virtual patients: drawn from a population (or from real records), rolled out, observed.

A :class:`VirtualPatients` holds every random choice about a set of patients *except*
their treatment: initial states, covariates, visit schedule, the exponential and
uniform draws that fix when and which event happens, the loss-to-follow-up time and
the seed of their measurement noise. :func:`realise` rolls them out under any
exposures; realising the same patients under two treatments is an in-silico trial
with common random numbers. :func:`observe` turns a realisation into a MEDS table.

Event times: each patient's first event happens when the summed cumulative hazard of
all event kinds reaches its Exp(1) draw (found on a monthly grid, linear in between);
which kind it is follows the kinds' shares of the hazard over that month.

Ensembles: each virtual patient is realised by one member of the model (``member``),
whose latent space its initial state lives in; members take patients in turn, so every
member realises an equal share and an in-silico trial is K sub-trials, one per member,
whose spread is the model's own uncertainty (see :mod:`vpatient.simulation.trial`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd
import torch

from vpatient import transforms
from vpatient.data.batching import dose_tensors, make_batch
from vpatient.data.cohort import arm_of
from vpatient.data.meds.codes import MEDS_BIRTH, CodeBook, component_code, start_code, stop_code
from vpatient.data.meds.columns import MedsBlocks, MedsColumns
from vpatient.data.timeline import truncate_record
from vpatient.errors import VPatientError, choose
from vpatient.model.dynamics import DenseSolution
from vpatient.schemas import PatientRecord, TreatmentExposure
from vpatient.simulation.population import Population
from vpatient.simulation.rollout import rollout
from vpatient.virtual_patient import VirtualPatientModel

__all__ = [
    "Outcomes",
    "Schedule",
    "VirtualPatients",
    "draw_virtual_patients",
    "observe",
    "observe_columns",
    "patients_from_records",
    "realise",
]


class Schedule(StrEnum):
    """How visits of virtual patients are timed."""

    REGULAR = "regular"  # every median training gap, from 0
    RANDOM = "random"  # exponential gaps at the training visit rate
    AS_OBSERVED = "as_observed"  # the visit times of a random training patient


@dataclass
class VirtualPatients:
    """Everything random about a set of patients except their treatment (module docstring)."""

    subject_ids: np.ndarray  # (n,) int64
    arms: np.ndarray  # (n,) baseline arm each was drawn from
    draws: np.ndarray  # (n, P) initial state and lab offsets, the model's posterior space
    static: np.ndarray  # (n, S) standardised covariates (0 where unknown)
    static_natural: np.ndarray  # (n, S) covariates in their units (NaN where unknown)
    exposures: list[list[TreatmentExposure]]  # as treated, when no plan overrides it
    visits: list[np.ndarray] | None  # candidate visit times, cut at the end of follow-up; None: as observed
    visit_draw: np.ndarray  # (n,) U(0, 1): which training patient's visits, for as-observed schedules
    event_draw: np.ndarray  # (n,) Exp(1)
    kind_draw: np.ndarray  # (n,) U(0, 1)
    censoring: np.ndarray  # (n,) loss to follow-up (inf: none)
    noise_seed: int
    member: np.ndarray  # (n,) the ensemble member that realises each patient
    source: np.ndarray  # (n,) the real patient a draw stands for (its record's index), else the patient's own id

    def __len__(self) -> int:
        return len(self.subject_ids)

    def subset(self, rows: np.ndarray) -> VirtualPatients:
        """The patients at ``rows``, every random choice kept."""
        picked = {}
        for name, value in vars(self).items():
            if isinstance(value, np.ndarray):
                picked[name] = value[rows]
            elif isinstance(value, list):
                picked[name] = [value[i] for i in rows]
            else:
                picked[name] = value
        return VirtualPatients(**picked)


@dataclass
class Outcomes:
    """One realisation of virtual patients under one set of exposures."""

    grid: np.ndarray  # (G,) monthly from 0 to the horizon
    survival: np.ndarray  # (n, G, E) exp(-cumulative hazard of each kind)
    expected: np.ndarray  # (n, G, Dc) typical lab values (natural units), as if the patient stayed event-free
    event_time: np.ndarray  # (n,) first event (inf: none within the horizon)
    event_kind: np.ndarray  # (n,) index into the model's event kinds, -1 for none
    end: np.ndarray  # (n,) end of follow-up: event, loss to follow-up or the horizon
    solution: DenseSolution | None  # None when several members realised the patients: see ``parts``
    exposures: list[list[TreatmentExposure]]
    parts: list[tuple[np.ndarray, Outcomes]] | None = None  # (rows, outcomes) of each member's patients

    def events_frame(self, model: VirtualPatientModel, patients: VirtualPatients) -> pd.DataFrame:
        """One row per patient: arm, first event (kind and time) and end of follow-up."""
        observed = np.isfinite(self.event_time) & (self.event_time <= self.end + 1e-12)
        kinds = np.asarray(model.layout.events, dtype=object)
        reason = np.where(
            observed, "event", np.where(patients.censoring <= self.end + 1e-12, "lost_to_follow_up", "administrative")
        )
        return pd.DataFrame(
            {
                "subject_id": patients.subject_ids,
                "arm": patients.arms.astype(str),
                "event": np.where(observed, kinds[np.maximum(self.event_kind, 0)] if len(kinds) else "", None),
                "time": self.end,
                "observed": observed,
                "end_reason": reason,
                "member": patients.member,
                "source": patients.source,
            }
        )


# --------------------------------------------------------------------------- drawing


def draw_virtual_patients(
    population: Population,
    model: VirtualPatientModel,
    n: int,
    rng: np.random.Generator,
    first_id: int = 0,
    years: float = 5.0,
    schedule: Schedule | str = Schedule.AS_OBSERVED,
    visit_interval: float | None = None,
) -> VirtualPatients:
    """``n`` new patients from ``population``, ids ``first_id`` onwards."""
    schedule = choose(Schedule, schedule, "visit schedule")
    subject_ids = np.arange(first_id, first_id + n, dtype=np.int64)
    members = population.member_of(subject_ids)
    arms = population.draw_arms(n, rng)
    draws, static = population.draw_states(arms, rng, members)
    static_natural = _natural_static(population, model, static)
    static = (static_natural - model.scalers.static_mean) / model.scalers.static_std  # snapped values, re-standardised
    exposures = population.draw_exposures(arms, rng)
    visits = _schedule(population, n, years, schedule, visit_interval, rng)
    return VirtualPatients(
        subject_ids=subject_ids,
        arms=arms,
        draws=draws,
        static=np.nan_to_num(static),
        static_natural=static_natural,
        exposures=exposures,
        visits=visits,
        visit_draw=rng.uniform(size=n),
        event_draw=rng.exponential(size=n),
        kind_draw=rng.uniform(size=n),
        censoring=population.draw_censoring(n, rng),
        noise_seed=int(rng.integers(2**31)),
        member=members,
        source=subject_ids,
    )


@torch.no_grad()
def patients_from_records(
    model: VirtualPatientModel,
    records: Sequence[PatientRecord],
    rng: np.random.Generator,
    at: float = 0.0,
    draws_per_record: int = 1,
    refine_steps: int | None = None,
) -> VirtualPatients:
    """Real patients as known at ``at`` (e.g. enrolment), each as ``draws_per_record`` posterior draws.

    Loss to follow-up is each patient's own end of follow-up when they had no event
    (inf after an event), so a simulated arm is followed as the real patient was.
    With an ensemble, draw j of record i comes from member (i + j) mod K: with at least
    K draws per record every member replays every patient.
    """
    records = list(records)
    histories = [truncate_record(r, at) for r in records]
    batch = make_batch(histories, model.config, model.scalers)
    seed = int(rng.integers(2**31))
    generator = torch.Generator().manual_seed(seed)
    steps = model.refine_steps if refine_steps is None else refine_steps
    posteriors = model.member_posteriors(histories, batch, batch.followup_end, steps, seed, generator)
    means, sds = [mean for mean, _ in posteriors], [var.sqrt() for _, var in posteriors]
    k = draws_per_record
    member = (np.arange(len(records))[:, None] + np.arange(k)[None, :]) % model.n_members  # (N, k)
    index = torch.as_tensor(member)
    rows = torch.arange(len(records)).unsqueeze(1)
    mean, sd = torch.stack(means)[index, rows], torch.stack(sds)[index, rows]  # (N, k, P)
    eps = torch.randn((len(records), k, mean.shape[-1]), generator=generator)
    draws = (mean + sd * eps).reshape(len(records) * k, -1).numpy().astype(np.float64)
    static = (batch.static * batch.static_mask).numpy().astype(np.float64).repeat(k, axis=0)
    natural = np.array([[r.static.get(s, np.nan) for s in model.layout.static] for r in records]).reshape(len(records), -1)
    censoring = np.array([np.inf if r.events else r.end_of_followup for r in records]).repeat(k)
    n = len(records) * k
    return VirtualPatients(
        subject_ids=np.arange(n, dtype=np.int64),
        arms=np.array([arm_of(r) for r in records], dtype=object).repeat(k),
        draws=draws,
        static=static,
        static_natural=natural.repeat(k, axis=0),
        exposures=[list(r.treatments) for r in records for _ in range(k)],
        visits=[np.asarray(r.visit_times()) for r in records for _ in range(k)],
        visit_draw=np.zeros(n),
        event_draw=rng.exponential(size=n),
        kind_draw=rng.uniform(size=n),
        censoring=censoring,
        noise_seed=int(rng.integers(2**31)),
        member=member.reshape(-1),
        source=np.arange(len(records), dtype=np.int64).repeat(k),
    )


def _natural_static(population: Population, model: VirtualPatientModel, static: np.ndarray) -> np.ndarray:
    """Standardised draws back in their units, clipped to the training range, categories snapped."""
    natural = static * model.scalers.static_std + model.scalers.static_mean
    natural = np.clip(natural, population.static_low, population.static_high)
    for s, name in enumerate(population.static):
        levels = population.static_categories.get(name)
        if levels:
            levels_arr = np.asarray(levels)
            natural[:, s] = levels_arr[np.argmin(np.abs(natural[:, s : s + 1] - levels_arr), axis=1)]
    return natural


def _schedule(
    population: Population, n: int, years: float, schedule: Schedule, interval: float | None, rng: np.random.Generator
) -> list[np.ndarray] | None:
    if schedule == Schedule.REGULAR:
        gap = interval or population.median_visit_gap
        if not (gap > 0 and math.isfinite(gap)):
            raise VPatientError(f"visit interval {gap!r}: must be a time > 0, in the data's time unit")
        times = np.arange(0.0, years + 1e-9, gap)
        return [times] * n
    if schedule == Schedule.RANDOM:
        mean_gap = interval or 1.0 / max(population.visits_per_year, 1e-6)
        count = math.ceil(years / mean_gap * 3) + 5
        gaps = rng.exponential(mean_gap, size=(n, count))
        times = np.concatenate([np.zeros((n, 1)), np.cumsum(gaps, axis=1)], axis=1)
        return [row[row <= years] for row in times]
    return None  # as observed: chosen once the end of follow-up is known (observe)


# --------------------------------------------------------------------------- rolling out


@torch.no_grad()
def realise(
    model: VirtualPatientModel,
    patients: VirtualPatients,
    years: float,
    exposures: Sequence[Sequence[TreatmentExposure]] | None = None,
    with_labs: bool = True,
) -> Outcomes:
    """Roll the patients out to ``years`` under ``exposures`` (default: their own) and draw their events.

    Each patient is rolled out by the member that realises it (``patients.member``).
    """
    exposures = [list(e) for e in (exposures if exposures is not None else patients.exposures)]
    if model.n_members > 1:
        parts = []
        for k in range(model.n_members):
            rows = np.flatnonzero(patients.member == k)
            if len(rows):
                sub = [exposures[i] for i in rows]
                parts.append((rows, realise(model.member(k), patients.subset(rows), years, sub, with_labs)))
        return _merge_outcomes(parts, len(patients), exposures)
    dose_times, doses = dose_tensors(exposures, model.layout.treatments)
    z0 = torch.as_tensor(patients.draws, dtype=torch.float32)
    static = torch.as_tensor(patients.static, dtype=torch.float32)
    solution = rollout(model.network, z0, static, dose_times, doses, years)
    grid = np.arange(0.0, years + 1e-9, model.grid_step)  # a month, or finer where visits are closer
    if grid[-1] < years - 1e-9:
        grid = np.append(grid, years)
    n = len(patients)
    state = solution.on_grid(torch.as_tensor(grid, dtype=torch.float32))  # (n, G, D)
    latent, n_events = model.network.settings.latent_dim, len(model.layout.events)
    cumhaz = state[..., latent : latent + n_events].clamp(min=0).numpy().astype(np.float64)  # (n, G, E)
    event_time, event_kind = _first_events(grid, cumhaz, patients.event_draw, patients.kind_draw)
    end = np.minimum.reduce([event_time, patients.censoring, np.full(n, years)])
    if with_labs and model.network.decoder.continuous is not None:
        mean = model.network.decoder.continuous_mean(
            state[..., :latent], model.network.offsets(z0), torch.as_tensor(grid, dtype=torch.float32).expand(n, -1)
        )
        expected = _natural_labs(model, mean.numpy().astype(np.float64))
    else:
        expected = np.zeros((n, len(grid), 0))
    return Outcomes(grid, np.exp(-cumhaz), expected, event_time, event_kind, end, solution, exposures)


def _merge_outcomes(parts: list[tuple[np.ndarray, Outcomes]], n: int, exposures: list[list[TreatmentExposure]]) -> Outcomes:
    """The members' outcomes back in the patients' order (each member's rows of each array)."""
    first = parts[0][1]

    def merged(name: str) -> np.ndarray:
        value = getattr(first, name)
        out = np.empty((n, *value.shape[1:]), dtype=value.dtype)
        for rows, part in parts:
            out[rows] = getattr(part, name)
        return out

    arrays = {name: merged(name) for name in ("survival", "expected", "event_time", "event_kind", "end")}
    return Outcomes(grid=first.grid, solution=None, exposures=exposures, parts=parts, **arrays)


def _first_events(
    grid: np.ndarray, cumhaz: np.ndarray, event_draw: np.ndarray, kind_draw: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """When the summed cumulative hazard first reaches each patient's Exp(1) draw, and which kind."""
    n = len(event_draw)
    if cumhaz.shape[-1] == 0:
        return np.full(n, np.inf), np.full(n, -1)
    total = cumhaz.sum(axis=-1)  # (n, G), non-decreasing
    hit = total >= event_draw[:, None]
    has = hit.any(axis=1)
    j = np.where(has, hit.argmax(axis=1), 0).clip(min=1)  # first grid index at or past the draw
    rows = np.arange(n)
    before, after = total[rows, j - 1], total[rows, j]
    frac = np.clip((event_draw - before) / np.maximum(after - before, 1e-12), 0.0, 1.0)
    time = np.where(has, grid[j - 1] + frac * (grid[j] - grid[j - 1]), np.inf)
    share = np.maximum(cumhaz[rows, j] - cumhaz[rows, j - 1], 0.0)  # (n, E)
    share = share / np.maximum(share.sum(axis=1, keepdims=True), 1e-12)
    kind = (np.cumsum(share, axis=1) < kind_draw[:, None]).sum(axis=1).clip(max=cumhaz.shape[-1] - 1)
    return time, np.where(has, kind, -1)


def _natural_labs(model: VirtualPatientModel, standardised: np.ndarray) -> np.ndarray:
    values = standardised * model.scalers.continuous_std + model.scalers.continuous_mean
    out = np.empty_like(values)
    for j, name in enumerate(model.layout.continuous):
        out[..., j] = transforms.inverse(values[..., j], model.config.variable(name).transform)
    return out


# --------------------------------------------------------------------------- observing


@torch.no_grad()
def observe(model: VirtualPatientModel, patients: VirtualPatients, outcomes: Outcomes, population: Population) -> pd.DataFrame:
    """The MEDS long table of one realisation: statics, measured visits, treatments, events, follow-up.

    Visits after the end of follow-up are dropped; each variable is measured at a visit
    with the training data's share (baseline and later visits apart), with the model's
    measurement noise (each member's patients with that member's noise model). The
    table of :func:`observe_columns`, as a pandas frame.
    """
    return observe_columns(model, patients, outcomes, population).frame()


@torch.no_grad()
def observe_columns(
    model: VirtualPatientModel, patients: VirtualPatients, outcomes: Outcomes, population: Population
) -> MedsColumns:
    """:func:`observe`'s table as numpy columns, in MEDS order: what a cohort writes to its shards.

    Whole-chunk array work: the visits, the measurements of each variable, the treatment
    rows of each distinct exposure list; no step runs per patient or per row.
    """
    if outcomes.parts is None:
        return _measure(model, patients, outcomes, population).in_meds_order()
    measured = []
    for k, (rows, part) in enumerate(outcomes.parts):
        sub = patients.subset(rows)
        sub.noise_seed = patients.noise_seed + k
        measured.append(_measure(model.member(int(sub.member[0])), sub, part, population))
    # members' patients are distinct, so one sort of all their rows keeps each patient's rows in its own order
    return MedsColumns.concat(measured).in_meds_order()


@torch.no_grad()
def _measure(model: VirtualPatientModel, patients: VirtualPatients, outcomes: Outcomes, population: Population) -> MedsColumns:
    """One member's patients measured: the rows block by block (statics, each variable, treatments, events, ends)."""
    assert outcomes.solution is not None, "one member's realisation has its solution"
    n = len(patients)
    t, rows, slot, padded = _visits(patients, outcomes, population)
    times = torch.as_tensor(padded, dtype=torch.float32)
    latent = model.network.settings.latent_dim
    # The decoders see each real visit once, (V, 1, L), not the padded (n, W, L) table; the noise is still drawn
    # for the whole table, so the random stream (and every number) stays what it was.
    at_visit = torch.as_tensor(rows), torch.as_tensor(slot)
    z = outcomes.solution.at(times)[..., :latent][at_visit].unsqueeze(1)
    generator = torch.Generator().manual_seed(patients.noise_seed)
    rng = np.random.default_rng(patients.noise_seed)
    decoder = model.network.decoder
    layout, config = model.layout, model.config
    z0 = torch.as_tensor(patients.draws, dtype=torch.float32)
    book = CodeBook(config)
    blocks = MedsBlocks()
    _static_rows(blocks, model, patients, book)

    def measured(name: str) -> np.ndarray:
        baseline, later = population.observed_share.get(name, (1.0, 1.0))
        return rng.uniform(size=len(t)) < np.where(slot == 0, baseline, later)

    def add(name: str, values: np.ndarray) -> None:
        keep = measured(name) & np.isfinite(values)
        blocks.add(patients.subject_ids[rows[keep]], t[keep], book.code(name), values[keep], book.labels(name))

    if decoder.continuous is not None:
        mean = decoder.continuous_mean(z, model.network.offsets(z0)[at_visit[0]], times[at_visit].unsqueeze(1))[:, 0]
        noise = torch.randn((*times.shape, mean.shape[-1]), generator=generator)[at_visit]
        noisy = (mean + noise * decoder.continuous_sd()).numpy()
        natural = _natural_labs(model, noisy.astype(np.float64))
        for j, name in enumerate(layout.continuous):
            value, bounds = natural[:, j], config.variable(name).plausible_range
            step = population.resolution.get(name, 0.0)
            if step > 0:  # as precisely as the laboratory records it; a positive value stays positive (log scales)
                value = np.where(value > 0, np.maximum(np.round(value / step) * step, step), np.round(value / step) * step)
            add(name, np.clip(value, *bounds) if bounds else value)
    if decoder.binary is not None:
        p = torch.sigmoid(decoder.binary_logits(z)).numpy()[:, 0]
        for j, name in enumerate(layout.binary):
            add(name, (rng.uniform(size=len(t)) < p[:, j]).astype(float))
    for j, name in enumerate(layout.ordinal):
        probs = decoder.ordinal_probs(z, j).numpy()[:, 0]
        level = (np.cumsum(probs, axis=1) / probs.sum(axis=1, keepdims=True) < rng.uniform(size=(len(t), 1))).sum(axis=1)
        add(name, np.asarray(layout.ordinal_levels[j])[level.clip(max=probs.shape[1] - 1)])
    if decoder.imaging is not None:
        mean = decoder.imaging_mean(z)[:, 0]
        noise = torch.randn((*times.shape, mean.shape[-1]), generator=generator)[at_visit]
        noisy = (mean + noise * decoder.imaging_sd()).numpy()
        noisy = noisy * model.scalers.imaging_std + model.scalers.imaging_mean
        offset = 0
        for modality, dim in layout.imaging:
            keep = measured(modality)
            code = book.code(modality)
            ids, tt = patients.subject_ids[rows[keep]], t[keep]
            for d in range(dim):
                blocks.add(ids, tt, component_code(code, d), noisy[keep, offset + d])
            offset += dim
    _treatment_rows(blocks, book, patients.subject_ids, outcomes)
    observed = np.isfinite(outcomes.event_time) & (outcomes.event_time <= outcomes.end + 1e-12)
    for k, kind in enumerate(layout.events):
        chosen = observed & (outcomes.event_kind == k)
        blocks.add(patients.subject_ids[chosen], outcomes.end[chosen], book.code(kind))
    blocks.add(patients.subject_ids[:n], outcomes.end, book.eof_code)
    return blocks.columns()


def _visits(
    patients: VirtualPatients, outcomes: Outcomes, population: Population
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each patient's measured visits, up to the end of follow-up (a visit at 0 if none is left).

    Returns the visits one after another: times (V,), the patient (V,) and the visit's
    place in its patient's list (V,), and the (n, W) table of each patient's visits,
    its last visit repeated to the common width W.
    """
    n = len(patients)
    if patients.visits is None:  # as observed: one training patient's visits each, taken from the flat table of them
        flat, starts = population.visit_template_table
        chosen = population.visit_templates_for(outcomes.end, patients.visit_draw)
        lengths = starts[chosen + 1] - starts[chosen]
        first = starts[chosen]
    else:
        lengths = np.fromiter(map(len, patients.visits), dtype=np.int64, count=n)
        flat = np.concatenate(patients.visits).astype(float, copy=False) if lengths.sum() else np.zeros(0)
        first = np.cumsum(lengths) - lengths
    planned_rows = np.repeat(np.arange(n), lengths)
    planned = flat[np.repeat(first - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())]
    kept = planned <= outcomes.end[planned_rows] + 1e-12
    kept_rows, kept_t = planned_rows[kept], planned[kept]
    counts = np.bincount(kept_rows, minlength=n)
    sizes = np.maximum(counts, 1)  # a patient with no visit left is seen once, at 0
    starts_out = np.cumsum(sizes) - sizes
    t = np.zeros(int(sizes.sum()))
    t[starts_out[kept_rows] + np.arange(len(kept_t)) - np.repeat(np.cumsum(counts) - counts, counts)] = kept_t
    rows = np.repeat(np.arange(n), sizes)
    slot = np.arange(len(t)) - np.repeat(starts_out, sizes)
    width = int(sizes.max()) if n else 0
    padded = t[np.minimum(np.arange(width)[None, :], sizes[:, None] - 1) + starts_out[:, None]]
    return t, rows, slot, padded


def _static_rows(blocks: MedsBlocks, model: VirtualPatientModel, patients: VirtualPatients, book: CodeBook) -> None:
    for s, name in enumerate(model.layout.static):
        values = patients.static_natural[:, s]
        known = np.isfinite(values)
        if book.reads_birth(book.spec(name)):  # age at index: a birth row at minus the age
            blocks.add(patients.subject_ids[known], -values[known], MEDS_BIRTH)
        else:
            blocks.add(patients.subject_ids[known], None, book.code(name), values[known], book.labels(name))


def _treatment_rows(blocks: MedsBlocks, book: CodeBook, ids: np.ndarray, outcomes: Outcomes) -> None:
    """Start (with its dose) and stop rows of every exposure begun by the end of follow-up; a stop only by then.

    Patients share a few exposure lists (their arm's templates, a plan): the rows of each
    distinct list are made once and given to its patients; each patient's rows stay in
    the order of its list (start, then stop, exposure by exposure).
    """
    n = len(ids)
    distinct: dict[tuple[int, ...], int] = {}
    lists: list[list[TreatmentExposure]] = []
    which = np.empty(n, dtype=np.int64)
    for i, exposures in enumerate(outcomes.exposures):  # a dictionary look-up per patient, the rows below are per list
        key = tuple(map(id, exposures))
        which[i] = distinct.setdefault(key, len(distinct))
        if which[i] == len(lists):
            lists.append(exposures)
    table: list[tuple[float, int, float, float]] = []  # each list's rows: (time, code, dose, start of the exposure)
    length = []
    for exposures in lists:
        before = len(table)
        for e in exposures:
            base = book.code(e.treatment)
            table.append((e.start, blocks.code_index(start_code(base)), e.dose, e.start))
            if e.stop is not None:
                table.append((e.stop, blocks.code_index(stop_code(base)), np.nan, e.start))
        length.append(len(table) - before)
    if not table:
        return
    t, code, dose, begun = (np.asarray(column) for column in zip(*table, strict=True))
    per_list, t_arr, begun_arr = np.asarray(length), t.astype(np.float64), begun.astype(np.float64)
    counts = per_list[which]
    patient = np.repeat(np.arange(n), counts)
    offsets = np.cumsum(per_list) - per_list
    row = np.repeat(offsets[which] - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
    end = outcomes.end[patient]
    keep = (begun_arr[row] <= end) & (t_arr[row] <= end)
    row = row[keep]
    blocks.add(ids[patient[keep]], t_arr[row], code.astype(np.int32)[row], dose.astype(np.float64)[row])
