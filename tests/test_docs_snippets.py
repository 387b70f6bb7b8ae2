"""Every Python snippet of the docs and the README runs as written (a page's snippets share one namespace).

A snippet preceded by ``<!-- snippet: fragment -->`` is a piece of something larger (it uses names the
page does not define): it is only compiled. ``<!-- snippet: raises NameError -->`` says it ends in that
exception, as its comment tells the reader.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_BLOCK = re.compile(r"(?:<!--\s*snippet:\s*(?P<mark>[^>]*?)\s*-->\s*\n)?^```python\n(?P<code>.*?)^```", re.S | re.M)


def snippets(page: Path) -> list[tuple[int, str, str]]:
    """``(line, mark, code)`` of every Python block of a page."""
    text = page.read_text()
    return [(text[: m.start("code")].count("\n") + 1, m["mark"] or "", m["code"]) for m in _BLOCK.finditer(text)]


@pytest.mark.parametrize("page", [p for p in PAGES if snippets(p)], ids=lambda p: p.name)
def test_the_python_snippets_of_a_page_run(page, tmp_path, monkeypatch, emulator):
    from airflow.sdk import DAG

    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"snippets_{page.stem}"}
    # Snippets show what goes in a DAG file; they run inside a DAG, as they would there.
    with DAG(f"snippets_{page.stem.replace('-', '_')}", schedule=None):
        run_page(page, namespace)


def run_page(page: Path, namespace: dict[str, object]) -> None:
    for line, mark, code in snippets(page):
        where = f"{page.relative_to(REPO)}:{line}"
        compiled = compile(code, where, "exec")
        if mark == "fragment":
            continue
        if mark.startswith("raises "):
            expected = mark.split(None, 1)[1]
            with pytest.raises(Exception) as err:  # any exception: its name is checked below
                exec(compiled, namespace)
            assert type(err.value).__name__ == expected, where
            continue
        assert not mark, f"{where}: unknown snippet mark {mark!r}"
        exec(compiled, namespace)


def test_the_docs_have_snippets_and_most_of_them_run():
    marks = [mark for page in PAGES for _, mark, _ in snippets(page)]

    assert len(marks) >= 18
    assert sum(1 for m in marks if m != "fragment") >= 2 * len(marks) / 3
