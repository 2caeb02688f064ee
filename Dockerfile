# streamd: the continual representation-learning daemon, CUDA-capable.
#
# BASE is any Debian bookworm image with Python 3.11 (the project's pin, requires-python <3.12) and
# its venv module: the public python:3.11 slim image by default; deploy/podman/build.py passes a local
# bookworm base where no registry can be reached. The CUDA runtime comes with torch==2.14.1 from PyPI
# (its Linux wheels depend on the nvidia-* / cuda-toolkit 13 wheels), so the image runs on GPUs through
# the NVIDIA container toolkit (host driver only) and falls back to the CPU elsewhere. Every dependency
# is pinned by deploy/constraints.txt; the image holds the client and the daemon extra, no test or bench extras.
# Configuration: STREAMD_* environment variables and/or a TOML mounted at /etc/streamd/streamd.toml
# and passed with `--config` (see docs/deploy.md). Everything the daemon writes defaults under
# STREAMD_STATE_DIR, the one volume; the root filesystem may be read-only.
ARG BASE=python:3.11.14-slim-bookworm
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/streamd/venv \
    PATH=/opt/streamd/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    STREAMD_STATE_DIR=/var/lib/streamd \
    STREAMD_API__HOST=0.0.0.0 \
    STREAMD_API__PORT=9400

RUN groupadd --system --gid 10001 streamd \
    && useradd --system --uid 10001 --gid streamd --home-dir /var/lib/streamd --shell /usr/sbin/nologin streamd \
    && mkdir -p /var/lib/streamd /etc/streamd \
    && chown streamd:streamd /var/lib/streamd

WORKDIR /opt/streamd

# Dependencies first (a layer that survives source edits), then the package itself without them.
COPY deploy/constraints.txt pyproject.toml ./
RUN python3 -m venv "$VIRTUAL_ENV" \
    && python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["daemon"]))' > requirements.txt \
    && pip install --constraint constraints.txt --requirement requirements.txt

COPY README.md ./src/
COPY pyproject.toml ./src/
COPY streamd ./src/streamd
COPY models ./src/models
COPY connectors ./src/connectors
RUN pip install --no-deps ./src \
    && rm -rf ./src \
    && streamd --help > /dev/null

# Relative paths given by an operator land on the state volume too.
WORKDIR /var/lib/streamd
USER 10001:10001
VOLUME ["/var/lib/streamd"]
EXPOSE 9400

# /healthz answers while the process lives; curl is not in the image, Python is (no writes: the
# root filesystem may be read-only).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('STREAMD_API__PORT', '9400'), timeout=4)"]

ENTRYPOINT ["streamd", "run"]
