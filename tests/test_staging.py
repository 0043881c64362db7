"""Stale staging paths: a writer killed outright leaves its staging folder beside the target; the next writer removes it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from vpatient.cli import app
from vpatient.datasets import load_dataset
from vpatient.simulation import Simulator
from vpatient.staging import STALE_AFTER_SECONDS, remove_stale_staging, staging_dir, staging_file
from vpatient.virtual_patient import VirtualPatientModel


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _stale(target, pid: int, kind: str = "dir"):
    """A staging path of ``target`` as a writer with process ``pid`` would have left it when killed."""
    path = target.with_name(f".{target.name}.{pid}.k1ll3d_x.tmp")
    if kind == "dir":
        (path / "data").mkdir(parents=True)
        (path / "data" / "0.parquet").write_bytes(b"half a shard")
    else:
        path.write_text("half a file")
    return path


def test_only_the_staging_paths_no_running_writer_owns_are_removed(tmp_path, dead_pid):
    target = tmp_path / "cohort"
    dead = _stale(target, dead_pid)
    dead_file = _stale(tmp_path / "result.json", dead_pid, "file")
    alive = _stale(target, os.getppid())  # a running process: its writer may still be at work
    old_unnamed = target.with_name(f".{target.name}.abcd_123.tmp")  # named before process ids were recorded
    young_unnamed = target.with_name(f".{target.name}.efgh_456.tmp")
    other_target = target.with_name(f".{target.name}.v2.{dead_pid}.k1ll3d_x.tmp")  # cohort.v2's: not ours to judge
    for path in (old_unnamed, young_unnamed, other_target):
        path.mkdir()
    an_hour_ago = time.time() - STALE_AFTER_SECONDS - 60
    os.utime(old_unnamed, (an_hour_ago, an_hour_ago))
    assert sorted(remove_stale_staging(target)) == sorted([dead, old_unnamed])
    mine = staging_dir(target)
    assert mine.name.startswith(f".cohort.{os.getpid()}.") and remove_stale_staging(target) == []
    assert all(p.exists() for p in (alive, mine, young_unnamed, other_target))
    assert not dead.exists() and not old_unnamed.exists()
    fresh = staging_file(tmp_path / "result.json")
    assert not dead_file.exists() and fresh.is_file() and fresh.name.startswith(f".result.json.{os.getpid()}.")


def test_datasets_export_removes_the_staging_folder_a_killed_export_left(tmp_path, dead_pid):
    out = tmp_path / "pbc_meds"
    stale = _stale(out, dead_pid)
    result = CliRunner().invoke(app, ["datasets", "export", "pbc2", str(out)])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and (out / "metadata" / "codes.parquet").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pbc_meds"]


def test_simulate_cohort_removes_the_staging_folder_a_killed_run_left(untrained_model_dir, tmp_path, dead_pid):
    model = VirtualPatientModel.load(untrained_model_dir)
    model.refine_steps = 0
    sim = Simulator(model)
    sim.fit_population(load_dataset("pbc2").records[:40], seed=0, save=False)
    out = tmp_path / "cohort"
    stale = _stale(out, dead_pid)
    sim.cohort(3, years=0.5, out=out, progress=False)
    assert not stale.exists() and (out / "meds" / "metadata").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]
