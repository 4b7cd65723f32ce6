#!/usr/bin/env bash
# The GPU figures of issue 13: publisher_overhead.py and vs_mlflow.py's fit part on the convnet
# workload, on a machine with a GPU but without TensorFlow (Keras 3 on JAX, whose CUDA build such
# images carry) and without network access. Run from the repository root:
#
#   WHEELS=.whl REDIS_DIR=.redis OUT=/tmp/out bash benchmarks/gpu_figures.sh [quick]
#
# WHEELS: a folder of Python 3.12 wheels for what Fitstream and MLflow need beyond the image
#         (keras, redis, hiredis, pydantic, sqlalchemy, alembic, mlflow-skinny, ...), installed with
#         --no-index into /tmp/site. REDIS_DIR: a redis-server binary and the shared libraries it
#         needs (LD_LIBRARY_PATH), started on 127.0.0.1:6379 unless one answers there already.
# OUT:    where the logs and vs_mlflow's .md/.json go. "quick" shrinks every run (a smoke test);
# WORKLOAD=digits runs the CPU workload instead of the convnet.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${OUT:=/tmp/fitstream-gpu}" "${WHEELS:=.whl}" "${REDIS_DIR:=.redis}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if [ -d "$WHEELS" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import redis; redis.Redis().ping()" 2>/dev/null; then
    LD_LIBRARY_PATH="$REDIS_DIR" "$REDIS_DIR/redis-server" --port 6379 --bind 127.0.0.1 --save "" \
        --appendonly no --daemonize yes --logfile "$OUT/redis.log" || exit 1
    sleep 1
fi
export KERAS_BACKEND="${KERAS_BACKEND:-jax}" XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
# Every fit builds a fresh model: JAX's persistent cache turns the identical recompiles into reads.
export JAX_COMPILATION_CACHE_DIR=/tmp/jax-cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$OUT/gpu.txt"
"$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); import _workloads; print(_workloads.accelerator_line())" \
    2>&1 | tee -a "$OUT/gpu.txt"
if [ "${1:-}" = quick ]; then
    overhead=(--repeats 1 --epochs 3 --warmup-epochs 1); vs=(--rounds 1 --epochs 3)
else
    overhead=(--repeats 4 --epochs 8 --warmup-epochs 2); vs=(--rounds 3 --epochs 8)
fi
"$PY" benchmarks/publisher_overhead.py --workload "${WORKLOAD:-convnet}" "${overhead[@]}" 2>&1 | tee "$OUT/publisher_overhead.txt"
"$PY" benchmarks/vs_mlflow.py --skip-ingest --workload "${WORKLOAD:-convnet}" "${vs[@]}" --results "$OUT/vs_mlflow-gpu" \
    2>&1 | tee "$OUT/vs_mlflow.txt"
