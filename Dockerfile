# The Airflow image used by docker-compose.airflow.yml: the official Airflow 3.3 image plus this provider.
ARG AIRFLOW_VERSION=3.3.2
FROM apache/airflow:${AIRFLOW_VERSION}

# Install as the airflow user, pinned to the image's Airflow so pip never up- or downgrades it.
COPY --chown=airflow:0 pyproject.toml README.md /opt/provider/
COPY --chown=airflow:0 airflow_provider_flux2 /opt/provider/airflow_provider_flux2
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" "/opt/provider[emulator]"
