"""Writing a benchmark's result: ``<stem>.json`` (its schema is in ``data_schemas/``), ``<stem>.md`` and an optional figure."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

__all__ = ["write_result"]

log = logging.getLogger(__name__)


def write_result(
    result: BaseModel, out_dir: str | Path, stem: str, plot: Callable[[BaseModel, Path], object] | None = None
) -> list[Path]:
    """Write the JSON, the markdown (``result.to_markdown()``) and, given ``plot(result, path)``, a PNG."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(result.model_dump_json(indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(result.to_markdown(), encoding="utf-8")
    if plot is not None:
        paths.append(out / f"{stem}.png")
        plot(result, paths[-1])
    for path in paths:
        log.info("wrote %s", path)
    return paths
