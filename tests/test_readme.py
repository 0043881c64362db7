"""The README's Python tour runs as written (its last line shows a refused record)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vpatient.errors import RecordValidationError

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_starts_with_the_two_commands():
    lines = [ln for ln in README.read_text().splitlines() if ln.strip()]
    assert lines[0] == "# vpatient"
    assert lines[2].startswith("make demo") and lines[3].startswith("make test")


@pytest.mark.slow
def test_python_tour_runs(tmp_path, monkeypatch):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecordValidationError, match=r"subject x: end_of_followup = -1\.0"):
        exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "pbc_meds" / "metadata" / "vpatient_config.json").is_file()
