"""The Mayo Clinic primary biliary cirrhosis (PBC) trial, shipped with the package.

312 patients randomised to D-penicillamine or placebo (1974-1984), 1,945 visits with
liver labs and clinical signs, followed until death, liver transplantation or
censoring (1986). Public data, distributed with R's ``survival`` package (``pbcseq``)
and the ``JM`` package (``pbc2``).

Cite: Fleming TR, Harrington DP. Counting Processes and Survival Analysis. Wiley,
1991; Murtaugh PA et al. Primary biliary cirrhosis: prediction of short-term survival
based on repeated patient visits. Hepatology 1994;20:126-134.

Coding choices (the config in ``files/pbc2_config.json`` declares them): time is years
since enrolment; bilirubin, alkaline phosphatase, SGOT, cholesterol and prothrombin
are log-transformed for modelling; edema is ordinal 0 / 0.5 / 1 (none / without
diuretics / despite diuretics), the usual coding of this trial; D-penicillamine is an
exposure from enrolment to the end of follow-up at dose 1, placebo is no exposure.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from vpatient.data.cohort import Cohort
from vpatient.errors import DataFormatError
from vpatient.schemas import DatasetConfig, parse_records

__all__ = ["PBC2_COLUMNS", "load_pbc2", "pbc2_config"]

_FILES = resources.files("vpatient.data") / "files"

#: Source column -> variable name, for the numeric labs.
_LABS = {
    "serBilir": "bilirubin",
    "albumin": "albumin",
    "alkaline": "alkaline_phosphatase",
    "SGOT": "sgot",
    "serChol": "cholesterol",
    "prothrombin": "prothrombin",
    "platelets": "platelets",
}
_YES_NO = {"ascites": "ascites", "hepatomegaly": "hepatomegaly", "spiders": "spiders"}
_EDEMA = {"No edema": 0.0, "edema no diuretics": 0.5, "edema despite diuretics": 1.0}
_STATUS_EVENT = {"dead": "death", "transplanted": "transplant", "alive": None}
_ARM_TREATMENT = {"D-penicil": "d_penicillamine", "placebo": None}

PBC2_COLUMNS = [
    "id",
    "years",
    "status",
    "drug",
    "age",
    "sex",
    "year",
    "ascites",
    "hepatomegaly",
    "spiders",
    "edema",
    *_LABS,
    "histologic",
]


def pbc2_config() -> DatasetConfig:
    """The dataset config of the embedded PBC data (variables, transforms, test catalogue)."""
    return DatasetConfig.model_validate_json((_FILES / "pbc2_config.json").read_text(encoding="utf-8"))


def load_pbc2(path: str | Path | None = None) -> Cohort:
    """Load the PBC trial as validated PatientRecords.

    ``path`` reads another copy of ``pbc2.csv`` in the same layout (the embedded copy
    by default).
    """
    source = Path(path) if path is not None else _FILES / "pbc2.csv"
    with source.open("rb") as handle:
        frame = pd.read_csv(handle)
    missing = [c for c in PBC2_COLUMNS if c not in frame.columns]
    if missing:
        raise DataFormatError(f"{source}: not a pbc2 table, missing column(s) {', '.join(missing)}")
    config = pbc2_config()
    records = parse_records((_record(rows) for _, rows in frame.groupby("id", sort=True)), config)
    records = [r.in_canonical_order(config) for r in records]
    return Cohort(name="pbc2", records=records, config=config, citation=config.citation)


def _record(rows: pd.DataFrame) -> dict:
    first = rows.iloc[0]
    end = float(first["years"])
    observations = []
    for row in rows.sort_values("year").itertuples(index=False):
        t = float(row.year)
        values: dict[str, object] = {name: getattr(row, col) for col, name in _LABS.items()}
        values |= {name: _yes_no(getattr(row, col)) for col, name in _YES_NO.items()}
        values["edema"] = _EDEMA[row.edema]
        values["histologic_stage"] = row.histologic
        observations += [
            {"time": t, "variable": name, "value": float(v)}
            for name, v in values.items()
            if v is not None and not (isinstance(v, float) and np.isnan(v))
        ]
    treatment = _ARM_TREATMENT[first["drug"]]
    event = _STATUS_EVENT[first["status"]]
    return {
        "subject_id": str(first["id"]),
        "static": {"age": float(first["age"]), "sex": 1.0 if first["sex"] == "male" else 0.0},
        "observations": observations,
        "treatments": [{"treatment": treatment, "start": 0.0, "stop": None, "dose": 1.0}] if treatment else [],
        "events": [{"time": end, "kind": event}] if event else [],
        "end_of_followup": end,
    }


def _yes_no(value: object) -> float | None:
    if isinstance(value, str):
        return {"Yes": 1.0, "No": 0.0}[value]
    return None
