"""MEDS long tables in, :class:`~vpatient.schemas.PatientRecord` objects out, and back: the public API.

MEDS (Medical Event Data Standard) keeps a cohort as one long table with a row per
measurement: ``subject_id``, ``time`` (null for static rows), ``code``,
``numeric_value`` (nullable) and, optionally, ``text_value``. vpatient reads one CSV
or parquet file, or a MEDS directory (``data/**/*.parquet`` plus
``metadata/subject_splits.parquet`` and ``metadata/codes.parquet`` when present), and
writes MEDS directories that also carry the dataset config, so they describe
themselves. What it writes is standard MEDS, as the ``meds`` package's schemas define it
(``DataSchema``, ``CodeMetadataSchema``, ``SubjectSplitSchema``, ``DatasetMetadataSchema``;
``vpatient validate`` checks a directory against them), unless the numeric-time
extension is asked for (below).

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

Writing (standard MEDS, the default). Every shard has ``meds.DataSchema``'s columns and
types (subject_id int64, time timestamp[us], code, numeric_value float32, text_value
large_string), then extension columns, declared in ``metadata/dataset.json``, that keep
records -> MEDS -> records lossless, bit for bit:

- ``numeric_value_f64`` (``other_extension_columns``): the float64 value where float32
  does not hold it exactly, null elsewhere. Other tools see the nearest float32 in
  ``numeric_value``, as MEDS defines it. Kept for every value rather than only where a
  short decimal would do, because embeddings and simulated values are arbitrary float64.
- Records without calendar time (``index_time`` None: PBC's times since enrolment,
  virtual cohorts) are placed at :data:`~vpatient.schemas.RELATIVE_EPOCH` (2000-01-01,
  the anchor the FHIR writer uses) plus their time, rounded to the microsecond, and
  dataset.json's ``vpatient`` section says so (``relative_time``, ``time_origin``,
  ``time_unit``). vpatient reads them back with ``index_time`` None and times
  ``(time - RELATIVE_EPOCH) / unit``. Microsecond rounding alone would be off by up to
  half a microsecond (1.6e-14 years); ``time_f64`` (``other_extension_columns``) holds
  the float time where the timestamp does not give it back exactly, so times are exact.
  A config with another time unit reads the timestamps (to the microsecond) and ignores
  ``time_f64``.
- Subject ids that are not all integers (``syn00001``) are numbered 0, 1, ... in id order;
  ``source_subject_id`` (``raw_source_id_columns``) keeps each row's original id, and the
  reader (and ``subject_splits.parquet``, which holds the numbers) maps them back.

An extension value is used only while the standard column still holds it rounded (its
float32, its microsecond): a value another tool changed since is read as changed. Each
shard also carries the layout in its parquet metadata, so a shard read on its own (a
file, not the directory) reads back exactly too. Other tools' MEDS (no ``vpatient``
section in dataset.json) is read as written: timestamps are calendar times, extension
columns are ignored, as are other extra columns (``unit``, ``site_id``). Records with ``index_time`` get calendar timestamps (offsets rounded to the
microsecond, the precision of their source); a mix of records with and without is an error.

The numeric-time extension (``write_meds(..., standard=False)``, CLI ``--meds-extension
numeric-time``) is vpatient's older layout and departs from the MEDS standard:
``numeric_value`` float64, ``time`` float (times since index) where the records have no
calendar time, ``subject_id`` str when the ids are not all integers. The reader keeps
reading it (directories written before the standard layout load unchanged).

Layouts are described by :class:`~vpatient.data.meds.codes.MedsLayout`, read back from a
directory by :func:`read_layout`; :func:`meds_schema_problems` checks a directory against
the ``meds`` schemas.

Modules: :mod:`~vpatient.data.meds.codes` (the one table of codes, columns, dtypes and
layouts, shared with the virtual-cohort writer), :mod:`~vpatient.data.meds.read` (MEDS
in), :mod:`~vpatient.data.meds.write` (MEDS out) and :mod:`~vpatient.data.meds.conformance`
(checks against the ``meds`` package's schemas).
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
    MedsLayout,
)
from vpatient.data.meds.columns import MedsBlocks, MedsColumns
from vpatient.data.meds.conformance import meds_schema_problems
from vpatient.data.meds.read import frame_to_records, iter_meds, load_config_for, read_layout, read_meds
from vpatient.data.meds.write import (
    meds_table,
    move_into_place,
    records_to_frame,
    write_meds,
    write_meds_metadata,
    write_meds_shard,
    write_meds_table,
)
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
    "MedsBlocks",
    "MedsColumns",
    "MedsLayout",
    "OutputExistsError",
    "UnknownCodeWarning",
    "frame_to_records",
    "iter_meds",
    "load_config_for",
    "meds_schema_problems",
    "meds_table",
    "move_into_place",
    "read_layout",
    "read_meds",
    "records_to_frame",
    "write_meds",
    "write_meds_metadata",
    "write_meds_shard",
    "write_meds_table",
]
