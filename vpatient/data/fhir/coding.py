"""MEDS codes <-> FHIR codings: the one table of vocabularies both directions use.

MEDS datasets spell a code from a standard vocabulary as ``VOCAB/value`` (``LOINC/1975-2``,
``ICD10CM/K74.3``); FHIR carries the same code as a ``Coding`` with the vocabulary's URI as
its ``system``. Codes of no known vocabulary (vpatient's own ``LAB//BILIRUBIN``, a site's
local codes) travel under :data:`LOCAL_SYSTEM`, unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vpatient.schemas import RELATIVE_EPOCH, DatasetConfig, VariableSpec

__all__ = [
    "BIRTH_TIME_EXTENSION",
    "LOCAL_SYSTEM",
    "RELATIVE_EPOCH",
    "RELATIVE_TIME_TAG",
    "SPLIT_TAG_SYSTEM",
    "UCUM_SYSTEM",
    "VOCABULARIES",
    "from_coding",
    "to_coding",
    "variable_concept",
]

#: FHIR code system of codes that belong to no vocabulary below (kept verbatim).
LOCAL_SYSTEM = "urn:vpatient:code"

#: :data:`~vpatient.schemas.RELATIVE_EPOCH` (records without calendar time) is shared with the
#: MEDS writer; the tag below marks such records in FHIR, so they read back as relative times.
RELATIVE_TIME_TAG = {"system": "urn:vpatient:tag", "code": "relative-time"}

#: ``Patient.meta.tag`` system whose code is the subject's MEDS split (``train``, ``tuning``, ``held_out``).
SPLIT_TAG_SYSTEM = "urn:vpatient:split"

#: The standard extension (on ``Patient.birthDate``) holding the time of birth as a dateTime.
BIRTH_TIME_EXTENSION = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"

#: Code system of UCUM units (``Quantity.system``).
UCUM_SYSTEM = "http://unitsofmeasure.org"

#: MEDS vocabulary prefix -> FHIR system URI (HL7 terminology, terminology.hl7.org).
VOCABULARIES: Mapping[str, str] = {
    "LOINC": "http://loinc.org",
    "SNOMED": "http://snomed.info/sct",
    "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "ICD10CM": "http://hl7.org/fhir/sid/icd-10-cm",
    "ICD9CM": "http://hl7.org/fhir/sid/icd-9-cm",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "ATC": "http://www.whocc.no/atc",
    "CPT4": "http://www.ama-assn.org/go/cpt",
    "NDC": "http://hl7.org/fhir/sid/ndc",
}


def _systems(config: DatasetConfig | None) -> dict[str, str]:
    """Prefix -> system: the standard vocabularies, then the config's own (which may override)."""
    own = dict(config.code_systems) if config is not None else {}
    return {**VOCABULARIES, **own}


def to_coding(code: str, config: DatasetConfig | None = None) -> tuple[str, str]:
    """The ``(system, code)`` of a FHIR Coding for a MEDS code."""
    prefix, sep, value = code.partition("/")
    if sep and value and not value.startswith("/"):
        system = _systems(config).get(prefix)
        if system is not None:
            return system, value
    return LOCAL_SYSTEM, code


def from_coding(system: str | None, code: str, config: DatasetConfig | None = None) -> str:
    """The MEDS code of a FHIR Coding: ``VOCAB/code`` for a known system, the code itself for
    :data:`LOCAL_SYSTEM` or a coding without system, and ``system|code`` otherwise (FHIR's own
    token spelling, so an unknown code is still named unambiguously in messages)."""
    if system is None or system == LOCAL_SYSTEM:
        return code
    own = list(config.code_systems.items()) if config is not None else []
    # the config's own prefix first: one that renames a standard system (LN for LOINC) is how its codes are spelled
    for prefix, uri in [*own, *VOCABULARIES.items()]:
        if uri == system:
            return f"{prefix}/{code}"
    return f"{system}|{code}"


def variable_concept(spec: VariableSpec, config: DatasetConfig | None = None) -> dict[str, Any]:
    """The CodeableConcept (as JSON) of a variable: the Coding of the code it is written under (``codes[0]``), its name as text."""
    system, value = to_coding(spec.codes[0], config)
    return {"coding": [{"system": system, "code": value}], "text": spec.name}
