# syntax=docker/dockerfile:1
# tagsift images, one Dockerfile, three targets:
#   api         the HTTP API and migrations: no torch (ONNX Runtime serves /predict)
#   worker      the Celery worker on CPU (torch CPU wheels)
#   worker-gpu  the Celery worker with CUDA torch wheels (compose profile "gpu")
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

FROM base AS api
COPY docker/requirements-api.txt /tmp/requirements-api.txt
RUN pip install --no-cache-dir -r /tmp/requirements-api.txt
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY ml ./ml
COPY migrations ./migrations
RUN pip install --no-cache-dir --no-deps .
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["tagsift", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS worker
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY docker/requirements-api.txt docker/requirements-worker.txt /tmp/
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" -r /tmp/requirements-worker.txt
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY ml ./ml
COPY migrations ./migrations
RUN pip install --no-cache-dir --no-deps .
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "celery -A worker.celery_app:celery_app inspect ping -d celery@$(hostname) --timeout 10"]
CMD ["tagsift", "worker", "--pool", "prefork"]

# CUDA build of torch (PyPI's default Linux wheels bundle CUDA); the host needs the NVIDIA container toolkit.
FROM worker AS worker-gpu
USER 0
RUN pip install --no-cache-dir --force-reinstall --no-deps torch==2.14.1 torchvision==0.29.1
USER 10001:10001
ENV TAGSIFT_DEVICE=cuda
CMD ["tagsift", "worker", "--pool", "solo"]
