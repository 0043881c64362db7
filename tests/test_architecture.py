"""The package's layers: what importing the model loads, and no import cycle between modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import vpatient

PACKAGE = Path(vpatient.__file__).parent


def test_importing_the_model_loads_no_pydantic_pandas_or_sklearn():
    """`vpatient.model` promises torch and numpy only: records and tables stay in `vpatient.data`."""
    code = (
        "import sys\n"
        "import vpatient.model\n"
        "print(' '.join(sorted(m for m in ('pydantic', 'pandas', 'sklearn') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing vpatient.model loads {out.stdout.strip()}"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the vpatient modules it imports, anywhere in its source (top level, functions, TYPE_CHECKING).

    ``from a import b`` is an edge to module ``a.b`` when that is a module, else to ``a``.
    A package ``__init__`` that re-exports lazily (a table of module names read by
    ``__getattr__``) depends on every module it names.
    """
    files = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    modules = set(files)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets |= {known(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else known(base))
            elif is_package and isinstance(node, ast.Constant) and isinstance(node.value, str):
                for candidate in (node.value, f"{name}.{node.value}"):
                    if candidate in modules:
                        targets.add(candidate)
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for component in components:
        start = min(component)
        path, seen = [start], {start}
        while True:  # walk inside the component until a module repeats: that is a cycle
            step = min(w for w in graph[path[-1]] if w in component)
            if step in seen:
                out.append([*path[path.index(step) :], step])
                break
            path.append(step)
            seen.add(step)
    return out


def test_no_import_cycle_between_vpatient_modules():
    graph = import_graph()
    assert graph.get("vpatient.model.latent_ode")
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_model_layer_imports_only_itself():
    """Records become tensors in `vpatient.data.batching`; the model never reaches back for them."""
    graph = import_graph()
    outside = {
        m: sorted(t for t in ts if not t.startswith("vpatient.model"))
        for m, ts in graph.items()
        if m.startswith("vpatient.model")
    }
    assert not {m: ts for m, ts in outside.items() if ts}


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_command_line_starts_without_torch():
    """`vpatient --help` and every command's start-up import no torch: it is loaded by the commands that run a model."""
    code = "import sys, vpatient.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "importing vpatient.cli loads torch"
