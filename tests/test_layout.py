"""The package's layout: no private name crosses a module boundary, and committed benchmark results re-render exactly."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vpatient"
RESULTS = ROOT / "benchmarks" / "results"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _private_imports(source: str, here: str) -> list[str]:
    """In module ``here``: ``from vpatient.x import _y``, imports of private vpatient modules, ``x._y`` on an imported module."""
    tree = ast.parse(source)
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vpatient":
            for alias in node.names:
                if node.module != here and (_private(alias.name) or any(_private(p) for p in node.module.split("."))):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
                if f"{node.module}.{alias.name}" in modules:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "vpatient":
                    continue
                if any(_private(p) for p in alias.name.split(".")):
                    found.append(f"line {node.lineno}: import {alias.name}")
                if alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and aliases[node.value.id] != here
        ):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_private_name_is_imported_across_modules():
    offences = {
        str(path.relative_to(ROOT)): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if (found := _private_imports(path.read_text(encoding="utf-8"), _module_name(path)))
    }
    assert not offences, f"private names used across modules (make them public, with a docstring): {offences}"


def test_notebooks_use_no_private_name_of_the_package():
    """The worked examples are what users copy: they must run on the public API alone."""
    import json

    offences = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        lines = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code").splitlines()
        source = "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))  # IPython magics
        if found := _private_imports(source, "notebook"):
            offences[path.name] = found
    assert not offences, f"notebooks use private names of vpatient: {offences}"


def test_the_check_sees_private_imports_and_attributes():
    source = "from vpatient.policy import _normalised\nimport vpatient.data.synthetic as s\ns._lab_links\n"
    found = _private_imports(source, "vpatient.benchmarks.base")
    assert any("_normalised" in f for f in found) and any("_lab_links" in f for f in found)
    assert not _private_imports("from vpatient import __version__\n", "vpatient.benchmarks.base")


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.stem)
def test_committed_result_reloads_and_rerenders_byte_for_byte(path):
    from vpatient.benchmarks.registry import load_result

    result = load_result(path)
    assert result.stem == path.stem
    assert result.model_dump_json(indent=2) + "\n" == path.read_text(encoding="utf-8")
    assert result.to_markdown() == path.with_suffix(".md").read_text(encoding="utf-8")
