"""A MEDS table of integer-numbered subjects held as numpy columns, for writers that make millions of rows.

Virtual cohorts measure a chunk of patients variable by variable; each variable gives a
block of rows (ids, times, one code, values). :class:`MedsBlocks` gathers the blocks
without building a pandas frame per block, and :class:`MedsColumns` is the result:
numpy columns, with codes and text labels as indices into short vocabularies (a chunk
has a few dozen distinct codes and labels among its hundreds of thousands of rows).
It becomes the arrow table of a shard directly (:meth:`MedsColumns.table`, the same
table :func:`~vpatient.data.meds.write.meds_table` makes of its frame), or that frame
(:meth:`MedsColumns.frame`) for callers that want pandas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from vpatient.data.meds.codes import CODE, NUMERIC_VALUE, SUBJECT_ID, SUBJECT_ID_DTYPE, TEXT_VALUE, TIME, MedsLayout

__all__ = ["MedsBlocks", "MedsColumns"]


@dataclass
class MedsColumns:
    """MEDS rows as numpy columns: ``code`` and ``text`` index ``codes`` and ``labels`` (text -1: none)."""

    subject_id: np.ndarray  # (R,) int64
    time: np.ndarray  # (R,) float64, NaN for static rows
    code: np.ndarray  # (R,) int32 into codes
    numeric_value: np.ndarray  # (R,) float64, NaN for none
    text: np.ndarray  # (R,) int32 into labels, -1 for none
    codes: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.subject_id)

    def take(self, rows: np.ndarray) -> MedsColumns:
        """The rows at ``rows``, in that order."""
        return MedsColumns(
            self.subject_id[rows],
            self.time[rows],
            self.code[rows],
            self.numeric_value[rows],
            self.text[rows],
            self.codes,
            self.labels,
        )

    def in_meds_order(self) -> MedsColumns:
        """Rows by subject, static rows (no time) first, then by time; ties keep their order (a stable sort).

        The order :func:`~vpatient.data.meds.write.meds_order` gives, with two sort keys
        instead of four: a static row's NaN time sorts as minus infinity, before every
        timed row of its subject, and lexsort is stable.
        """
        t = np.where(np.isnan(self.time), -np.inf, self.time)
        return self.take(np.lexsort((t, self.subject_id)))

    def code_array(self) -> pa.Array:
        """The codes as an arrow string array (taken from the vocabulary, not built string by string)."""
        return _strings(self.code, self.codes, pa.string())

    def text_array(self) -> pa.Array:
        """The text values as an arrow large-string array (MEDS's type for them), null where there is none."""
        return _strings(self.text, self.labels, pa.large_string())

    def frame(self) -> pd.DataFrame:
        """The rows as the MEDS frame :func:`~vpatient.data.meds.write.meds_rows` makes (object codes and texts)."""
        text = np.asarray([*self.labels, None], dtype=object)[np.where(self.text < 0, len(self.labels), self.text)]
        return pd.DataFrame(
            {
                SUBJECT_ID: self.subject_id.astype(SUBJECT_ID_DTYPE, copy=False),
                TIME: self.time,
                CODE: np.asarray(self.codes, dtype=object)[self.code] if self.codes else np.zeros(0, dtype=object),
                NUMERIC_VALUE: self.numeric_value,
                TEXT_VALUE: text,
            }
        )

    def table(self, layout: MedsLayout) -> pa.Table:
        """The arrow table of a shard in ``layout``: what :func:`~vpatient.data.meds.write.meds_table` makes of :meth:`frame`."""
        from vpatient.data.meds.write import meds_table, standard_meds_table

        if not layout.standard or layout.source_ids:
            return meds_table(self.frame(), layout)
        return standard_meds_table(self.subject_id, self.time, self.code_array(), self.numeric_value, self.text_array(), layout)

    @classmethod
    def concat(cls, parts: Sequence[MedsColumns]) -> MedsColumns:
        """The parts one after another, their vocabularies merged."""
        blocks = MedsBlocks()
        for part in parts:
            blocks.extend(part)
        return blocks.columns()


def _strings(index: np.ndarray, vocabulary: Sequence[str], kind: pa.DataType) -> pa.Array:
    missing = index < 0
    indices = pa.array(np.where(missing, 0, index).astype(np.int32), pa.int32(), mask=missing if missing.any() else None)
    dictionary = pa.array(list(vocabulary) or [""], kind)
    return pa.DictionaryArray.from_arrays(indices, dictionary).cast(kind)


class MedsBlocks:
    """Blocks of MEDS rows gathered in order, then joined once (:meth:`columns`)."""

    def __init__(self) -> None:
        self._columns: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._codes: dict[str, int] = {}
        self._labels: dict[str, int] = {}

    def code_index(self, code: str) -> int:
        return self._codes.setdefault(code, len(self._codes))

    def _label_index(self, label: str) -> int:
        return self._labels.setdefault(label, len(self._labels))

    def add(
        self,
        ids: np.ndarray,
        t: np.ndarray | None,
        code: str | np.ndarray,
        values: np.ndarray | None = None,
        labels: Mapping[float, str] | None = None,
    ) -> None:
        """Rows as :func:`~vpatient.data.meds.write.meds_rows` makes them: one per id, ``t`` None for static rows.

        ``code`` is one code for every row or, per row, an int array of :meth:`code_index`
        numbers. A value that ``labels`` names is written as that text instead of a number.
        """
        n = len(ids)
        if n == 0:
            return
        numeric = np.full(n, np.nan) if values is None else np.asarray(values, dtype=np.float64)
        text = np.full(n, -1, dtype=np.int32)
        for number, label in (labels or {}).items():
            match = numeric == number
            if match.any():
                text[match] = self._label_index(label)
                numeric = np.where(match, np.nan, numeric)
        codes = np.full(n, self.code_index(code), dtype=np.int32) if isinstance(code, str) else np.asarray(code, dtype=np.int32)
        times = np.full(n, np.nan) if t is None else np.asarray(t, dtype=np.float64)
        self._columns.append((np.asarray(ids, dtype=np.int64), times, codes, numeric, text))

    def extend(self, rows: MedsColumns) -> None:
        """Append ready-made rows, their code and label numbers translated to this builder's."""
        if not len(rows):
            return
        code_map = np.asarray([self.code_index(c) for c in rows.codes], dtype=np.int32)
        label_map = np.asarray([self._label_index(label) for label in rows.labels] + [-1], dtype=np.int32)
        text = label_map[np.where(rows.text < 0, len(rows.labels), rows.text)]
        self._columns.append((rows.subject_id, rows.time, code_map[rows.code], rows.numeric_value, text))

    def columns(self) -> MedsColumns:
        """Every block so far, in the order added."""
        if not self._columns:
            empty = np.zeros(0)
            return MedsColumns(empty.astype(np.int64), empty, empty.astype(np.int32), empty, empty.astype(np.int32), [], [])
        ids, t, code, value, text = (np.concatenate(parts) for parts in zip(*self._columns, strict=True))
        return MedsColumns(ids, t, code, value, text, list(self._codes), list(self._labels))
