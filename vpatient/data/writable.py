"""The check every writer of records runs first: each record fits the config, and no subject id repeats.

A record that does not fit its config has variables with no code to be written under, or
values the config refuses; writing it anyway would give a file that does not read back.
Writers that stream (FHIR NDJSON, virtual cohorts) check one record at a time with
:class:`WritableCheck` and report every problem at the end; writers holding a list call
:func:`check_writable`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from vpatient.errors import Problem, RecordValidationError
from vpatient.schemas import DatasetConfig, PatientRecord, record_problems, repeated_id_problems

__all__ = ["WritableCheck", "check_writable"]


class WritableCheck:
    """Collects the problems of records on their way to a writer, one record at a time."""

    def __init__(self, config: DatasetConfig):
        self.config = config
        self.problems: list[Problem] = []
        self._ids: Counter[str] = Counter()

    def check(self, record: PatientRecord, *extra: Problem) -> bool:
        """Record the problems of ``record`` (and a writer's own ``extra`` ones); True when it has none."""
        found = [p for p in record_problems(record, self.config) if p.severity == "error"] + list(extra)
        self._ids[record.subject_id] += 1
        self.problems += found
        return not found

    @property
    def ok(self) -> bool:
        """True while no record checked so far has a problem (duplicate ids are only known at the end)."""
        return not self.problems

    def raise_if_any(self) -> None:
        """Raise one RecordValidationError listing every problem found, duplicate subject ids included."""
        problems = self.problems + repeated_id_problems(self._ids)
        if problems:
            raise RecordValidationError(problems, header=f"records do not fit config {self.config.name!r}; nothing written")


def check_writable(records: Iterable[PatientRecord], config: DatasetConfig) -> None:
    """Raise RecordValidationError, naming every problem, unless every record fits ``config`` and ids are unique."""
    check = WritableCheck(config)
    for record in records:
        check.check(record)
    check.raise_if_any()
