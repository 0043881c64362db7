"""Datasets by name: the embedded ones, and the user's own MEDS data by path.

``load_dataset("pbc2")``, ``load_dataset("synthetic", seed=1)`` or
``load_dataset("path/to/meds", config="config.json")`` all return a
:class:`~vpatient.data.cohort.Cohort`; every command that takes ``--data`` goes
through here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vpatient.data.cohort import Cohort
from vpatient.data.pbc import load_pbc2, pbc2_config
from vpatient.errors import ConfigError, DatasetNotFoundError
from vpatient.schemas import DatasetConfig

__all__ = [
    "EMBEDDED",
    "DatasetInfo",
    "list_datasets",
    "load_dataset",
    "load_pbc2",
    "pbc2_config",
    "synthetic_cohort",
    "synthetic_daily_cohort",
]


def synthetic_cohort(n: int = 500, seed: int = 0, **kwargs):
    """A synthetic cohort with known ground truth (see :mod:`vpatient.data.synthetic`)."""
    from vpatient.data.synthetic import synthetic_cohort as generate

    return generate(n=n, seed=seed, **kwargs)


def synthetic_daily_cohort(n: int = 1000, seed: int = 0, **kwargs):
    """The daily synthetic world (days; two drugs in runs; see :func:`vpatient.data.synthetic.daily_cohort`)."""
    from vpatient.data.synthetic import daily_cohort

    return daily_cohort(n=n, seed=seed, **kwargs)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    load: Callable[..., Cohort]
    generated: bool = True  # False: a fixed dataset, which a size (n) cannot apply to


EMBEDDED: dict[str, DatasetInfo] = {
    "pbc2": DatasetInfo(
        "pbc2",
        "Mayo Clinic PBC trial: 312 patients, 1,945 visits, D-penicillamine vs placebo (embedded).",
        lambda seed=0, n=None: load_pbc2(),
        generated=False,
    ),
    "synthetic": DatasetInfo(
        "synthetic",
        "Mechanistic multimodal generator with known ground truth (labs, signs, stage, 32-d imaging, history, treatment, death and progression).",
        lambda seed=0, n=None: synthetic_cohort(n=500 if n is None else n, seed=seed),
    ),
    "synthetic-daily": DatasetInfo(
        "synthetic-daily",
        "Daily oncology generator with known ground truth (60 daily visits; log tumour volume, marker, toxicity lab; "
        "two drugs in start/stop runs, confounded; death).",
        lambda seed=0, n=None: synthetic_daily_cohort(n=1000 if n is None else n, seed=seed),
    ),
}


def list_datasets() -> list[DatasetInfo]:
    """The embedded datasets, which run on any machine without a download."""
    return list(EMBEDDED.values())


def load_dataset(
    spec: str | Path,
    config: str | Path | DatasetConfig | None = None,
    *,
    seed: int = 0,
    n: int | None = None,
    default_config: DatasetConfig | None = None,
) -> Cohort:
    """Load an embedded dataset by name, or MEDS or FHIR data (file or directory) by path.

    For a path, ``config`` is the dataset config (JSON or YAML; FHIR needs one); a MEDS directory
    written by vpatient carries its own, used when ``config`` is None, and
    ``default_config`` (a trained model's own config, say) is the last resort. ``seed``
    and ``n`` apply to generated datasets.
    """
    name = str(spec)
    if name in EMBEDDED:
        if config is not None:
            raise ConfigError(f"dataset {name!r} is embedded and brings its own config; --config is for MEDS paths")
        if n is not None and not EMBEDDED[name].generated:
            raise ConfigError(f"dataset {name!r} has a fixed size; a number of subjects (n) applies to generated datasets only")
        return EMBEDDED[name].load(seed=seed, n=n)
    path = Path(name)
    if not path.exists():
        known = ", ".join(EMBEDDED)
        raise DatasetNotFoundError(f"no dataset {name!r}: not an embedded dataset ({known}) and no such file or directory")
    from vpatient.data.formats import read_records, stored_config

    cfg = _resolve_config(config) if config is not None else (stored_config(path) or default_config)
    if cfg is None:
        raise ConfigError(f"{path} carries no vpatient config: pass one with --config CONFIG.json")
    return Cohort(name=path.stem, records=read_records(path, cfg), config=cfg, citation=cfg.citation)


def _resolve_config(config: str | Path | DatasetConfig) -> DatasetConfig:
    return config if isinstance(config, DatasetConfig) else DatasetConfig.load(config)
