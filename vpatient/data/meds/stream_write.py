"""A MEDS directory written shard by shard from a stream of records, with memory bounded by one shard.

:func:`write_meds` holds every record and its whole long table; a cohort of 10^5 and
more (``vpatient datasets export synthetic --n 100000``) is instead drawn chunk by
chunk (:func:`vpatient.data.synthetic.synthetic_stream`) and each chunk written as one
shard here. The directory is the same standard MEDS ``write_meds`` writes (shards
``data/<n>.parquet``, metadata, the dataset config), staged beside ``out_dir`` and
renamed into place.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import pandas as pd

from vpatient.atomic import check_output_dir, move_into_place
from vpatient.data.meds.codes import DATA_DIR, SOURCE_SUBJECT_ID, SUBJECT_ID, SUBJECT_ID_DTYPE, MedsLayout, is_integer_ids
from vpatient.data.meds.write import records_to_frame, write_meds_metadata, write_meds_shard
from vpatient.errors import DataFormatError
from vpatient.schemas import DatasetConfig, PatientRecord
from vpatient.staging import staging_dir

__all__ = ["write_meds_stream"]


def write_meds_stream(
    records: Iterable[PatientRecord],
    config: DatasetConfig,
    out_dir: str | Path,
    *,
    subjects_per_shard: int = 5000,
    overwrite: bool = False,
    dataset_name: str | None = None,
) -> tuple[Path, int]:
    """Write ``records`` as standard MEDS, ``subjects_per_shard`` a shard; returns the path and the subjects written.

    The first shard fixes the layout: ids that are not integers are numbered 0, 1, ...
    in stream order across shards (kept in ``source_subject_id``), as ``write_meds``
    numbers them; records are all with calendar times or all without. Splits are not
    written (a record with one is refused): streamed cohorts are synthetic.
    """
    if subjects_per_shard < 1:
        raise ValueError(f"subjects_per_shard must be at least 1, got {subjects_per_shard}")
    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite)
    tmp = staging_dir(out_dir)
    written, layout = 0, None
    try:
        for n, chunk in enumerate(_chunks(records, subjects_per_shard)):
            if any(r.split is not None for r in chunk):
                raise DataFormatError("streamed MEDS writing does not keep splits; write the cohort with write_meds")
            numbered = not is_integer_ids(r.subject_id for r in chunk)
            relative = all(r.index_time is None for r in chunk)
            if layout is None:
                layout = MedsLayout(standard=True, relative=relative, time_unit=config.time_unit, source_ids=numbered)
            elif (numbered and not layout.source_ids) or relative != layout.relative:
                raise DataFormatError(f"shard {n} of the stream differs from the first in its ids or kind of time")
            frame = records_to_frame(chunk, config)
            if layout.source_ids:
                numbers, _ = pd.factorize(frame[SUBJECT_ID], sort=False)  # in stream order, as write_meds numbers
                frame = frame.assign(
                    **{SOURCE_SUBJECT_ID: frame[SUBJECT_ID], SUBJECT_ID: (numbers + written).astype(SUBJECT_ID_DTYPE)}
                )
            write_meds_shard(frame, tmp / DATA_DIR / f"{n}.parquet", layout)
            written += len(chunk)
        if layout is None:
            raise DataFormatError("no records to write")
        write_meds_metadata(config, tmp, layout, dataset_name)
        move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir, written


def _chunks(records: Iterable[PatientRecord], size: int) -> Iterator[list[PatientRecord]]:
    iterator = iter(records)
    while chunk := list(islice(iterator, size)):
        yield chunk
