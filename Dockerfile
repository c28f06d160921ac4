# arserve: `docker compose up` (see docker-compose.yml), or
#   docker build -t arserve . && docker run -p 8000:8000 -v "$PWD/exported:/srv/exported:ro" arserve
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ARSERVE_MODEL_DIR=/srv/exported

WORKDIR /srv

# Dependencies before the code, from pyproject.toml alone: editing app/ does not reinstall them.
# torch comes from the CPU-only index first (the default wheel drags in gigabytes of CUDA the service never
# uses); the pinned torch==X in pyproject then matches the installed X+cpu and is left alone.
COPY pyproject.toml ./
RUN python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
print('\n'.join(d))" > /tmp/requirements.txt \
 && grep '^torch==' /tmp/requirements.txt > /tmp/torch.txt \
 && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu -r /tmp/torch.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt /tmp/torch.txt

RUN groupadd --system --gid 10001 arserve \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin arserve

# The service runs exported artifacts only: app/ and the model folders, never models/ (training code).
COPY app/ ./app/
COPY exported/ ./exported/

USER 10001:10001
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]

# The README's serve command (make serve: app/serve.py's launcher and limits), exposed on the container's interfaces.
CMD ["python", "-m", "app.serve", "--host", "0.0.0.0", "--port", "8000"]
