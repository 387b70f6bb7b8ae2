# Two commands on a fresh machine with only Python 3.10+ and make:
#   make demo   – set up, start the emulator, run the main sample DAG end to end, print where the images are
#   make test   – set up and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test cluster-test deploy-deps lint typecheck docs dist compose-env bench bench-scale soak compat emulator browser clean help

help:
	@echo "make demo | test | cluster-test | lint | typecheck | docs | dist | compose-env | bench | bench-scale | soak | compat | emulator | clean"

# Set up once: a venv with the package and its dev extras. A second call does not reinstall
# (the stamp is newer than pyproject.toml).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# Headless Chromium for the gallery test: Debian's package, installed when missing.
browser:
	@if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Debian's chromium for the browser test..."; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	else echo "chromium is missing and apt-get is not available: install Chromium to run the browser test" >&2; exit 1; fi

# Debian's PostgreSQL and Redis for the real-deployment harness (benchmarks/deployment.py), installed
# when missing; the harness starts throwaway servers on loopback, never the system's own.
deploy-deps:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v redis-server >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Debian's postgresql and redis-server for the deployment tests..."; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends postgresql redis-server >/dev/null; \
	else echo "postgresql and redis-server are missing and apt-get is not available: install them to run the deployment tests" >&2; exit 1; fi

# The whole suite, the real-deployment scenarios (tests/deployment, marker `cluster`) included; the
# benchmark's own end-to-end check (marker `bench`, minutes) runs with `make bench`.
# Four pytest-xdist workers on two cores: half of a test's time is spent waiting (on the emulator's
# clock, on Airflow's processes), so two workers a core keep both busy. Each worker has its own Airflow
# home, SQLite database, emulator and moto server (tests/conftest.py makes them per process), so no
# test shares state with another worker. The longest tests (the real deployments) come first in the
# collection (tests/conftest.py), so the worker that takes them starts them at once while the others
# steal the short ones. Measured on 2 cores: -n 2 680 s, -n 4 loadgroup (each executor's scenarios in a
# worker of their own, two deployments at once) 599 s, -n 4 worksteal 396-470 s (2026-12-07). The
# session is CPU-bound (about 750 CPU-s on 2 cores), and the deployment scenarios take about 350 s one
# after another on a quiet machine: see docs/performance.md, "make test's time".
# One session: the "disk I/O error" that once made the FLUX view's tests run apart came from a test
# that read airflow.db's bytes while its process held SQLite connections to it — closing any file
# descriptor of a database drops the process's POSIX locks on it (sqlite.org/howtocorrupt.html, 2.2);
# the secret search now skips the database files.
XDIST ?= -n 4 --dist worksteal
test: $(STAMP) browser deploy-deps
	$(PY) -m pytest -q $(XDIST) -m "not bench"
	@echo "mkdocs build --strict"; out=$$($(PY) -m mkdocs build --strict --site-dir .site-check 2>&1); rc=$$?; \
		echo "$$out" | grep -v '^INFO' || true; rm -rf .site-check; exit $$rc

# `make demo SENTINEL=1`: the same night with the DAG's Sentinel gate on (one product fails its verdict).
SENTINEL ?=
demo: $(STAMP)
	SENTINEL=$(SENTINEL) $(PY) scripts/demo.py

lint: $(STAMP)
	$(PY) -m ruff check airflow_provider_flux2 tests dags benchmarks scripts
	$(PY) -m ruff format --check airflow_provider_flux2 tests dags benchmarks scripts

typecheck: $(STAMP)
	$(PY) -m mypy

docs: $(STAMP)
	$(PY) -m mkdocs build --strict

# .env (generated Fernet key and passwords) and secrets/flux2_connections.json for docker-compose.airflow.yml.
compose-env: $(STAMP)
	$(PY) scripts/compose_env.py

# The wheel and the sdist in dist/ (the package is not on PyPI: install it from the wheel). Only what
# a build needs: `build` in a small venv of its own (hatchling comes in build's isolated environment),
# not the development environment.
BUILD_VENV ?= .venv-build
dist:
	@test -x $(BUILD_VENV)/bin/python || $(PYTHON) -m venv $(BUILD_VENV)
	$(BUILD_VENV)/bin/python -m pip install --quiet --upgrade pip build
	rm -rf dist
	$(BUILD_VENV)/bin/python -m build --outdir dist
	@ls -1 dist

# One short kill -9 scenario per executor on a real deployment (also part of `make test`).
cluster-test: $(STAMP) deploy-deps
	$(PY) -m pytest -q -m cluster tests/deployment

bench: $(STAMP) deploy-deps
	$(PY) -m pytest -q -m bench tests/benchmarks
	$(PY) benchmarks/run.py
	$(PY) benchmarks/deployment_bench.py
	$(PY) benchmarks/window_frontier.py
	$(PY) benchmarks/scale_bench.py

# The 10,000-image night alone (IMAGES=N for a smaller one): Celery, 2 workers, 2 triggerers, the API's limits.
bench-scale: $(STAMP) deploy-deps
	$(PY) benchmarks/scale_bench.py $(if $(IMAGES),--images $(IMAGES))

# The 2,000-image fault soak under dag.test(), then every kill -9 scenario on both executors.
soak: $(STAMP) deploy-deps
	$(PY) benchmarks/soak.py
	cd benchmarks && ../$(PY) chaos.py

# The whole suite against the oldest supported Airflow (a separate venv; not part of `make test`).
COMPAT_AIRFLOW ?= 3.1.8
COMPAT_VENV    ?= .venv-airflow-$(COMPAT_AIRFLOW)
compat: browser
	@test -x $(COMPAT_VENV)/bin/python || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(COMPAT_VENV)/bin/python -m pip install --quiet "apache-airflow==$(COMPAT_AIRFLOW)" -e '.[dev]'
	$(COMPAT_VENV)/bin/python -m pytest -q

emulator: $(STAMP)
	$(VENV)/bin/flux2 emulator --profile realistic

clean:
	rm -rf $(VENV) $(BUILD_VENV) .venv-airflow-* .airflow demo-output demo-output-staging site .pytest_cache .mypy_cache .ruff_cache
