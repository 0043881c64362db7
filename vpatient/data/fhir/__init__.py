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
                           dimensions 1). The Observation's ``effectiveDateTime`` is the
                           study's time; without one, the reader takes the study's ``started``.
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

Reading (:mod:`~vpatient.data.fhir.read`, :mod:`~vpatient.data.fhir.rows`): a Bundle
(``collection``, ``transaction``, ``searchset`` or ``batch``) as a ``.json`` file, NDJSON (one
resource or one Bundle a line), or a folder of either such as a Bulk Data export (one
``Type.ndjson`` per resource type). Each resource is validated by its ``fhir.resources`` R4B
model. References are ``Patient/{id}`` (also at the end of an absolute URL) or a Bundle
entry's ``fullUrl`` (``urn:uuid:...``; an entry's resource without an id, as a
transaction's POST entries come, takes that uuid as its id). Times: ``effectiveDateTime`` (else ``effectiveInstant``,
``effectivePeriod.start``), ``onsetDateTime`` (else ``onsetPeriod.start``, ``recordedDate``),
``performedDateTime`` (else ``performedPeriod.start``); time-zone-aware times are made UTC,
a date is its first moment. Treatment periods: ``MedicationStatement.effectivePeriod``,
``MedicationRequest.dosageInstruction[0].timing.repeat.boundsPeriod``,
``MedicationAdministration.effectivePeriod`` (dose: ``dosage.dose``); a medication without a
period start is refused ("a dose without a period"), and one without a dose gets the default
dose 1. Resources whose code no variable reads need no time, period or value (a drug given
by ``medicationReference`` counts as such a code). An Observation's ``component`` entries
(a blood-pressure panel's systolic and diastolic) are read as Observations of their own codes
at its time; a panel with components some variable reads is not an unknown code itself.
Quantities take their unit from ``code`` when ``system`` is UCUM, else from ``unit``, and are
converted to the variable's unit (:mod:`~vpatient.data.fhir.units`). Codes no
variable reads follow ``unknown_codes`` (reported by code, naming the resources) and their rows
still place the subject in follow-up, as in MEDS. ``Patient.gender``, ``birthDate`` and
``deceasedDateTime`` are read only when a variable reads ``GENDER``, ``MEDS_BIRTH`` or
``MEDS_DEATH``. Passed over, as saying nothing happened: resources ``entered-in-error``, ``not-taken``,
``not-done`` or ``cancelled``; Conditions whose ``verificationStatus`` is ``refuted`` or
``entered-in-error``; MedicationRequests whose ``intent`` is ``proposal`` or ``plan``; an Observation
(or component) with a ``dataAbsentReason`` and no value. Other resource types (Encounter, Practitioner, ...) are skipped and counted in one log line.
A Patient with no dated resource that a variable reads is left out, with a warning. A
``Patient.meta.tag`` of :data:`SPLIT_TAG_SYSTEM` gives the record's split.
"""

from vpatient.data.fhir.read import is_fhir, iter_fhir, read_fhir
from vpatient.data.fhir.write import FhirLayout, write_fhir

__all__ = ["FhirLayout", "is_fhir", "iter_fhir", "read_fhir", "write_fhir"]
