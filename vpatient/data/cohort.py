"""A cohort: validated patient records together with the config that describes them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from vpatient.errors import VPatientError
from vpatient.schemas import DatasetConfig, PatientRecord

__all__ = ["NO_TREATMENT_ARM", "Cohort", "arm_of"]

#: Arm label of a subject who received no treatment at baseline.
NO_TREATMENT_ARM = "none"


@dataclass(frozen=True)
class Cohort:
    """Records of many subjects and their dataset config, as every loader returns them."""

    name: str
    records: list[PatientRecord]
    config: DatasetConfig
    citation: str | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[PatientRecord]:
        return iter(self.records)

    def subject(self, subject_id: str | int) -> PatientRecord:
        """The record of one subject, or an error that says how many subjects there are."""
        wanted = str(subject_id)
        for record in self.records:
            if record.subject_id == wanted:
                return record
        raise VPatientError(f"no subject {wanted!r} in cohort {self.name!r} ({len(self.records)} subjects)")

    def subject_ids(self) -> list[str]:
        return [r.subject_id for r in self.records]


def arm_of(record: PatientRecord) -> str:
    """The treatment arm at baseline: treatments active at t=0 joined by '+', or 'none'."""
    names = sorted({e.treatment for e in record.treatments if e.start <= 0 and (e.stop is None or e.stop > 0) and e.dose > 0})
    return "+".join(names) if names else NO_TREATMENT_ARM
