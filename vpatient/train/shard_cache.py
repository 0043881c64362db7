"""MEDS shards parsed once into numpy arrays, which streamed training reads back every epoch.

Parsing MEDS into records (code mapping, validation) costs far more than reading
arrays, so the streamed training data (:mod:`vpatient.train.stream`) parses each shard
once, in blocks of at most ``block_patients`` subjects, into the arrays
:func:`~vpatient.data.batching.make_batch` builds from records (not standardised), kept
ragged (visits and dose breakpoints flattened, patient after patient), one ``.npz`` per
block (plain arrays: loaded with ``allow_pickle=False``). Memory holds one block while
the cache is built. Member processes of an ensemble read the same cache.

The cache also keeps, per subject, what the split and the batches' padding need without
loading a block (its position in the reader's order, its counts of visits and dose
breakpoints), and a reservoir sample of records for the population model.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vpatient.data.batching import Scalers, dense_arrays, dose_tensors, layout_from_config, standardised_batch
from vpatient.data.meds.codes import is_integer_ids
from vpatient.data.meds.read import iter_meds, load_config_for, shard_files
from vpatient.errors import ConfigError, DataFormatError
from vpatient.model.batch import PatientBatch
from vpatient.schemas import DatasetConfig, PatientRecord

__all__ = ["Patients", "ShardCache"]

log = logging.getLogger(__name__)

#: arrays with a row per visit, and with a row per patient, as dense_arrays names them
VISIT_KEYS = ("times", "continuous", "binary", "ordinal", "imaging")
PATIENT_KEYS = ("static", "history_time", "event_time", "event_observed", "followup_end")


@dataclass
class Patients:
    """Patients as ragged arrays: a row per patient, per visit (patient-major) and per dose breakpoint.

    What :func:`~vpatient.data.batching.dense_arrays` and
    :func:`~vpatient.data.batching.dose_tensors` give for the same records, without the
    padding; :meth:`batch` pads them back and standardises, giving what ``make_batch``
    gives, bit for bit.
    """

    subject_ids: np.ndarray
    n_visits: np.ndarray
    n_doses: np.ndarray
    patient: dict[str, np.ndarray]
    visit: dict[str, np.ndarray]
    dose_times: np.ndarray
    doses: np.ndarray

    @classmethod
    def from_records(cls, records: Sequence[PatientRecord], config: DatasetConfig) -> Patients:
        layout = layout_from_config(config)
        raw = dense_arrays(records, config, layout)
        visits = raw["visit_mask"].astype(bool)
        dose_times, doses = (x.numpy() for x in dose_tensors([r.treatments for r in records], layout.treatments))
        points = np.isfinite(dose_times)  # dose_tensors pads with inf; a real breakpoint is a finite time
        return cls(
            subject_ids=np.array([r.subject_id for r in records], dtype=str),
            n_visits=visits.sum(axis=1).astype(np.int64),
            n_doses=points.sum(axis=1).astype(np.int64),
            patient={key: raw[key] for key in PATIENT_KEYS},
            visit={key: raw[key][visits] for key in VISIT_KEYS},
            dose_times=dose_times[points],
            doses=doses[points],
        )

    def __len__(self) -> int:
        return len(self.subject_ids)

    def take(self, index: np.ndarray) -> Patients:
        """The patients at ``index`` (in that order, repeats allowed)."""
        index = np.asarray(index, dtype=np.int64)
        visit_rows = _ragged_rows(self.n_visits, index)
        dose_rows = _ragged_rows(self.n_doses, index)
        return Patients(
            subject_ids=self.subject_ids[index],
            n_visits=self.n_visits[index],
            n_doses=self.n_doses[index],
            patient={key: value[index] for key, value in self.patient.items()},
            visit={key: value[visit_rows] for key, value in self.visit.items()},
            dose_times=self.dose_times[dose_rows],
            doses=self.doses[dose_rows],
        )

    @staticmethod
    def concat(parts: Sequence[Patients]) -> Patients:
        """The patients of ``parts``, one after another."""
        return Patients(
            subject_ids=np.concatenate([p.subject_ids for p in parts]),
            n_visits=np.concatenate([p.n_visits for p in parts]),
            n_doses=np.concatenate([p.n_doses for p in parts]),
            patient={key: np.concatenate([p.patient[key] for p in parts]) for key in parts[0].patient},
            visit={key: np.concatenate([p.visit[key] for p in parts]) for key in parts[0].visit},
            dose_times=np.concatenate([p.dose_times for p in parts]),
            doses=np.concatenate([p.doses for p in parts]),
        )

    def batch(self, scalers: Scalers, t_max: int | None = None, k_max: int | None = None) -> PatientBatch:
        """The standardised batch, visits padded to ``t_max`` and dose breakpoints to ``k_max`` (default: the most here)."""
        n = len(self)
        t_max = max(t_max or 0, int(self.n_visits.max(initial=0)), 1)
        k_max = max(k_max or 0, int(self.n_doses.max(initial=0)), 1)
        rows, cols = _ragged_cells(self.n_visits)
        raw = {key: value.copy() for key, value in self.patient.items()}
        raw["times"] = np.zeros((n, t_max))
        raw["times"][rows, cols] = self.visit["times"]
        raw["visit_mask"] = np.zeros((n, t_max))
        raw["visit_mask"][rows, cols] = 1.0
        for key in VISIT_KEYS[1:]:
            values = self.visit[key]
            raw[key] = np.full((n, t_max, values.shape[1]), np.nan)
            raw[key][rows, cols] = values
        dose_rows, dose_cols = _ragged_cells(self.n_doses)
        dose_times = np.full((n, k_max), np.inf, dtype=np.float32)
        dose_times[dose_rows, dose_cols] = self.dose_times
        doses = np.zeros((n, k_max, self.doses.shape[1]), dtype=np.float32)
        doses[dose_rows, dose_cols] = self.doses
        return standardised_batch(raw, torch.from_numpy(dose_times), torch.from_numpy(doses), self.subject_ids.tolist(), scalers)

    def save(self, path: Path) -> None:
        arrays = {f"patient/{k}": v for k, v in self.patient.items()} | {f"visit/{k}": v for k, v in self.visit.items()}
        np.savez(
            path, subject_ids=self.subject_ids, n_visits=self.n_visits, n_doses=self.n_doses,
            dose_times=self.dose_times, doses=self.doses, **arrays,
        )  # fmt: skip

    @classmethod
    def load(cls, path: Path) -> Patients:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        return cls(
            subject_ids=arrays["subject_ids"],
            n_visits=arrays["n_visits"],
            n_doses=arrays["n_doses"],
            patient={key: arrays[f"patient/{key}"] for key in PATIENT_KEYS},
            visit={key: arrays[f"visit/{key}"] for key in VISIT_KEYS},
            dose_times=arrays["dose_times"],
            doses=arrays["doses"],
        )


def _ragged_rows(counts: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Flat rows of the patients at ``index`` in a ragged array of ``counts`` rows per patient."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    take = counts[index]
    offsets = np.repeat(starts[index] - np.concatenate([[0], np.cumsum(take)[:-1]]), take)
    return offsets + np.arange(int(take.sum()), dtype=np.int64)


def _ragged_cells(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(patient, slot) of every flat row of a ragged array of ``counts`` rows per patient."""
    rows = np.repeat(np.arange(len(counts)), counts)
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return rows, np.arange(len(rows)) - np.repeat(firsts, counts)


