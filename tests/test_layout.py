"""The package's shape: no import cycles, and the modules that promise to stay torch-free do."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "auditor"

# Imported by `auditor run --help`, by plugins and by the renderers: no torch at import.
TORCH_FREE = ("auditor.report", "auditor.report.html", "auditor.report.pdf", "auditor.report.manifest",
              "auditor.report.files", "auditor.report.svg", "auditor.document", "auditor.options",
              "auditor.declarations", "auditor.registry", "auditor.config", "auditor.cli", "auditor.progress",
              "auditor.report.maps", "auditor.report.schema", "auditor.compare")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_at_load(path: Path, name: str, known: set[str]) -> set[str]:
    """The auditor modules `path` imports when it is loaded: top-level statements only (not inside functions
    or `if TYPE_CHECKING:`), each with the packages above it, whose __init__ runs first, except this
    module's own packages (Python is already loading them when it loads this module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            parts = target.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & known
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
    return found - own


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {name: imported_at_load(path, name, known) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                return path[path.index(child):] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_graph_has_no_cycles() -> None:
    graph = import_graph()
    assert "auditor.context" in graph["auditor.audit"]  # the graph is read, not empty
    assert find_cycle(graph) is None


@pytest.mark.parametrize("module", TORCH_FREE)
def test_modules_that_promise_no_torch_import_none(module: str) -> None:
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
