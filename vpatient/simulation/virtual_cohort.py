"""Virtual cohorts: new patients from the learned population, written as MEDS (or FHIR) plus events.

Output directory::

    OUT/meds/data/part-00000.parquet ...   MEDS shards, one per chunk (written by whoever ran it)
    OUT/meds/metadata/...                  codes, dataset.json, the vpatient config

The MEDS is standard (:func:`cohort_layout`): virtual patients have no calendar time, so
their times are placed from :data:`~vpatient.schemas.RELATIVE_EPOCH` and read back as
times since index.
    OUT/events/part-00000.parquet ...      one row per patient: arm, first event, end of follow-up
    OUT/simulation.json                    what was simulated: model, seed, settings

With ``format="fhir"``, instead of ``meds/``::

    OUT/fhir/Patient.ndjson ...            FHIR Bulk Data NDJSON, one file per resource type
    OUT/vpatient_config.json               the config the resources are coded by (to read them back)

each chunk writes its own NDJSON folder, and the folders are joined in chunk order at the end.

Memory stays bounded by the chunk size: each chunk is drawn, rolled out, observed and
written before its process (this one, or one of the workers that large cohorts use by
default) takes the next, so a million patients stream through in pieces. A chunk's rows
go from numpy columns to arrow arrays to parquet (:func:`observe_columns`,
:class:`~vpatient.data.meds.MedsColumns`), never through a pandas frame.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vpatient.data.fhir.write import NdjsonWriter
from vpatient.data.formats import DataFormat
from vpatient.data.meds import frame_to_records, write_meds_table
from vpatient.data.meds.codes import CONFIG_FILE, DATA_DIR, MedsLayout
from vpatient.plans import exposures_under_plan
from vpatient.schemas import DatasetConfig, TreatmentPlan
from vpatient.simulation.engine import Chunk, ModelRef, chunk_rng, resolve_model
from vpatient.simulation.population import Population
from vpatient.simulation.sampling import Schedule, draw_virtual_patients, observe_columns, realise

__all__ = ["STAGES", "CohortResult", "cohort_chunk", "cohort_layout", "fhir_part"]

MEDS_DIR, FHIR_DIR, EVENTS_DIR, MANIFEST = "meds", "fhir", "events", "simulation.json"
#: The stages of a chunk, as simulation.json times them: drawing the patients (and loading the model, on a worker's
#: first chunk), rolling them out, measuring them into MEDS rows, writing the shards.
STAGES = ("drawing", "rollout", "measurement", "writing")


def cohort_layout(config: DatasetConfig) -> MedsLayout:
    """The MEDS layout of every virtual cohort: standard, relative times (no calendar), integer ids."""
    return MedsLayout(relative=True, time_unit=config.time_unit)


@dataclass
class CohortResult:
    """Where a virtual cohort was written, and how much of it there is."""

    out_dir: Path
    n_patients: int
    n_rows: int
    n_events: int
    settings: dict
    format: DataFormat = DataFormat.MEDS
    n_resources: int = 0  # FHIR resources written (FHIR only)
    stage_seconds: dict[str, float] | None = None  # busy seconds of each stage (STAGES), summed over chunks and workers
    stage_cpu_seconds: dict[str, float] | None = None  # and the CPU seconds the stage's process spent in it

    @property
    def meds_dir(self) -> Path:
        return self.out_dir / MEDS_DIR

    @property
    def fhir_dir(self) -> Path:
        return self.out_dir / FHIR_DIR

    def events(self) -> pd.DataFrame:
        """The events table (one row per patient)."""
        return pd.read_parquet(self.out_dir / EVENTS_DIR)

    def records(self):
        """The cohort read back as validated PatientRecords (small cohorts: it is all in memory)."""
        if self.format == DataFormat.FHIR:
            from vpatient.data.fhir import read_fhir
            from vpatient.schemas import DatasetConfig

            return read_fhir(self.fhir_dir, DatasetConfig.load(self.fhir_dir / CONFIG_FILE))
        from vpatient.data.meds import read_meds

        return read_meds(self.meds_dir)

    def write_manifest(self) -> Path:
        """simulation.json: the settings, the counts and where the time went (``stage_seconds`` of wall time,
        ``stage_cpu_seconds`` of CPU time; both vary run to run)."""
        path = self.out_dir / MANIFEST
        counts = {"n_rows": self.n_rows, "n_events": self.n_events}
        if self.format == DataFormat.FHIR:
            counts["n_resources"] = self.n_resources
        for name in ("stage_seconds", "stage_cpu_seconds"):
            if getattr(self, name) is not None:
                counts[name] = {stage: round(seconds, 3) for stage, seconds in getattr(self, name).items()}
        path.write_text(json.dumps({**self.settings, **counts}, indent=2) + "\n")
        return path


def fhir_part(out_dir: str | Path, chunk: Chunk) -> Path:
    """The NDJSON folder one chunk of a FHIR cohort is written to, until the parts are joined."""
    return Path(out_dir) / FHIR_DIR / Path(chunk.name).stem


@lru_cache(maxsize=2)
def _population(text: str) -> Population:
    """The population of a cohort's chunks, read once per process (and its templates parsed once)."""
    return Population.from_json(text)


def cohort_chunk(
    chunk: Chunk,
    *,
    model: ModelRef,
    population: str,
    years: float,
    schedule: str,
    visit_interval: float | None,
    plan: str | None,
    out_dir: str,
    format: str = DataFormat.MEDS.value,
) -> dict[str, int]:
    """Draw, roll out, observe and write one chunk of a virtual cohort; returns its counts and its seconds per stage."""
    clock, cpu_clock = time.perf_counter(), time.process_time()
    seconds, cpu_seconds = dict.fromkeys(STAGES, 0.0), dict.fromkeys(STAGES, 0.0)

    def lap(stage: str) -> None:  # wall and CPU time: on a shared machine the two part ways
        nonlocal clock, cpu_clock
        now, cpu_now = time.perf_counter(), time.process_time()
        seconds[stage] += now - clock
        cpu_seconds[stage] += cpu_now - cpu_clock
        clock, cpu_clock = now, cpu_now

    vpm = resolve_model(model)
    pop = _population(population)
    rng = chunk_rng(chunk)
    patients = draw_virtual_patients(pop, vpm, chunk.size, rng, chunk.first_id, years, Schedule(schedule), visit_interval)
    exposures = None
    if plan is not None:
        chosen = TreatmentPlan.model_validate_json(plan)
        exposures = [exposures_under_plan([], chosen, 0.0)] * chunk.size
    lap("drawing")
    outcomes = realise(vpm, patients, years, exposures, with_labs=False)
    lap("rollout")
    rows = observe_columns(vpm, patients, outcomes, pop)
    lap("measurement")
    out = Path(out_dir)
    resources = 0
    if DataFormat(format) == DataFormat.FHIR:
        records = frame_to_records(rows.frame(), vpm.config, source=f"virtual cohort chunk {chunk.index}")
        with NdjsonWriter(fhir_part(out, chunk), vpm.config) as writer:
            writer.write(records)
        resources = writer.n_resources
    else:  # the arrow table straight from the columns: no pandas frame of the chunk's rows
        write_meds_table(rows.table(cohort_layout(vpm.config)), out / MEDS_DIR / DATA_DIR / chunk.name)
    events = outcomes.events_frame(vpm, patients)
    (out / EVENTS_DIR).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(events, preserve_index=False), out / EVENTS_DIR / chunk.name)
    lap("writing")
    return {
        "patients": chunk.size,
        "rows": len(rows),
        "events": int(events["observed"].sum()),
        "resources": resources,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }
