"""``vpatient benchmark scale``: its options are checked before any of its (long) parts runs."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from vpatient.cli import app


def _said(result) -> str:
    """The command's output as one line, without the box typer draws around an error."""
    return re.sub(r"[\s│╭╮╰╯─]+", " ", result.output + str(result.exception or ""))


def test_the_simulation_parts_refuse_a_missing_model_or_one_without_population_before_anything_runs(tmp_path):
    out = tmp_path / "results"
    runner = CliRunner()
    missing = runner.invoke(app, ["benchmark", "scale", "--parts", "training,rollout", "--out-dir", str(out)])
    assert missing.exit_code == 2 and "needs --model" in _said(missing)
    bare = tmp_path / "model"
    bare.mkdir()
    without = runner.invoke(app, ["benchmark", "scale", "--parts", "cohort", "--model", str(bare), "--out-dir", str(out)])
    assert without.exit_code == 2 and "has none" in _said(without)
    assert not out.exists()  # refused before the training part, which would have written cohorts and results


def test_an_unknown_part_is_refused_naming_the_choices(tmp_path):
    result = CliRunner().invoke(app, ["benchmark", "scale", "--parts", "training,gpu", "--out-dir", str(tmp_path / "r")])
    assert result.exit_code != 0
    assert "gpu" in _said(result) and "distributed" in _said(result)
