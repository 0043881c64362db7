"""CPU time per row of the virtual-cohort MEDS writer (``write_meds_shard``), for before/after comparisons.

Builds a cohort-shaped MEDS frame of 20,000 virtual patients with :func:`~vpatient.data.meds.write.meds_rows`,
as ``observe`` does (12 visits of six labs and an ordinal with labels over ten years, birth, sex, death for
some, end of follow-up; about 1.75 M rows in two chunks of 10,000), then writes both chunks seven times and
prints the best CPU time (``time.process_time``: the least sensitive to other load on a shared machine).
Runs against trees from before ``MedsLayout`` as well (their ``write_meds_shard`` takes no layout), so the
same script measures both sides of a change:

    PYTHONPATH=. nice -n 19 env OMP_NUM_THREADS=1 python scripts/meds_write_speed.py
"""

from __future__ import annotations

import inspect
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from vpatient.data.meds import write_meds_shard
from vpatient.data.meds.write import meds_order, meds_rows

N, CHUNK, VISITS, REPEATS = 20_000, 10_000, 12, 7
LABS = ["LAB//BILI", "LAB//ALB", "LAB//ALP", "LAB//AST", "LAB//PLT", "LAB//PT"]


def chunk_frame(first_id: int, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """One chunk's MEDS rows, in MEDS order, with float times since index (as the simulator makes them)."""
    ids = np.arange(first_id, first_id + n)
    t = np.sort(rng.uniform(0, 10, size=(n, VISITS)), axis=1).ravel()
    visit_ids = np.repeat(ids, VISITS)
    blocks = [meds_rows(visit_ids, t, code, rng.lognormal(size=n * VISITS)) for code in LABS]
    stage = rng.integers(1, 5, n * VISITS).astype(float)
    blocks.append(meds_rows(visit_ids, t, "STAGE", stage, {1.0: "I", 2.0: "II"}))
    blocks.append(meds_rows(ids, -rng.uniform(30, 80, n), "MEDS_BIRTH"))
    blocks.append(meds_rows(ids, None, "SEX", rng.integers(0, 2, n).astype(float), {0.0: "male", 1.0: "female"}))
    end = t.reshape(n, VISITS)[:, -1] + rng.uniform(0, 1, n)
    dead = rng.uniform(size=n) < 0.3
    blocks.append(meds_rows(ids[dead], end[dead], "MEDS_DEATH"))
    blocks.append(meds_rows(ids, end, "VPATIENT_END_OF_FOLLOWUP"))
    frame = pd.concat(blocks, ignore_index=True)
    return frame.iloc[meds_order(frame["subject_id"].to_numpy(), frame["time"].to_numpy())].reset_index(drop=True)


def main() -> None:
    rng = np.random.default_rng(0)
    frames = [chunk_frame(first, min(CHUNK, N - first), rng) for first in range(0, N, CHUNK)]
    rows = sum(len(f) for f in frames)
    extra = {}
    if "layout" in inspect.signature(write_meds_shard).parameters:
        from vpatient.data.meds.codes import MedsLayout

        extra = {"layout": MedsLayout(relative=True)}
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(REPEATS):
            start = time.process_time()
            for i, frame in enumerate(frames):
                write_meds_shard(frame, Path(tmp) / str(repeat) / f"part-{i:05d}.parquet", **extra)
            seconds.append(time.process_time() - start)
        size = sum(p.stat().st_size for p in (Path(tmp) / "0").iterdir())
    best = min(seconds)
    print(
        f"{N:,} patients, {rows:,} rows: best of {REPEATS} {best:.3f} s CPU ({best / rows * 1e9:.0f} ns/row), {size / 1e6:.1f} MB"
    )


if __name__ == "__main__":
    main()
