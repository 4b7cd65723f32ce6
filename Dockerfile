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
# The image ships the bundled examples (pipeline.examples, with scikit-learn: the `examples` extra).
# GPU workers build with FITSTREAM_EXTRAS=postgres,s3,examples,cuda: TensorFlow's CUDA libraries come as wheels
# (tensorflow[and-cuda]), so this slim base serves GPUs too, given the host's NVIDIA driver and runtime.
ARG FITSTREAM_EXTRAS=postgres,s3,examples
RUN pip install --no-cache-dir ".[${FITSTREAM_EXTRAS}]"
ENV TF_CPP_MIN_LOG_LEVEL=2
CMD ["fitstream", "--help"]
