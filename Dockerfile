# arserve's serving image: `docker compose up` (docker-compose.yml), or docs/deployment.md for the variants.
#   docker build -t arserve:0.1.0 .                                   # slim: ONNX Runtime only
#   docker build -t arserve:0.1.0-torch --build-arg TORCH=1 .         # + CPU torch (the PyTorch CPU index)
#   docker build -t arserve:0.1.0-torch --build-arg TORCH=1 --build-arg TORCH_INDEX_URL= .  # torch from wheels/
# Two stages: the dependencies go into /opt/venv in the first, and only that venv, app/ and exported/ reach
# the image (no pip cache, no torch wheel from wheels/).
FROM python:3.11-slim AS build

# TORCH=1 adds the TorchScript backend. Only torch's CPU build (version +cpu) is accepted: it comes from
# TORCH_INDEX_URL (the PyTorch CPU index; empty = do not ask it) or from a wheel put in wheels/. PyPI's
# Linux torch is the CUDA build (gigabytes the service never uses) and has no +cpu version, so a build
# that finds no CPU wheel fails instead of silently taking it.
ARG TORCH=0
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
RUN python -m venv --without-pip /opt/venv

COPY wheels/ ./wheels/
RUN if [ "$TORCH" = 1 ]; then \
      PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL" \
        pip --python /opt/venv/bin/python install "torch==${TORCH_VERSION}+cpu" --find-links ./wheels \
      && /opt/venv/bin/python -c "import torch; assert torch.version.cuda is None, torch.version.cuda"; \
    fi

# The dependencies from pyproject.toml alone (editing app/ does not reinstall them): the base list, which
# serves ONNX, plus the `torch` extra for TORCH=1 (satisfied by the +cpu build installed above). numpy's
# own test suites (17 MB) are never run here.
COPY pyproject.toml ./
RUN python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = p['optional-dependencies']['torch'] if os.environ['TORCH'] == '1' else []; \
print('\n'.join(p['dependencies'] + extras))" > requirements.txt \
 && pip --python /opt/venv/bin/python install -r requirements.txt \
 && find /opt/venv/lib/python3.11/site-packages/numpy -depth -type d -name tests -exec rm -rf {} +

# The service runs exported artifacts only: app/ and the model folders, never models/ (training code).
# Readable by the service's user whatever the umask of the checkout they were copied from.
COPY app/ ./srv/app/
COPY exported/ ./srv/exported/
RUN chmod -R u=rwX,go=rX ./srv


FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    ARSERVE_MODEL_DIR=/srv/exported

# A home directory: ONNX Runtime (and pip, Python's caches) look for one at startup.
RUN groupadd --system --gid 10001 arserve \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/arserve \
      --shell /usr/sbin/nologin arserve

COPY --from=build /opt/venv /opt/venv
WORKDIR /srv
COPY --from=build /build/srv/ ./

USER 10001:10001
EXPOSE 8000

# Liveness for `docker run`; docker-compose.yml checks /readyz instead (healthy once the models are loaded).
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]

# The README's serve command (make serve: app/serve.py's launcher and limits), exposed on the container's interfaces.
CMD ["python", "-m", "app.serve", "--host", "0.0.0.0", "--port", "8000"]
