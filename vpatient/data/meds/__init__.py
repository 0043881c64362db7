"""MEDS long tables in, :class:`~vpatient.schemas.PatientRecord` objects out, and back: the public API.

MEDS (Medical Event Data Standard) keeps a cohort as one long table with a row per
measurement: ``subject_id``, ``time`` (null for static rows), ``code``,
``numeric_value`` (nullable) and, optionally, ``text_value``. vpatient reads one CSV
or parquet file, or a MEDS directory (``data/**/*.parquet`` plus
``metadata/subject_splits.parquet`` and ``metadata/codes.parquet`` when present), and
writes MEDS directories that also carry the dataset config, so they describe
themselves.

Mapping rules (``C`` is a code a variable lists in ``VariableSpec.codes``; writing
uses ``codes[0]``):

========================  ==========================================================
kind                      rows
========================  ==========================================================
static                    ``C`` with null time; value = ``numeric_value``, or
                          ``categories[text_value]`` when the variable has categories.
static, ``encoding``      also ``C//VALUE`` (e.g. ``SEX//F``), null time or any time
``code_suffix``           (a birth date): value = ``categories[VALUE]``, or ``VALUE``
                          as a number when the variable has no categories. A VALUE
                          that is neither is a problem naming subject and code.
static reading            ``MEDS_BIRTH`` at the birth time; value = age at index in the
``MEDS_BIRTH``            config's time unit. Written back at time ``-age`` (numeric
                          times) or ``index_time - age`` (timestamps).
continuous, binary,       ``C`` at a time → Observation; value as for static. A row
ordinal                   with no value is a problem naming subject, code and time.
imaging_embedding         ``C//0`` … ``C//{d-1}`` at one time, ``numeric_value`` the
                          component → one ImagingStudy. Missing, duplicate or extra
                          components are problems.
history                   ``C`` at a time (possibly before index) → HistoryEntry.
treatment                 ``C//START`` (``numeric_value`` = dose, default 1.0) and
                          ``C//STOP`` → TreatmentExposure(start, stop or None, dose).
                          A STOP with no open START, or a START while one is open, is a
                          problem. At equal times a STOP closes before a START opens.
treatment, ``encoding``   also ``C`` at each visit, ``numeric_value`` = dose given
``per_visit_dose`` or     (0: none) or indicator (1: given, at dose 1.0; 0: not).
``per_visit_indicator``   A run starts at a visit with a positive value and stops at
                          the next visit with another value (a new dose starts a new
                          run there); the last run stays open (stop None), as a START
                          without a STOP. Other values, or two values at one time,
                          are problems.
event                     ``C`` at a time → Event(kind=variable name), e.g.
                          ``MEDS_DEATH`` → ``death``.
========================  ==========================================================

Follow-up and time axis:

- ``config.end_of_followup_code`` gives ``end_of_followup``; absent, the subject's last
  *anchoring* row. Anchoring rows are timed rows other than ``MEDS_BIRTH`` and static
  variables' rows (a birth date says nothing about follow-up); rows of unknown codes
  do anchor, since they still show the subject was being seen.
- Numeric times are already in the config's time unit since the index. Timestamps are
  made relative: index = the subject's ``config.index_code`` row (a subject without
  one is a problem), or, when the config sets none, its ``VPATIENT_INDEX`` row (what
  :func:`write_meds` writes), else its first anchoring row;
  ``t = (time - index) / time_unit``. The record keeps ``index_time``.
- Timestamps are naive; time-zone-aware input is converted to UTC first.
- ``config.index_code`` and ``config.end_of_followup_code`` must be marker codes that
  no variable reads (a ConfigError says so otherwise).

Unknown codes (no variable reads them) follow ``config.unknown_codes``: ``error`` and
``warn`` report each code once, with its count of rows and subjects; ``ignore`` drops
them silently.

Every variable also reads vpatient's own encoding (``encoding: vpatient``, the rows
above without the ``encoding`` lines), which is what the writer writes: data read from
the other encodings is written back in vpatient's, and reads back with the same config
to the same records.

Writing: a record with ``index_time`` gets a ``time`` column of ``datetime64[us]``
(offsets rounded to the microsecond); records without get a float column; a mix is
an error. Numeric-time data round-trip bit for bit. Deviations from the MEDS schema,
made so that round trips are lossless: ``numeric_value`` is float64 (MEDS: float32),
``time`` may be float (times since index) where the source had no calendar time, and
``subject_id`` is str when the ids are not all integers (MEDS: int64, as written otherwise).

Modules: :mod:`~vpatient.data.meds.codes` (the one table of codes, columns and dtypes,
shared with the virtual-cohort writer), :mod:`~vpatient.data.meds.read` (MEDS in) and
:mod:`~vpatient.data.meds.write` (MEDS out).
"""

from vpatient.data.meds.codes import (
    CODE_SEPARATOR,
    DEFAULT_INDEX_CODE,
    HELD_OUT_SPLIT,
    MEDS_BIRTH,
    MEDS_COLUMNS,
    MEDS_DEATH,
    MEDS_VERSION,
    REQUIRED_COLUMNS,
    START_SUFFIX,
    STOP_SUFFIX,
    TRAIN_SPLIT,
    TUNING_SPLIT,
)
from vpatient.data.meds.read import frame_to_records, iter_meds, load_config_for, read_meds
from vpatient.data.meds.write import move_into_place, records_to_frame, write_meds, write_meds_metadata, write_meds_shard
from vpatient.errors import OutputExistsError, UnknownCodeWarning

__all__ = [
    "CODE_SEPARATOR",
    "DEFAULT_INDEX_CODE",
    "HELD_OUT_SPLIT",
    "MEDS_BIRTH",
    "MEDS_COLUMNS",
    "MEDS_DEATH",
    "MEDS_VERSION",
    "REQUIRED_COLUMNS",
    "START_SUFFIX",
    "STOP_SUFFIX",
    "TRAIN_SPLIT",
    "TUNING_SPLIT",
    "OutputExistsError",
    "UnknownCodeWarning",
    "frame_to_records",
    "iter_meds",
    "load_config_for",
    "move_into_place",
    "read_meds",
    "records_to_frame",
    "write_meds",
    "write_meds_metadata",
    "write_meds_shard",
]
