"""FHIR in and out: :class:`~vpatient.schemas.PatientRecord` objects <-> FHIR R4B resources.

Reading turns each resource into the MEDS rows it stands for (subject, time, code, value)
and hands them to the MEDS reader's :func:`~vpatient.data.meds.frame_to_records`, so one
set of rules (codes, encodings, units of time, follow-up, validation) serves MEDS and FHIR
alike, and a config that reads a MEDS extract reads the same cohort sent as FHIR.

Codes. A variable's MEDS code ``C`` (from ``VariableSpec.codes``; writing uses ``codes[0]``)
and a FHIR ``Coding`` correspond through :mod:`vpatient.data.fhir.coding`: ``VOCAB/value``
with a known vocabulary prefix (``LOINC/1975-2``, the MEDS community's spelling) is
``Coding(system=<the vocabulary's URI>, code="1975-2")``; a config may add its own prefixes
(``DatasetConfig.code_systems``); any other code is ``Coding(system=LOCAL_SYSTEM, code=C)``.
Reading a resource with several codings takes the first one some variable reads.

Mapping (``t`` below is the record's time, made a dateTime as ``index_time + t`` in the
config's time unit, rounded to the microsecond as MEDS timestamps are, and written in UTC
with all six fraction digits: ``2001-02-03T04:05:06.789012Z``; values are written as
Python writes floats, so they read back bit for bit):

=========================  =================================================================
record part                FHIR
=========================  =================================================================
subject_id                 ``Patient.id``; every other resource refers to ``Patient/{id}``.
                           Other resources' ids are ``{subject_id}-{n}``, ``n`` counting the
                           subject's resources in the order below.
split                      ``Patient.meta.tag`` with system :data:`SPLIT_TAG_SYSTEM`, code the split.
index_time,                ``EpisodeOfCare`` (status ``finished``) whose ``period`` runs from
end_of_followup            the index to the end of follow-up. Absent: the index is the first
                           dated resource and follow-up ends at the last (the MEDS rules).
no index_time              Written from the anchor :data:`RELATIVE_EPOCH` with ``Patient.meta.tag``
                           :data:`RELATIVE_TIME_TAG`; read back with ``index_time`` None.
static read from birth     ``Patient.birthDate`` plus the standard ``patient-birthTime``
(``MEDS_BIRTH``)           extension (a dateTime, so the age is kept to the microsecond).
other static               ``Observation`` at the index, ``valueQuantity`` (numbers; a value
                           with categories is also read from ``valueString``,
                           ``valueCodeableConcept`` or ``valueBoolean``). ``Patient.gender`` is
                           read as code ``GENDER`` with the gender as its text value when some
                           variable lists ``GENDER``.
continuous, binary,        ``Observation`` (status ``final``), ``effectiveDateTime``,
ordinal                    ``valueQuantity`` with the UCUM unit; values in another unit of the
                           same dimension are converted (:mod:`vpatient.data.fhir.units`).
                           Written: ``unit`` is the config's unit verbatim, with ``system``
                           UCUM and ``code`` the same text where the writer recognises it as
                           UCUM; a variable without unit gets a Quantity with a value alone.
imaging_embedding          ``ImagingStudy`` (``started``) plus an ``Observation`` with
                           ``partOf`` the study and ``valueSampledData`` (the vector, in order:
                           ``data`` the components separated by spaces; origin 0, period 1,
                           dimensions 1).
history                    ``Condition`` (``onsetDateTime``); ``Procedure`` is read too.
treatment                  ``MedicationStatement``: ``medicationCodeableConcept``,
                           ``effectivePeriod`` (no end: still given), dose in
                           ``dosage[0].doseAndRate[0].doseQuantity``. ``MedicationRequest``
                           (period in ``dosageInstruction[0].timing.repeat.boundsPeriod``) and
                           ``MedicationAdministration`` are read too.
event reading MEDS_DEATH   ``Patient.deceasedDateTime``.
other events               ``Condition`` with ``onsetDateTime``; ``Procedure`` is read too.
=========================  =================================================================

Writing (:func:`write_fhir`, :mod:`vpatient.data.fhir.write`): one Bundle of type
``collection`` in a ``.json`` file, a folder of per-patient Bundles ``{subject_id}.json``, or
a folder of FHIR Bulk Data NDJSON files, one per resource type (``Patient.ndjson``, ...).
"""

from vpatient.data.fhir.write import FhirLayout, write_fhir

__all__ = ["FhirLayout", "write_fhir"]
