"""FHIR round trips: records -> write_fhir -> read_fhir -> the same records (PBC, synthetic with imaging, a virtual cohort).

FHIR dateTimes hold times to the microsecond (vpatient.data.fhir), so record times, and the age
read from the birth time, are compared in whole microseconds; every other field (values,
doses, embeddings, codes, ids, index times, splits) must come back exactly. A second write of
what was read gives the same bytes.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from vpatient.data import fhir
from vpatient.data.fhir import FhirLayout, write_fhir
from vpatient.data.meds import read_meds
from vpatient.data.meds.codes import MEDS_BIRTH, MICROS_PER_DAY
from vpatient.datasets import load_dataset, synthetic_cohort
from vpatient.schemas import DatasetConfig, PatientRecord, parse_record

pytestmark = pytest.mark.skipif(
    not hasattr(fhir, "read_fhir"), reason="the FHIR reader (vpatient.data.fhir.read_fhir) is not in this tree yet"
)


def _in_microseconds(record: PatientRecord, config: DatasetConfig) -> dict[str, Any]:
    """``record`` in canonical order, as a dict whose times (and age from birth) are whole microseconds."""
    scale = MICROS_PER_DAY * config.time_unit.days

    def us(t: float) -> int:
        return round(t * scale)

    births = {v.name for v in config.variables if MEDS_BIRTH in v.codes}
    data = record.in_canonical_order(config).model_dump()
    for part in ("observations", "imaging", "history", "events"):
        for item in data[part]:
            item["time"] = us(item["time"])
    for exposure in data["treatments"]:
        exposure["start"] = us(exposure["start"])
        exposure["stop"] = None if exposure["stop"] is None else us(exposure["stop"])
    data["end_of_followup"] = us(data["end_of_followup"])
    data["static"] = {name: us(value) if name in births else value for name, value in data["static"].items()}
    return data


def _content(path: Path) -> bytes | dict[str, bytes]:
    """The bytes of a file, or of each file in a folder by name."""
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())} if path.is_dir() else path.read_bytes()


def _round_trip(records: list[PatientRecord], config: DatasetConfig, out: Path, layout: FhirLayout) -> None:
    written = write_fhir(records, config, out, layout=layout)
    back = fhir.read_fhir(written, config)
    assert sorted(r.subject_id for r in back) == sorted(r.subject_id for r in records)
    got = {r.subject_id: _in_microseconds(r, config) for r in back}
    for record in records:
        assert got[record.subject_id] == _in_microseconds(record, config), record.subject_id
    # Written again in the original order, what was read gives the same bytes: the times read back lie on the microseconds written.
    position = {r.subject_id: i for i, r in enumerate(records)}
    again = write_fhir(
        sorted(back, key=lambda r: position[r.subject_id]), config, out.with_name("again" + out.suffix), layout=layout
    )
    assert _content(again) == _content(written)


def test_pbc_round_trip(tmp_path):
    pbc = load_dataset("pbc2")
    _round_trip(pbc.records, pbc.config, tmp_path / "pbc", FhirLayout.NDJSON)


def test_synthetic_with_imaging_round_trip(tmp_path):
    synthetic = synthetic_cohort(n=30, seed=0)
    assert sum(len(r.imaging) for r in synthetic.records) > 0
    _round_trip(synthetic.records, synthetic.config, tmp_path / "bundles", FhirLayout.BUNDLES)


def test_calendar_times_and_splits_round_trip(config, record_data, tmp_path):
    records = [
        parse_record(
            {**record_data, "subject_id": f"p{i}", "index_time": datetime(2010, 5, i + 1, 8, 30), "split": split}, config
        )
        for i, split in enumerate(["train", "tuning", "held_out"])
    ]
    _round_trip(records, config, tmp_path / "three.json", FhirLayout.BUNDLE)
    back = {r.subject_id: r for r in fhir.read_fhir(tmp_path / "three.json", config)}
    assert [(back[r.subject_id].index_time, back[r.subject_id].split) for r in records] == [
        (r.index_time, r.split) for r in records
    ]


def test_virtual_cohort_round_trip(untrained_simulator_dir, tmp_path):
    from vpatient.simulation import Simulator

    sim = Simulator.load(untrained_simulator_dir)
    as_fhir = sim.cohort(30, seed=2, years=3.0, out=tmp_path / "fhir", chunk_size=12, progress=False, format="fhir")
    as_meds = sim.cohort(30, seed=2, years=3.0, out=tmp_path / "meds", chunk_size=12, progress=False)
    config = sim.model.config
    want = {r.subject_id: _in_microseconds(r, config) for r in read_meds(as_meds.meds_dir)}
    got = {r.subject_id: _in_microseconds(r, config) for r in as_fhir.records()}
    assert got == want
    _round_trip(read_meds(as_meds.meds_dir), config, tmp_path / "again-from-meds", FhirLayout.NDJSON)
