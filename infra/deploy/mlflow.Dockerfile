# The MLflow tracking server of docker-compose.yaml: MLflow at the version the project's client uses
# (pyproject.toml's `mlflow` pin; a client and its server should match), with the PostgreSQL driver for the
# backend store and boto3 for the S3 (MinIO) artifact store.
FROM python:3.11.11-slim-bookworm
RUN pip install --no-cache-dir mlflow==3.17.2 psycopg2-binary==2.9.13 boto3==1.44.5
RUN useradd --create-home --uid 1000 mlflow
USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
