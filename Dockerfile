# syntax=docker/dockerfile:1
# tagsift images, one Dockerfile, three targets:
#   api         the HTTP API and migrations: no torch (ONNX Runtime serves /predict)
#   worker      the Celery worker on CPU (torch CPU wheels)
#   worker-gpu  the Celery worker with PyPI's CUDA torch and the nvidia-* wheels it depends on (compose profile "gpu")
# Build: docker build --target api -t tagsift-api .   (worker: --target worker, GPU: --target worker-gpu)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TAGSIFT_DATA_DIR=/data \
    TAGSIFT_MODEL_CACHE_DIR=/models \
    TAGSIFT_HOST=0.0.0.0
RUN groupadd --system --gid 10001 tagsift \
    && useradd --system --uid 10001 --gid tagsift --home-dir /app --shell /usr/sbin/nologin tagsift \
    && mkdir -p /app /data /models \
    && chown tagsift:tagsift /data /models
WORKDIR /app

# The service's source, once for every target: bench/, tests/ and docs/ stay out of the images.
FROM base AS source
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY ml ./ml
COPY vocab ./vocab
COPY migrations ./migrations

FROM base AS api
COPY docker/requirements-api.txt /tmp/requirements-api.txt
RUN pip install --no-cache-dir -r /tmp/requirements-api.txt
COPY --from=source /app /app
RUN pip install --no-cache-dir --no-deps .
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["tagsift", "serve", "--host", "0.0.0.0", "--port", "8000"]

# Both worker targets: the health file is rewritten by a thread of the worker's main process (worker/health.py), so
# the HEALTHCHECK answers during a job, also under --pool solo where `celery inspect ping` cannot.
FROM base AS worker
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY docker/requirements-api.txt docker/requirements-worker.txt /tmp/
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" -r /tmp/requirements-worker.txt
COPY --from=source /app /app
RUN pip install --no-cache-dir --no-deps .
USER 10001:10001
ENV TAGSIFT_DEVICE=cpu \
    TAGSIFT_WORKER_HEALTH_FILE=/tmp/tagsift-worker.health
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 CMD ["tagsift", "worker-health"]
CMD ["tagsift", "worker", "--pool", "prefork", "--device", "cpu"]

# CUDA torch: PyPI's Linux x86_64 torch wheel is the CUDA build and depends on the nvidia-* wheels (cuBLAS, cuDNN,
# NCCL, ...), so torch is installed here from PyPI WITH its dependencies (no CPU index, no --no-deps).
# docs/deploy.md shows the resolution (pip install --dry-run --report) and the nvidia-* packages it pulls.
# The host needs the NVIDIA driver and the NVIDIA container toolkit.
FROM base AS worker-gpu
COPY docker/requirements-api.txt docker/requirements-worker.txt /tmp/
RUN pip install --no-cache-dir -r /tmp/requirements-worker.txt \
    && python -c "import torch; assert torch.version.cuda, 'torch is a CPU build'; print(torch.__version__, torch.version.cuda)"
COPY --from=source /app /app
RUN pip install --no-cache-dir --no-deps .
USER 10001:10001
ENV TAGSIFT_DEVICE=cuda \
    TAGSIFT_WORKER_HEALTH_FILE=/tmp/tagsift-worker.health
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 CMD ["tagsift", "worker-health"]
# One process owns the GPU (solo pool); CUDA is initialised only in the process that runs the task.
CMD ["tagsift", "worker", "--pool", "solo", "--device", "gpu"]
