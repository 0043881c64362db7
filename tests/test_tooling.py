"""The development tooling agrees with itself: pre-commit's ruff is the ruff that `make lint` runs."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pinned(requirement_prefix: str) -> str:
    dev = (ROOT / "pyproject.toml").read_text()
    match = re.search(rf'"{re.escape(requirement_prefix)}==([^"]+)"', dev)
    assert match, f"{requirement_prefix} is not pinned in pyproject.toml"
    return match.group(1)


def test_pre_commit_ruff_is_the_pinned_ruff():
    """A hook on another ruff would pass commits that `make lint` fails (rules and formatting change between versions)."""
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    revs = [repo["rev"] for repo in config["repos"] if repo["repo"].endswith("/ruff-pre-commit")]
    assert revs == [f"v{_pinned('ruff')}"]


def test_the_venv_runs_the_pinned_ruff():
    assert version("ruff") == _pinned("ruff")


def test_pre_commit_config_is_valid():
    """Validating the config reads no network (hooks are only fetched by `pre-commit run`)."""
    pytest.importorskip("pre_commit")
    done = subprocess.run(
        [sys.executable, "-m", "pre_commit", "validate-config", ".pre-commit-config.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
