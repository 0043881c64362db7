"""Kill-safe outputs: the staging helpers every writer uses, and `vpatient benchmark kill-safety` on a quick command."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from vpatient.atomic import staged_dir, staged_file, staged_files, write_text_atomic
from vpatient.benchmarks.kill_safety import COMMANDS, CommandKills, KillSafetyResult, kill_loop, make_inputs
from vpatient.cli import app
from vpatient.errors import OutputExistsError


def _entries(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_an_atomic_write_replaces_the_file_whole_and_a_failed_one_leaves_the_previous(tmp_path):
    target = tmp_path / "out" / "result.json"
    write_text_atomic(target, '{"v": 1}\n')
    write_text_atomic(target, '{"v": 2}\n')
    assert json.loads(target.read_text()) == {"v": 2}
    with pytest.raises(RuntimeError), staged_file(target) as staging:
        staging.write_text('{"v": 3, "half')
        raise RuntimeError("killed half way")
    assert json.loads(target.read_text()) == {"v": 2}
    with staged_file(target) as staging:
        staging.unlink()  # a writer with nothing to write leaves the target as it was
    assert _entries(target.parent) == ["result.json"]  # no staging file left behind


def test_a_staged_folder_replaces_an_earlier_output_but_never_an_unrelated_folder(tmp_path):
    out = tmp_path / "model"
    for version in (1, 2):
        with staged_dir(out, marker="model.json") as staging:
            (staging / "model.json").write_text(json.dumps({"version": version}))
    assert json.loads((out / "model.json").read_text()) == {"version": 2}
    with pytest.raises(ValueError), staged_dir(out, marker="model.json") as staging:
        (staging / "model.json").write_text("{")
        raise ValueError("failed half way")
    assert json.loads((out / "model.json").read_text()) == {"version": 2}
    assert _entries(tmp_path) == ["model"]
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match=r"no model\.json"), staged_dir(tmp_path / "home", marker="model.json"):
        pass
    assert (tmp_path / "home" / "notes.txt").read_text() == "keep me"


def test_the_completeness_checks_refuse_half_written_outputs(tmp_path):
    html = tmp_path / "card.html"
    html.write_text("<!doctype html><html><body>a report</body></html>\n")
    assert COMMANDS["report-model"].is_complete(html)
    html.write_text("<!doctype html><html><body>a rep")
    assert not COMMANDS["report-model"].is_complete(html)


def test_the_result_renders_its_counts_and_targets():
    row = dict(previous=3, new=1, corrupt=0, reruns_ok=4, ended_before_kill=0, stray_staging=0, run_seconds=2.5, seconds=20.0)
    good = KillSafetyResult(
        seed=0, kills_per_command=4, runtime_seconds=20.0, commands=[CommandKills(command="x", kills=4, **row)]
    )
    assert good.passed and "| x | 4 | 3 | 1 | 0 | 4 |" in good.to_markdown()
    bad = good.model_copy(update={"commands": [CommandKills(command="x", kills=4, **(row | {"corrupt": 1, "new": 0}))]})
    assert not bad.passed and "| corrupt outputs | 1 | = 0 | miss |" in bad.to_markdown()
    assert KillSafetyResult.model_validate_json(good.model_dump_json()) == good


def test_the_benchmark_refuses_an_unknown_command():
    result = CliRunner().invoke(app, ["benchmark", "kill-safety", "--commands", "schemas-export,nosuch"])
    assert result.exit_code == 2 and "'schemas-export,nosuch'" in result.output and "--commands" in result.output


@pytest.mark.slow  # seven interpreters, started and killed: about 15 s
def test_three_random_kills_of_schemas_export_leave_no_corrupt_output(tmp_path):
    inputs = make_inputs(tmp_path / "inputs", needs={"nothing"})
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    counts = kill_loop(COMMANDS["schemas-export"], inputs, scratch, kills=3, rng=np.random.default_rng(0))
    assert counts.error is None
    assert counts.kills == 3 and counts.previous + counts.new == 3, counts
    assert counts.corrupt == 0 and counts.reruns_ok == 3, counts.corrupt_examples
    assert COMMANDS["schemas-export"].is_complete(scratch / "schemas")
    next((scratch / "schemas").glob("*.schema.json")).unlink()  # a half set of schemas is not complete
    assert not COMMANDS["schemas-export"].is_complete(scratch / "schemas")


def test_a_set_of_files_in_a_new_folder_appears_whole_or_not_at_all(tmp_path):
    root = tmp_path / "schemas"
    paths = [root / "a.json", root / "examples" / "b.json"]
    with pytest.raises(RuntimeError), staged_files(paths, root=root) as staged:
        staged[0].write_text("{}")
        raise RuntimeError("killed between the two files")
    assert _entries(tmp_path) == []  # no folder, no staging left
    with staged_files(paths, root=root) as staged:
        for staging in staged:
            staging.write_text("{}")
    assert [p.read_text() for p in paths] == ["{}", "{}"] and _entries(tmp_path) == ["schemas"]


def test_sigterm_unwinds_a_command_so_its_staged_output_is_removed(tmp_path):
    """A stopped command (SIGTERM: torchrun, a scheduler, `kill`) leaves neither its output nor its staging folder."""
    script = (
        "import os, signal\n"
        "from vpatient.atomic import staged_dir, unwind_on_sigterm\n"
        "unwind_on_sigterm()\n"
        f"with staged_dir({str(tmp_path / 'out')!r}, marker='model.json') as staging:\n"
        "    (staging / 'model.json').write_text('{}')\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert list(tmp_path.iterdir()) == []
