"""``make dist`` builds a wheel a user can install: the package, its typing marker, the entry point, the extras."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (built,) = out.glob("airflow_provider_flux2-*-py3-none-any.whl")
    return built


@pytest.mark.slow
def test_the_wheel_holds_the_package_and_registers_the_provider(wheel):
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = whl.read(f"{dist_info}/entry_points.txt").decode()
        metadata = whl.read(f"{dist_info}/METADATA").decode()

    assert "airflow_provider_flux2/py.typed" in names
    assert "airflow_provider_flux2/storage/objectstore.py" in names
    assert not any(n.startswith(("tests/", "dags/", ".venv")) for n in names)
    assert "[apache_airflow_provider]" in entry_points
    assert "provider_info = airflow_provider_flux2.get_provider_info:get_provider_info" in entry_points
    assert "flux2 = airflow_provider_flux2.cli:main" in entry_points
    for extra in ("amazon", "statsd", "emulator", "dev"):
        assert f"Provides-Extra: {extra}" in metadata


@pytest.mark.slow
def test_the_installed_wheel_imports_and_answers_its_provider_info(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    code = (
        "import airflow_provider_flux2, json;"
        "from airflow_provider_flux2.get_provider_info import get_provider_info;"
        "print(airflow_provider_flux2.__file__);"
        "print(json.dumps(sorted(get_provider_info()['config']['flux2']['options'])))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        timeout=120,
    )

    module_file, options = result.stdout.splitlines()[:2]
    assert module_file.startswith(str(target))  # the wheel's copy, not the checkout
    assert "output_name_template" in options


def test_one_version_everywhere_and_airflow_bounded_by_its_next_major():
    """The package and the changelog's latest release name one version; no option was added after it."""
    import re

    import airflow_provider_flux2
    from airflow_provider_flux2.get_provider_info import get_provider_info

    pyproject = (REPO / "pyproject.toml").read_text()  # read as text: tomllib needs Python 3.11
    version = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE).group(1)
    assert airflow_provider_flux2.__version__ == version
    assert get_provider_info()["versions"][0] == version
    latest = re.search(r"^## \[([^\]]+)\]", (REPO / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert latest is not None and latest.group(1) == version
    added = {
        option["version_added"]
        for section in get_provider_info()["config"].values()
        for option in section["options"].values()
    }
    newest = max(added, key=lambda v: tuple(map(int, v.split("."))))
    assert tuple(map(int, newest.split("."))) <= tuple(map(int, version.split(".")))  # no option from the future
    airflow = re.search(r'"apache-airflow([^"]*)"', pyproject).group(1)
    assert ">=3.1" in airflow and "<4" in airflow


def test_the_install_page_names_every_airflow_process_and_installs_with_constraints():
    import re

    page = (REPO / "docs" / "installation.md").read_text()
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    processes = {row.split("|")[1].strip() for row in page.splitlines() if row.startswith("| ")}

    for process in ("scheduler", "dag-processor", "triggerer", "api-server"):
        assert process in processes, process
    assert any(p.startswith("workers") for p in processes)
    install = page[page.index("```bash") : page.index("```", page.index("```bash") + 3)]
    assert f"dist/airflow_provider_flux2-{version}-py3-none-any.whl" in install
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in install
    assert "constraints-${AIRFLOW_VERSION}/constraints-${PYTHON_VERSION}.txt" in install
    assert f"airflow-provider-flux2=={version}" in page and "apache-airflow>=3.1,<4" in page
