"""The package's layers: no import cycle (imports inside functions included), a window that imports
nothing with I/O, no private name imported across modules, and no operator module importing another."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "airflow_provider_flux2"

#: Imports inside functions that are deliberately lazy (heavy, or only needed on one path), each with
#: why. Every other import inside a function counts as a module-level one, and none may close a cycle.
LAZY = {
    # The default reference resolver (boto3, the Amazon provider) is built only when a plan has
    # storage references and the caller passed none.
    ("airflow_provider_flux2.pricing", "airflow_provider_flux2.references"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Modules of ours ``path`` imports, at module level or inside a function (``TYPE_CHECKING`` aside)."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for child in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("airflow_provider_flux2"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "airflow_provider_flux2":
            found.update(f"airflow_provider_flux2.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("airflow_provider_flux2"))
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in imports(path) if m in modules and m != name and (name, m) not in LAZY}
        for name, path in modules.items()
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found = []

    def walk(node: str, stack: list[str], seen: set[str]) -> None:
        for nxt in sorted(edges[node]):
            if nxt in stack:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in seen:
                seen.add(nxt)
                walk(nxt, [*stack, nxt], seen)

    for start in sorted(edges):
        walk(start, [start], {start})
    return found


def reach(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_there_is_no_import_cycle_even_through_imports_inside_functions():
    found = cycles(graph())
    assert not found, found[:5]


def test_the_layer_test_sees_an_import_inside_a_function(tmp_path):
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from airflow_provider_flux2.models import Run\n    return Run\n")
    assert "airflow_provider_flux2.models" in imports(module)
    assert ["a", "b", "a"] in cycles({"a": {"b"}, "b": {"a"}})


def test_every_lazy_import_allowed_is_still_there():
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    for importer, imported in LAZY:
        assert imported in imports(modules[importer]), (importer, imported)


def test_the_window_imports_nothing_that_does_io():
    reached = reach(graph(), "airflow_provider_flux2.window")
    assert not {m for m in reached if m.startswith(("airflow_provider_flux2.hooks", "airflow_provider_flux2.storage"))}
    code = (
        "import sys, airflow_provider_flux2.window as w; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'httpx', 'airflow', 'boto3', 'PIL', 'botocore'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_module_imports_a_private_name_of_another():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("airflow_provider_flux2"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                assert not private, f"{module_name(path)} imports {private} from {node.module}"


def test_no_operator_imports_another_operator_module():
    edges = graph()
    operators = [m for m in edges if m.startswith("airflow_provider_flux2.operators.")]
    for name in operators:
        assert not {m for m in edges[name] if m in operators}, name


#: Modules whose unit tests live in a file of the same name under ``tests/unit`` (the module's
#: server-free behaviour; its tests over real sockets stay in ``tests/integration``).
MIRRORED = {
    "references.py": "test_references.py",
    "arguments.py": "test_arguments.py",
    "doctor.py": "test_doctor.py",
    "cli.py": "test_cli.py",
    "metrics.py": "test_metrics.py",
    "window.py": "test_window.py",
    "jobs.py": "test_jobs.py",
    "hooks/connection.py": "hooks/test_connection.py",
    "hooks/transport.py": "hooks/test_transport.py",
    "hooks/download.py": "hooks/test_download.py",
    "storage/report.py": "storage/test_report.py",
    "operators/quality.py": "operators/test_quality_operator.py",
    "operators/publish.py": "operators/test_publish_operator.py",
}


def test_the_tests_of_a_module_are_found_where_its_name_says():
    unit = Path(__file__).resolve().parent
    for module, tests in MIRRORED.items():
        assert (PACKAGE / module).is_file(), module
        found = unit / tests
        assert found.is_file(), f"{module}: no {found.relative_to(unit.parent)}"
        # It tests that module: imports it (a file of the right name about something else would not do).
        dotted = "airflow_provider_flux2." + module.removesuffix(".py").replace("/", ".")
        assert dotted in imports(found), f"{found.name} does not import {dotted}"


def test_no_two_test_files_share_a_name():
    """pytest imports test files by their base name (no packages under tests/): two of one name cannot
    run in one session."""
    names = [p.name for p in PACKAGE.parent.joinpath("tests").rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
