# Image for Fitstream's processes (recorder; workers and other consumers in later issues).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY pipeline pipeline
COPY workers workers
COPY alerts alerts
COPY migrations migrations
COPY examples examples
RUN apt-get update && apt-get install -y --no-install-recommends procps && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir ".[postgres,s3]"
ENV TF_CPP_MIN_LOG_LEVEL=2
CMD ["fitstream", "--help"]
