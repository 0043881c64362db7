"""``Simulator``: what-ifs, virtual cohorts and in-silico trials over a trained model.

sim = Simulator.load("models/pbc")                 # the model, and its population.json
sim.whatif(record, [plan_a, plan_b])               # one patient, several plans
sim.cohort(10_000, seed=0, out="out/cohort")       # new patients, MEDS (or format="fhir") + events
sim.trial({"placebo": none, "drug": drug}, n=2000) # the same patients under each arm
sim.trial(arms, population=records)                # ... or real patients at enrolment
sim.trial({"drug": drug}, n=2000)                  # one arm: a cohort's survival under a plan
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vpatient import limits
from vpatient.data.fhir.write import concatenate_ndjson
from vpatient.data.formats import DataFormat
from vpatient.data.meds import move_into_place, write_meds_metadata
from vpatient.data.meds.codes import CONFIG_FILE
from vpatient.errors import OutputExistsError, VPatientError, choose
from vpatient.manifest import add_to_manifest
from vpatient.schemas import PatientRecord, TreatmentPlan
from vpatient.simulation.engine import Engine, chunks, run_chunks
from vpatient.simulation.population import POPULATION_FILE, Population
from vpatient.simulation.sampling import Schedule, patients_from_records
from vpatient.simulation.trial import AGGREGATES_DIR, PATIENTS_DIR, TrialResult, arm_outcomes, trial_chunk
from vpatient.simulation.virtual_cohort import FHIR_DIR, MEDS_DIR, STAGES, CohortResult, cohort_chunk, cohort_layout, fhir_part
from vpatient.simulation.whatif import WhatIfResult, whatif
from vpatient.staging import staging_dir
from vpatient.virtual_patient import VirtualPatientModel

__all__ = ["Simulator"]

log = logging.getLogger(__name__)

#: Largest cohort kept in memory when no output directory is given.
MAX_IN_MEMORY = 200_000


class Simulator:
    """A trained model with the population it learned, ready to simulate."""

    def __init__(self, model: VirtualPatientModel, population: Population | None = None, model_dir: str | Path | None = None):
        self.model = model
        self.population = population
        self.model_dir = Path(model_dir) if model_dir is not None else None

    @classmethod
    def load(cls, model_dir: str | Path) -> Simulator:
        """The checkpoint in ``model_dir``, with its ``population.json`` when it has one."""
        model = VirtualPatientModel.load(model_dir)
        path = Path(model_dir) / POPULATION_FILE
        population = Population.load(path) if path.is_file() else None
        if population is not None and population.n_members != model.n_members:
            raise VPatientError(
                f"{path}: an outdated population model ({population.n_members} member(s), the model has {model.n_members}); "
                "delete it and it is fitted again from the training data"
            )
        return cls(model, population, model_dir)

    def fit_population(self, records: Sequence[PatientRecord], seed: int = 0, save: bool = True) -> Population:
        """Learn the population of ``records`` (the training cohort); saved beside the checkpoint."""
        self.population = Population.fit(self.model, records, seed=seed)
        if save and self.model_dir is not None:
            self.population.save(self.model_dir / POPULATION_FILE)
            add_to_manifest(self.model_dir, POPULATION_FILE)
        return self.population

    # -- one patient -----------------------------------------------------------

    def whatif(
        self,
        record: PatientRecord,
        plans: Sequence[TreatmentPlan],
        horizon: float | None = None,
        n_samples: int = 200,
        seed: int = 0,
        at: float | None = None,
        effect_horizons: Sequence[float] | None = None,
    ) -> WhatIfResult:
        """Forecasts under each plan from the same posterior draws, and effects against the first plan.

        Times in the data's unit; ``horizon`` defaults to the model's default horizon.
        """
        return whatif(self.model, record, plans, horizon, n_samples, seed, at, effect_horizons)

    # -- virtual cohorts ---------------------------------------------------------

    def cohort(
        self,
        n: int,
        seed: int = 0,
        years: float = 5.0,
        schedule: Schedule | str = Schedule.AS_OBSERVED,
        out: str | Path | None = None,
        *,
        visit_interval: float | None = None,
        plan: TreatmentPlan | None = None,
        chunk_size: int = 5_000,
        engine: Engine | str = Engine.AUTO,
        scheduler: str | None = None,
        n_workers: int = 2,
        overwrite: bool = False,
        progress: bool = True,
        format: DataFormat | str = DataFormat.MEDS,
    ) -> CohortResult:
        """``n`` virtual patients followed for ``years``, written under ``out`` (a temporary folder if None).

        Each gets the treatment of a training patient of its arm, or ``plan`` for all.
        Same seed and chunk size, same cohort, whatever the engine and the number of workers.
        ``engine="auto"`` (the default) runs a large cohort of a model loaded from its directory
        on ``n_workers`` worker processes (:func:`~vpatient.simulation.engine.auto_engine`).
        ``format="fhir"`` writes the patients as FHIR Bulk Data NDJSON under ``fhir/`` instead
        of MEDS under ``meds/``.
        """
        fmt = choose(DataFormat, format, "output format")
        _check_size(self.model, n, years, [plan] if plan else [])
        population = self._population()
        schedule = choose(Schedule, schedule, "visit schedule")
        if out is None:
            if n > MAX_IN_MEMORY:
                raise VPatientError(f"n = {n:,}: give an output directory for cohorts over {MAX_IN_MEMORY:,} patients")
            out = Path(tempfile.mkdtemp(prefix="vpatient-cohort-"))
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
            raise OutputExistsError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
        settings = {
            "kind": "cohort",
            "n": n,
            "seed": seed,
            "years": years,
            "schedule": schedule.value,
            "visit_interval": visit_interval,
            "plan": plan.model_dump(mode="json") if plan else None,
            "chunk_size": chunk_size,
            "engine": Engine(engine).value,
            "format": fmt.value,
            "model": str(self.model_dir) if self.model_dir else None,
            "population": "Gaussian mixture per baseline arm over the aggregate posterior and covariates",
        }
        checked = plan.check(self.model.config) if plan else None
        # Everything is written beside ``out`` and renamed into place at the end, so an
        # interrupted run never leaves half a cohort behind (as write_meds does).
        work = chunks(n, chunk_size, seed)
        staging = staging_dir(out)
        try:
            config = self.model.config
            if fmt == DataFormat.MEDS:
                write_meds_metadata(
                    config, staging / MEDS_DIR, cohort_layout(config), dataset_name=f"virtual cohort of {config.name}"
                )
            counts = run_chunks(
                cohort_chunk,
                work,
                engine,
                scheduler,
                n_workers,
                progress,
                "virtual cohort",
                model=self._model_ref(engine),
                population=population.to_json(),
                years=years,
                schedule=schedule.value,
                visit_interval=visit_interval,
                plan=checked.model_dump_json() if checked else None,
                out_dir=str(staging),
                format=fmt.value,
            )
            if fmt == DataFormat.FHIR:
                concatenate_ndjson([fhir_part(staging, chunk) for chunk in work], staging / FHIR_DIR)
                config.save(staging / FHIR_DIR / CONFIG_FILE)  # beside the resources, as write_fhir keeps it
            result = CohortResult(
                staging,
                sum(c["patients"] for c in counts),
                sum(c["rows"] for c in counts),
                sum(c["events"] for c in counts),
                settings,
                fmt,
                sum(c["resources"] for c in counts),
                stage_seconds={stage: sum(c["seconds"][stage] for c in counts) for stage in STAGES},
                stage_cpu_seconds={stage: sum(c["cpu_seconds"][stage] for c in counts) for stage in STAGES},
            )
            result.write_manifest()
            move_into_place(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        result.out_dir = out
        return result

    # -- trials ------------------------------------------------------------------

    def trial(
        self,
        arms: Mapping[str, TreatmentPlan],
        n: int = 1000,
        seed: int = 0,
        years: float = 5.0,
        event: str | None = None,
        *,
        population: Sequence[PatientRecord] | None = None,
        draws_per_record: int | None = None,
        chunk_size: int = 5_000,
        engine: Engine | str = Engine.LOCAL,
        scheduler: str | None = None,
        n_workers: int = 2,
        out: str | Path | None = None,
        progress: bool = True,
        on_chunk: Callable[[int, int], None] | None = None,
    ) -> TrialResult:
        """Every patient under every arm's plan from t=0; the first arm is the reference.

        One arm is a virtual cohort under that plan: its Kaplan-Meier and model survival
        curves and lab trajectories, with no comparison (empty hazard ratio and RMST tables).

        Patients are ``n`` virtual ones from the learned population, or, when
        ``population`` is a list of records, those real patients as known at
        enrolment (t=0), ``draws_per_record`` posterior draws each (default: one per
        ensemble member, so every member replays every patient). ``out`` receives the
        result's tables, ``trial.json`` and ``trial.md`` (:meth:`TrialResult.save`); its
        figure is :func:`vpatient.plots.plot_trial`. ``on_chunk(done, total)`` is called after
        each chunk of virtual patients (:func:`~vpatient.simulation.engine.run_chunks`): a
        progress display, which may stop the trial between chunks by raising.
        """
        if not arms:
            raise VPatientError("a trial needs at least one arm (one arm: a virtual cohort under its plan, no comparison)")
        _check_size(self.model, n, years, list(arms.values()))
        plans = {name: plan.check(self.model.config) for name, plan in arms.items()}
        event = event or (self.model.layout.events[0] if self.model.layout.events else None)
        if event not in self.model.layout.events:
            raise VPatientError(f"unknown event {event!r}; the model's events are {', '.join(self.model.layout.events)}")
        settings = {
            "n": n,
            "years": years,
            "time_unit": self.model.time_unit,
            "engine": Engine(engine).value,
            "chunk_size": chunk_size,
        }
        if population is not None:
            records = list(population)
            if not records:
                raise VPatientError("the trial population is empty: give at least one patient record")
            rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
            draws_per_record = draws_per_record or self.model.n_members
            patients = patients_from_records(self.model, records, rng, at=0.0, draws_per_record=draws_per_record)
            per_patient, sums = arm_outcomes(self.model, patients, plans, years)
            settings |= {"population": f"{len(records)} records at enrolment", "draws_per_record": draws_per_record}
        else:
            pop = self._population()
            out_dir = _fresh_dir(Path(out) / "simulation") if out is not None else None
            if Engine(engine) == Engine.DASK and out_dir is None:
                out_dir = Path(tempfile.mkdtemp(prefix="vpatient-trial-"))
            parts = run_chunks(
                trial_chunk,
                chunks(n, chunk_size, seed),
                engine,
                scheduler,
                n_workers,
                progress,
                "in-silico trial",
                on_chunk=on_chunk,
                model=self._model_ref(engine),
                population=pop.to_json(),
                arms=json.dumps({name: p.model_dump(mode="json") for name, p in plans.items()}),
                years=years,
                out_dir=str(out_dir) if out_dir is not None else None,
            )
            if out_dir is not None:
                per_patient = pd.read_parquet(out_dir / PATIENTS_DIR)
                sums = pd.read_parquet(out_dir / AGGREGATES_DIR)
            else:
                per_patient = pd.concat([p[0] for p in parts], ignore_index=True)
                sums = pd.concat([p[1] for p in parts], ignore_index=True)
            settings |= {"population": "virtual (learned population)"}
        result = TrialResult.analyse(per_patient, sums, list(plans), event, years, seed, settings)
        if out is not None:
            result.save(out)
        return result

    # -- helpers ---------------------------------------------------------------

    def _population(self) -> Population:
        if self.population is None:
            raise VPatientError(
                "this model has no population model yet: call Simulator.fit_population(training_records) "
                "(the CLI fits it from the model's training data and saves population.json)"
            )
        return self.population

    def _model_ref(self, engine: Engine | str) -> VirtualPatientModel | str:
        if Engine(engine) == Engine.LOCAL or (Engine(engine) == Engine.AUTO and self.model_dir is None):
            return self.model
        if self.model_dir is None:
            raise VPatientError(
                f"the {Engine(engine).value} engine loads the model from its checkpoint directory: use Simulator.load(DIR)"
            )
        return str(self.model_dir.resolve())


def _check_size(model: VirtualPatientModel, n: int, years: float, plans: Sequence[TreatmentPlan]) -> None:
    """Refuse a cohort or trial over the limits of :mod:`vpatient.limits` before any patient is drawn."""
    if not (math.isfinite(years) and years > 0):
        raise VPatientError(f"years = {years!r}: the follow-up to simulate must be > 0")
    limits.check_at_most(limits.COHORT_PATIENTS, "n", n)
    model.check_work(0.0, years, "the start", "years")
    for plan in plans:
        limits.check_at_most(limits.PLAN_EXPOSURES, f"the exposures of plan {plan.name!r}", len(plan.exposures))


def _fresh_dir(path: Path) -> Path:
    """``path``, created, without the part files of an earlier run (which would be read back with the new ones)."""
    for child in (PATIENTS_DIR, AGGREGATES_DIR):
        shutil.rmtree(path / child, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path
