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

import numpy as np

from vpatient.data import fhir
from vpatient.data.fhir import FhirLayout, write_fhir
from vpatient.data.meds import read_meds
from vpatient.data.meds.codes import MEDS_BIRTH, MICROS_PER_DAY
from vpatient.datasets import load_dataset, synthetic_cohort
from vpatient.schemas import DatasetConfig, PatientRecord, parse_record


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


def test_a_pbc_model_trained_from_fhir_forecasts_as_one_trained_from_the_embedded_data(tmp_path):
    """Issue 14's target: same seed, same settings, data from FHIR or from the package -> the same forecasts."""
    from vpatient.train import TrainSettings
    from vpatient.virtual_patient import VirtualPatientModel

    cohort = load_dataset("pbc2")
    records = cohort.records[:40]
    folder = write_fhir(records, cohort.config, tmp_path / "pbc_fhir", layout=FhirLayout.NDJSON)
    cohort.config.save(tmp_path / "pbc2_config.json")
    read_back = load_dataset(folder, tmp_path / "pbc2_config.json").records  # the path --data takes
    assert [r.subject_id for r in read_back] == [r.subject_id for r in records]
    settings = TrainSettings(epochs=1, members=1, seed=5, batch_size=16, threads=1)
    models = [VirtualPatientModel.fit(rs, cohort.config, settings, progress=False) for rs in (records, read_back)]
    patient = records[3]
    forecasts = [m.forecast(patient, horizon=2.0, n_samples=16, seed=2) for m in models]
    a, b = (f.summary() for f in forecasts)
    assert a.shape == b.shape and len(a) > 0
    numeric = a.select_dtypes("number").columns
    # bit for bit: times differ from the embedded data's below float32's resolution, so training never sees it
    assert np.array_equal(a[numeric].to_numpy(), b[numeric].to_numpy())
    sa, sb = (f.survival_summary() for f in forecasts)
    assert np.array_equal(sa.select_dtypes("number").to_numpy(), sb.select_dtypes("number").to_numpy())
