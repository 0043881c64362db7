"""Command-line options shared by ``vpatient benchmark ...`` and ``vpatient simulate|whatif|trial ...``.

Each alias is a typer ``Annotated`` type: a command declares ``seed: SeedOption = 0`` and
gets the same flag name and help as every other command taking a seed. Defaults stay in
the signatures, where typer reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = [
    "IN_TIME_UNIT",
    "CacheDirOption",
    "ConfigOption",
    "DataOption",
    "FoldsOption",
    "FormatOption",
    "ModelOption",
    "OutDirOption",
    "PatientDataOption",
    "ProgressOption",
    "SeedOption",
    "TrialDataOption",
]

DataOption = Annotated[str, typer.Option("--data", help="Embedded dataset (pbc2, synthetic) or a MEDS or FHIR path.")]
TrialDataOption = Annotated[
    str, typer.Option("--data", help="The randomised trial: an embedded dataset (pbc2) or a MEDS or FHIR path.")
]
ConfigOption = Annotated[Path | None, typer.Option("--config", help="Dataset config (JSON or YAML) for MEDS or FHIR paths.")]
PatientDataOption = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="Dataset holding the patient: embedded (pbc2, synthetic) or a MEDS or FHIR path, read with --config, else its own "
        "config, else the model's (default: the dataset the model was trained on).",
    ),
]
#: How every time option's help names its unit: times are in the data's own unit, never converted.
IN_TIME_UNIT = "in the data's time unit (the config's time_unit)"
ModelOption = Annotated[Path, typer.Option("--model", help="Checkpoint directory (vpatient train --out).")]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same numbers.")]
FoldsOption = Annotated[int, typer.Option("--folds", min=2, help="Cross-validation (cross-fitting) folds over patients.")]
CacheDirOption = Annotated[
    Path, typer.Option("--cache-dir", help="Trained fold models are cached here, shared by the benchmarks and trial adjust.")
]
OutDirOption = Annotated[
    Path, typer.Option("--out-dir", help="Directory of the results: JSON, markdown and, where the benchmark draws one, PNG.")
]
FormatOption = Annotated[
    str,
    typer.Option(
        "--format",
        help="Format of the records written: meds (a MEDS directory) or fhir (FHIR R4B: Bulk Data NDJSON, one file "
        "per resource type; a path ending in .json gets one Bundle).",
    ),
]
ProgressOption = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr.")]
SizeOption = Annotated[
    int | None,
    typer.Option("--n", min=20, help="Subjects to generate (generated datasets only; default: the dataset's own size)."),
]
MembersOption = Annotated[
    int,
    typer.Option(
        "--members",
        min=1,
        help="Ensemble members, each trained on a bootstrap resample: the model's own uncertainty (1: a single model).",
    ),
]
SettingsFileOption = Annotated[
    Path | None,
    typer.Option(
        "--settings",
        exists=True,
        dir_okay=False,
        help="JSON file of training and model settings (any fields of TrainSettings and ModelSettings); options given here override it.",
    ),
]
#: Members of a trained model unless told otherwise (Lakshminarayanan et al. 2017: five suffice for calibrated uncertainty).
DEFAULT_MEMBERS = 5
