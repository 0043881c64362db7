"""The one base of every benchmark result: strict pydantic, a shared header, markdown and one way to write it.

A result is written as ``<stem>.json`` (its schema is in ``data_schemas/``), ``<stem>.md``
(:meth:`BenchmarkResult.to_markdown`) and, for results that draw one, ``<stem>.png``
(:meth:`BenchmarkResult.plot`). The JSON is ``model_dump_json(indent=2)`` plus a newline,
so a committed result reloads and re-renders byte for byte.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from vpatient.atomic import staged_files
from vpatient.version import __version__

__all__ = ["DEFAULT_OUT_DIR", "BenchmarkResult", "StrictModel", "VersionedBenchmarkResult", "derived_seed", "targets_table"]

log = logging.getLogger(__name__)

#: Where ``vpatient benchmark ...`` writes its results unless told otherwise.
DEFAULT_OUT_DIR = Path("benchmarks/results")


class StrictModel(BaseModel):
    """A pydantic model that refuses unknown fields: a misspelt key in a result file is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid")


class BenchmarkResult(StrictModel):
    """A benchmark's result: ``benchmark`` names it (each subclass fixes the value); subclasses render and may plot."""

    benchmark: str

    @property
    def stem(self) -> str:
        """File name of the result without extension; subclasses add what tells two runs apart (e.g. the data)."""
        return self.benchmark

    def to_markdown(self) -> str:
        """The result as a markdown report."""
        raise NotImplementedError(f"{type(self).__name__} does not render markdown")

    def plot(self, path: Path) -> Path | None:
        """Draw the result's figure at ``path``; None when the result has no figure (the default)."""
        return None

    def write(self, out_dir: str | Path = DEFAULT_OUT_DIR, *, json_path: str | Path | None = None) -> list[Path]:
        """Write ``out_dir/<stem>.json`` (or ``json_path``), ``.md`` and, when :meth:`plot` draws one, ``.png``; returns their paths."""
        out = Path(out_dir)
        paths = [Path(json_path) if json_path is not None else out / f"{self.stem}.json", out / f"{self.stem}.md"]
        figure = out / f"{self.stem}.png"
        # every file is staged, then all are renamed into place: a killed write leaves the previous result or none
        root = out if paths[0].parent == out else None  # a new results folder is written whole
        with staged_files([*paths, figure], root=root) as (json_file, markdown_file, figure_file):
            json_file.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
            markdown_file.write_text(self.to_markdown(), encoding="utf-8")
            drawn = self.plot(figure_file)
            if drawn is None:
                figure_file.unlink()  # no figure: any earlier one stays as it was
        if drawn is not None:
            paths.append(figure)
        for path in paths:
            log.info("wrote %s", path)
        return paths


class VersionedBenchmarkResult(BenchmarkResult):
    """A result that records the vpatient version that produced it (every benchmark but effect calibration)."""

    vpatient_version: str = __version__


def derived_seed(seed: int, *keys: int) -> int:
    """A seed for one part of a run (a fold, a patient, a step), derived from the run's ``seed`` and the part's keys.

    Parts draw independent streams, and a part's numbers do not change when others are added or skipped.
    """
    import numpy as np

    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0] % (2**31 - 1))


def targets_table(
    targets: Iterable[tuple[str, float | None, str, bool]],
    header: tuple[str, str, str, str] = ("target", "value", "threshold", "result"),
    miss: str = "miss",
) -> str:
    """A result's targets as a markdown table: one row per (name, value, goal, passed), the last column pass or ``miss``."""
    import pandas as pd

    from vpatient.tables import markdown_table

    rows = [
        dict(zip(header, (name, value, goal, "pass" if passed else miss), strict=True)) for name, value, goal, passed in targets
    ]
    return markdown_table(pd.DataFrame(rows), index=False)
