# The Airflow image used by docker-compose.airflow.yml: the official Airflow 3.3 image plus this provider.
ARG AIRFLOW_VERSION=3.3.2
FROM apache/airflow:${AIRFLOW_VERSION}

# Install as the airflow user, pinned to the image's Airflow so pip never up- or downgrades it.
# The build context is filtered by .dockerignore (no .venv, .git, .env or secrets/).
# Extras: the Amazon provider for s3:// connections, statsd for metrics, FAB for the UI login
# (docker-compose.airflow.yml sets the FAB auth manager), the emulator's server.
COPY --chown=airflow:0 pyproject.toml README.md /opt/provider/
COPY --chown=airflow:0 airflow_provider_flux2 /opt/provider/airflow_provider_flux2
RUN pip install --no-cache-dir "apache-airflow[fab]==${AIRFLOW_VERSION}" "/opt/provider[emulator,amazon,statsd]"
