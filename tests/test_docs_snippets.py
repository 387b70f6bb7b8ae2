"""Every Python snippet of the docs and the README runs as written (a page's snippets share one namespace).

A snippet preceded by ``<!-- snippet: fragment -->`` is a piece of something larger (it uses names the
page does not define): it is only compiled. ``<!-- snippet: raises NameError -->`` says it ends in that
exception, as its comment tells the reader. ``<!-- snippet: shell NAME -->`` names a bash block that
a test below runs as written, in a fresh folder (the quickstart's emulator, your own DAG, the doctor).

The pages themselves are checked too: code fences that close, what they count, each error once.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_BLOCK = re.compile(r"(?:<!--\s*snippet:\s*(?P<mark>[^>]*?)\s*-->\s*\n)?^```python\n(?P<code>.*?)^```", re.S | re.M)
_SHELL = re.compile(r"<!--\s*snippet:\s*shell\s+(?P<name>[\w-]+)\s*-->\s*\n```bash\n(?P<code>.*?)^```", re.S | re.M)
DOCS = REPO / "docs"
GITHUB = "https://github.com/airflow-provider-flux2/airflow-provider-flux2/blob/main/"


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


# -- shell steps, run as written --------------------------------------------------------------------------


def shell_snippets(page: Path) -> dict[str, str]:
    """The bash blocks of a page marked ``<!-- snippet: shell NAME -->``, by name."""
    return {m["name"]: m["code"] for m in _SHELL.finditer(page.read_text())}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _doctor_lines(text: str) -> dict[str, str]:
    """``{step: PASS|WARN|SKIP|FAIL}`` of the doctor's printed lines."""
    return {m[2]: m[1] for m in re.finditer(r"^(PASS|WARN|SKIP|FAIL) (.+?) +expected", text, re.M)}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_quickstarts_emulator_your_own_dag_and_the_doctor_run_as_written_on_a_fresh_machine(tmp_path):
    """The quickstart's shell steps and the troubleshooting page's doctor, in one shell, in a new folder.

    Nothing of the test session's Airflow reaches the shell: a fresh ``AIRFLOW_HOME`` (the step's own),
    no connection but the one the step exports. Only the port (a free one for 8787) and the DAG's
    output folder are changed.
    """
    quickstart, doctor = shell_snippets(DOCS / "quickstart.md"), shell_snippets(DOCS / "troubleshooting.md")
    (dag_code,) = [code for _, _, code in snippets(DOCS / "quickstart.md") if 'DAG("my_images"' in code]
    images = tmp_path / "flux-images"
    (tmp_path / "my_images.py").write_text(dag_code.replace("file:///tmp/flux-images", images.as_uri()))
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)  # the checkout's venv, as `.venv`
    script = "set -euo pipefail\n" + quickstart["emulator"] + quickstart["own-dag"] + doctor["doctor"]
    log = tmp_path / "shell.log"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    with log.open("w") as out:  # a file, not a pipe: the emulator left in the background keeps it open
        shell = subprocess.Popen(
            ["bash", "-c", script.replace("8787", str(_free_port()))],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            shell.wait(timeout=540)
        finally:  # the shell's process group: the shell, and the emulator it started with `&`
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGTERM)
    output = log.read_text()

    assert shell.returncode == 0, output[-5000:]
    assert "Dag run in success state" in output
    stored = sorted(p.name for p in images.glob("my_images/*/generate/*.jpg"))
    assert [name.rsplit("-", 1)[0] for name in stored] == ["00000-sneaker-studio", "00001-sneaker-street"]
    assert "all checks passed" in output
    # The page's sample output is what the doctor printed, step by step.
    sample = (DOCS / "troubleshooting.md").read_text().split("<!-- snippet: shell doctor -->", 1)[1]
    sample = sample[sample.index("```text") : sample.index("all checks passed")]
    documented, printed = _doctor_lines(sample), _doctor_lines(output)
    assert documented and {step: printed.get(step) for step in documented} == documented


def test_the_shell_steps_agree_on_the_emulators_key():
    emulator = shell_snippets(DOCS / "quickstart.md")["emulator"]
    key = re.search(r"--api-key (\S+)", emulator)

    assert key, "the quickstart's emulator is started with a key, so a wrong key is refused as by the real API"
    assert f'"password": "{key[1]}"' in emulator  # the connection it exports sends that key
    assert "--credit-usd" in emulator  # the doctor's balance step has a balance to read
    assert "airflow db migrate" in shell_snippets(DOCS / "quickstart.md")["own-dag"]


