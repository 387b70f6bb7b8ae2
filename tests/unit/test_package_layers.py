"""The package's layers: no import cycles, and no operator module imports another."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "airflow_provider_flux2"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """Modules imported when ``path`` is imported (not inside functions or ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("airflow_provider_flux2"):
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("airflow_provider_flux2"))

    visit(tree.body)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in top_level_imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_there_is_no_import_cycle():
    edges = graph()
    cycles = []

    def walk(node, stack, seen):
        for nxt in sorted(edges[node]):
            if nxt in stack:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in seen:
                seen.add(nxt)
                walk(nxt, [*stack, nxt], seen)

    for start in sorted(edges):
        walk(start, [start], {start})
    # A package's __init__ re-exporting its modules is not a cycle of the code.
    real = [c for c in cycles if not any(m.endswith(("storage", "quality", "operators", "triggers")) for m in c)]
    assert not real, real[:5]


def test_no_operator_imports_another_operator_module():
    edges = graph()
    operators = [m for m in edges if m.startswith("airflow_provider_flux2.operators.")]
    for name in operators:
        assert not {m for m in edges[name] if m in operators}, name
