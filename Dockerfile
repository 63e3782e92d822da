# Image Factory's Airflow image: the official Apache Airflow 3.3.2 image plus the providers the DAGs use
# (pins in requirements-airflow-image.txt, taken from requirements.txt). moto[server] is there only for the
# optional `local-cloud` compose service (the EC2 emulator).
# Built by `docker compose build` (docker-compose.yaml has `build: .`); see
# https://airflow.apache.org/docs/docker-stack/build.html
FROM apache/airflow:3.3.2

COPY requirements-airflow-image.txt /requirements-airflow-image.txt
# Naming apache-airflow at the image's own version keeps pip from up- or downgrading Airflow itself.
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /requirements-airflow-image.txt