# -- the pages -------------------------------------------------------------------------------------------


def _fence_problems(page: Path) -> list[str]:
    problems, fence = [], None
    for number, line in enumerate(page.read_text().splitlines(), 1):
        match = re.match(r"^\s*(`{3,}|~{3,})(.*)$", line)
        if not match:
            continue
        marks, rest = match.groups()
        if fence is None:
            fence = marks
        elif marks.startswith(fence[0]) and len(marks) >= len(fence):
            if rest.strip():  # "``` Failed runs are…": not a closing fence, so the block runs on
                problems.append(f"{page.name}:{number}: text after a closing fence: {line.strip()[:40]!r}")
            fence = None
    if fence is not None:
        problems.append(f"{page.name}: a code block is never closed")
    return problems


def test_every_code_fence_closes_on_a_line_of_its_own():
    assert [problem for page in PAGES for problem in _fence_problems(page)] == []


def test_the_docs_count_the_dag_templates_that_ship():
    shipped = sorted(p.stem for p in (REPO / "dags").glob("flux2_*.py"))
    words = {3: "three", 4: "four", 5: "five", 6: "six"}
    count = words[len(shipped)]
    dags_page = (DOCS / "dags.md").read_text()

    assert dags_page.startswith("# DAG templates") and f"{count.capitalize()} DAGs ship in `dags/`" in dags_page
    for name in shipped:
        assert f"## {name} " in dags_page, name
    assert f"the {count} shipped DAGs" in (DOCS / "index.md").read_text()
    assert f"{count} DAG templates" in (REPO / "README.md").read_text()
    for page in [REPO / "README.md", *DOCS.glob("*.md")]:
        stale = set(words.values()) - {count}
        assert not re.search(rf"\b({'|'.join(stale)}) (DAG templates|DAG files|templates)\b", page.read_text()), page


def test_every_flux2_option_is_on_the_configuration_page():
    from airflow_provider_flux2.config import OPTIONS

    page = (DOCS / "configuration.md").read_text()
    assert [name for name in OPTIONS if f"| `{name}` |" not in page] == []


def test_troubleshooting_lists_each_error_once():
    rows = [line for line in (DOCS / "troubleshooting.md").read_text().splitlines() if line.startswith("| `")]
    first_cells = [row.split(" | ")[0] for row in rows]
    codes = re.findall(r"^\| `FluxAPIError` `(\w+)`", "\n".join(rows), re.M)

    assert len(first_cells) == len(set(first_cells))
    assert len(codes) == len(set(codes))
    # One row per message of an error: it is not given twice with different advice.
    spans = [re.findall(r"`([^`]+)`", cell) for cell in first_cells]
    messages = [(error, span) for error, *rest in spans for span in rest if " " in span]
    assert len(messages) == len(set(messages))


def test_the_reference_page_reads_on_github():
    """GitHub shows the site's ``:::`` directives as they are: each section links the source they render."""
    page = (DOCS / "reference.md").read_text()
    sections = re.split(r"^## ", page, flags=re.M)

    assert "on GitHub" in sections[0]
    for section in sections[1:]:
        directives = re.findall(r"^::: (airflow_provider_flux2[\w.]*)", section, re.M)
        sources = re.findall(rf"\]\({re.escape(GITHUB)}(airflow_provider_flux2/[\w/]+\.py)\)", section)
        assert directives and sources, section.splitlines()[0]
        for source in sources:
            assert (REPO / source).is_file(), source
        for name in directives:
            module = name.split(".")
            candidates = [
                "/".join(module[:i]) + suffix for i in range(len(module), 1, -1) for suffix in (".py", "/__init__.py")
            ]
            assert any(c in sources for c in candidates), f"{name}: no source link in its section"


def test_the_changelog_page_reads_on_github_and_includes_the_changelog():
    page = (DOCS / "changelog.md").read_text()
    changelog = (REPO / "CHANGELOG.md").read_text()

    assert f"]({GITHUB}CHANGELOG.md)" in page
    # The site's include starts after CHANGELOG.md's own title, which the page already has.
    assert page.startswith("# Changelog\n") and changelog.startswith("# Changelog\n")
    assert page.rstrip().endswith('--8<-- "CHANGELOG.md:2"')