class ShardCache:
    """A MEDS directory parsed once into blocks of arrays (module docstring), in a folder of its own.

    Per subject, in the cache's order (shard after shard, the reader's order within):
    ``block`` and ``row`` (where its arrays are), ``position`` (its place in the order
    ``read_meds`` returns records, which the validation split is drawn over), ``n_visits``
    and ``n_doses``. ``shard_of_block`` maps blocks to shards.
    """

    INDEX = "index.npz"
    SAMPLE = "sample.json"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        with np.load(self.directory / self.INDEX, allow_pickle=False) as index:
            for name in ("block", "row", "position", "n_visits", "n_doses", "shard_of_block", "subject_ids"):
                setattr(self, name, index[name])
        self.config = DatasetConfig.load(self.directory / "config.json")
        self.n_shards = int(self.shard_of_block.max(initial=-1)) + 1

    def __len__(self) -> int:
        return len(self.block)

    def load_block(self, block: int) -> Patients:
        return Patients.load(self.directory / f"{block}.npz")

    def blocks(self) -> Iterator[tuple[np.ndarray, Patients]]:
        """Each block's subjects (cache indices) and arrays, in order."""
        first = 0
        for block in range(len(self.shard_of_block)):
            patients = self.load_block(block)
            yield np.arange(first, first + len(patients)), patients
            first += len(patients)

    def sample(self) -> list[PatientRecord]:
        """The reservoir sample of records kept while building (for the population model)."""
        return [PatientRecord.model_validate(r) for r in json.loads((self.directory / self.SAMPLE).read_text())]

    @classmethod
    def build(
        cls,
        path: str | Path,
        directory: str | Path,
        config: DatasetConfig | None = None,
        *,
        block_patients: int = 1024,
        sample_patients: int = 5000,
        seed: int = 0,
    ) -> ShardCache:
        """Parse the MEDS directory at ``path`` once into ``directory`` (created empty); keeps ``sample_patients`` records.

        The sample is drawn uniformly from all subjects (reservoir sampling, from ``seed``).
        """
        path, out = Path(path), Path(directory)
        if not path.is_dir():
            raise DataFormatError(f"{path}: streamed training reads a MEDS directory (data/*.parquet); this is not one")
        config = config or load_config_for(path)
        if config is None:
            raise ConfigError(f"no dataset config given, and {path} has no stored one; pass one")
        out.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        sample: list[PatientRecord] = []
        seen = 0
        columns: dict[str, list[np.ndarray]] = {"n_visits": [], "n_doses": [], "subject_ids": []}
        shard_of_block: list[int] = []

        def flush(records: list[PatientRecord], shard: int) -> None:
            patients = Patients.from_records(records, config)
            patients.save(out / f"{len(shard_of_block)}.npz")
            shard_of_block.append(shard)
            columns["n_visits"].append(patients.n_visits)
            columns["n_doses"].append(patients.n_doses)
            columns["subject_ids"].append(patients.subject_ids)

        for shard, file in enumerate(shard_files(path)):
            pending: list[PatientRecord] = []
            for record in iter_meds(file, config):
                seen += 1
                if len(sample) < sample_patients:
                    sample.append(record)
                else:
                    j = int(rng.integers(0, seen))
                    if j < sample_patients:
                        sample[j] = record
                pending.append(record)
                if len(pending) == block_patients:
                    flush(pending, shard)
                    pending = []
            if pending:
                flush(pending, shard)
        if not shard_of_block:
            raise DataFormatError(f"{path}: the MEDS directory holds no subjects")
        ids = np.concatenate(columns["subject_ids"])
        sizes = [len(x) for x in columns["n_visits"]]
        np.savez(
            out / cls.INDEX,
            block=np.repeat(np.arange(len(sizes)), sizes),
            row=np.concatenate([np.arange(s) for s in sizes]),
            position=_reader_positions(ids, str(path)),
            n_visits=np.concatenate(columns["n_visits"]),
            n_doses=np.concatenate(columns["n_doses"]),
            shard_of_block=np.asarray(shard_of_block),
            subject_ids=ids,
        )
        (out / cls.SAMPLE).write_text(json.dumps([r.model_dump(mode="json") for r in sample]))
        config.save(out / "config.json")
        log.info("parsed %d subjects of %s into %d blocks", len(ids), path, len(sizes))
        return cls(out)

    @classmethod
    def temporary(cls, path: str | Path, config: DatasetConfig | None = None, **options: int) -> _TemporaryCache:
        """A cache in a new temporary folder, removed when the ``with`` block ends."""
        return _TemporaryCache(path, config, options)


class _TemporaryCache:
    def __init__(self, path: str | Path, config: DatasetConfig | None, options: dict[str, int]) -> None:
        self.path, self.config, self.options = path, config, options
        self.folder: str | None = None

    def __enter__(self) -> ShardCache:
        self.folder = tempfile.mkdtemp(prefix="vpatient-shards-")
        try:
            return ShardCache.build(self.path, self.folder, self.config, **self.options)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    def __exit__(self, *exc: object) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _reader_positions(ids: np.ndarray, source: str) -> np.ndarray:
    """Each subject's place in the order ``read_meds`` gives records: by id, numerically when every id is an integer."""
    keys = ids.astype(np.int64) if is_integer_ids(ids.tolist()) else ids
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    repeated = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    if len(repeated):
        raise DataFormatError(f"{source}: subject {sorted_keys[repeated[0]]} appears in more than one shard (or block of rows)")
    position = np.empty(len(ids), dtype=np.int64)
    position[order] = np.arange(len(ids))
    return position
