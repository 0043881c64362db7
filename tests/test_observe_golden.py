"""The measurement stage of virtual cohorts (``sampling.observe``) against its golden output.

``tests/data/observe_golden_{1,2}members.parquet`` hold what ``observe`` wrote before it
was vectorised (per-variable ``meds_rows`` frames joined by pandas), on fixed inputs: an
untrained synthetic-config model with seeded weights (one member, and two), a population
fitted to 60 synthetic patients, 40 virtual patients drawn with a fixed seed and a
realisation built here from seeded numbers rather than by the rollout, so the fixture
does not move when the ODE solver does. The vectorised stage must give the same table
bit for bit: every row, every value, the same order.

Run this file as a script to rewrite the fixtures (only ever from the code the fixtures
are meant to pin).
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from vpatient.data.batching import Scalers, dose_tensors, layout_from_config
from vpatient.data.meds import write_meds_shard, write_meds_table
from vpatient.data.synthetic import synthetic_cohort
from vpatient.model.dynamics import DenseSolution
from vpatient.model.latent_ode import LatentODE, ModelSettings
from vpatient.schemas import DatasetConfig, TreatmentExposure
from vpatient.simulation.population import Population
from vpatient.simulation.sampling import (
    Outcomes,
    VirtualPatients,
    _merge_outcomes,
    draw_virtual_patients,
    observe,
    observe_columns,
)
from vpatient.simulation.virtual_cohort import cohort_layout
from vpatient.virtual_patient import VirtualPatientModel

DATA = Path(__file__).parent / "data"
YEARS, N_PATIENTS, SEED = 3.0, 40, 5


def golden_path(members: int) -> Path:
    return DATA / f"observe_golden_{members}members.parquet"


@lru_cache(maxsize=2)  # the tests read the inputs, never change them
def golden_inputs(members: int) -> tuple[VirtualPatientModel, VirtualPatients, Outcomes, Population]:
    """The fixed model, patients, realisation and population the golden tables were measured on."""
    cohort = synthetic_cohort(n=60, seed=11)
    config = _age_from_birth(cohort.config)
    scalers = Scalers.fit(cohort.records, config)
    layout = layout_from_config(config)
    networks = []
    with torch.random.fork_rng():
        for k in range(members):
            torch.manual_seed(k)
            networks.append(LatentODE(layout, ModelSettings(latent_dim=4, hidden=16), time_scale=scalers.time_scale))
    model = VirtualPatientModel(networks, config, scalers, data_source="synthetic")
    population = Population.fit(model, cohort.records, seed=0, draws_per_patient=3)
    rng = np.random.default_rng(SEED)
    patients = draw_virtual_patients(population, model, N_PATIENTS, rng, first_id=100, years=YEARS)
    for i in range(0, N_PATIENTS, 3):  # courses that stop (before and after the end of follow-up) and late starts
        patients.exposures[i] = [
            TreatmentExposure(treatment="drug", start=0.25 * (i % 4), stop=0.5 + 0.1 * i, dose=0.5 + 0.01 * i),
            TreatmentExposure(treatment="drug", start=2.5, dose=1.0),
        ]
    parts = []
    for k in range(members):
        rows = np.flatnonzero(patients.member == k)
        parts.append((rows, _seeded_outcomes(model.member(k), patients.subset(rows), rng)))
    outcomes = parts[0][1] if members == 1 else _merge_outcomes(parts, len(patients), patients.exposures)
    return model, patients, outcomes, population


def _age_from_birth(config: DatasetConfig) -> DatasetConfig:
    """The synthetic config with age read from a MEDS_BIRTH row (as PBC's), so birth rows are measured too."""
    variables = [v.model_copy(update={"codes": ["MEDS_BIRTH"]}) if v.name == "age" else v for v in config.variables]
    return config.model_copy(update={"variables": variables})


def _seeded_outcomes(model: VirtualPatientModel, patients: VirtualPatients, rng: np.random.Generator) -> Outcomes:
    """A realisation made of seeded numbers: smooth random states on a monthly grid, events and ends."""
    n, world = len(patients), model.network
    width = world.settings.latent_dim + 2 * len(model.layout.events)
    grid = torch.arange(0.0, YEARS + 1e-9, 1.0 / 12)
    slopes = torch.as_tensor(rng.normal(0.0, 0.5, size=(len(grid), n, width)), dtype=torch.float32)
    start = torch.as_tensor(rng.normal(size=(1, n, width)), dtype=torch.float32)
    states = start + torch.cumsum(slopes, dim=0) / 12
    solution = DenseSolution(grid, states, slopes, slopes, world.settings.latent_dim, len(model.layout.events))
    event_time = np.where(rng.uniform(size=n) < 0.4, rng.uniform(0.0, YEARS, size=n), np.inf)
    event_kind = np.where(np.isfinite(event_time), rng.integers(len(model.layout.events), size=n), -1)
    end = np.minimum.reduce([event_time, patients.censoring, np.full(n, YEARS)])
    dose_tensors(patients.exposures, model.layout.treatments)  # the exposures are valid controls
    survival = np.ones((n, len(grid), len(model.layout.events)))
    expected = np.zeros((n, len(grid), 0))
    return Outcomes(grid.numpy(), survival, expected, event_time, event_kind, end, solution, list(patients.exposures))


def write_golden() -> None:
    DATA.mkdir(exist_ok=True)
    for members in (1, 2):
        model, patients, outcomes, population = golden_inputs(members)
        frame = observe(model, patients, outcomes, population)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), golden_path(members), compression="zstd")
        print(f"{golden_path(members)}: {len(frame)} rows")


@pytest.mark.parametrize("members", [1, 2])
def test_vectorised_measurement_equals_the_golden_table_bit_for_bit(members):
    model, patients, outcomes, population = golden_inputs(members)
    frame = observe(model, patients, outcomes, population)
    golden = pd.read_parquet(golden_path(members))
    assert len(golden) > 20 * N_PATIENTS  # statics, labs, imaging components, treatments, events, ends
    assert set(golden["code"].str.split("//").str[0]) >= {
        "MEDS_BIRTH",
        "STATIC",
        "LAB",
        "EXAM",
        "IMG",
        "RX",
        "MEDS_DEATH",
        "VPATIENT",
    }
    assert golden["code"].str.endswith("//STOP").any() and golden["text_value"].notna().any()
    pd.testing.assert_frame_equal(frame, golden, check_exact=True)
    # NaN where the golden has NaN, and every other float bit for bit (assert_frame_equal compares NaN as equal)
    for column in ("time", "numeric_value"):
        np.testing.assert_array_equal(frame[column].to_numpy().view(np.int64), golden[column].to_numpy().view(np.int64))


@pytest.mark.parametrize("members", [1, 2])
def test_the_shard_written_from_columns_is_the_shard_written_from_the_frame(members, tmp_path):
    model, patients, outcomes, population = golden_inputs(members)
    rows = observe_columns(model, patients, outcomes, population)
    layout = cohort_layout(model.config)
    direct = write_meds_table(rows.table(layout), tmp_path / "direct" / "data" / "0.parquet")
    framed = write_meds_shard(rows.frame(), tmp_path / "framed" / "data" / "0.parquet", layout)
    assert direct.read_bytes() == framed.read_bytes()
    assert pq.read_table(direct).num_rows == len(rows)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_observe_golden.py --write")
    write_golden()
