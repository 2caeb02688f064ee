# streamd: the continual representation-learning daemon, CUDA-capable.
#
# Base: Python 3.11 (the project's pin, requires-python <3.12). The CUDA runtime comes with
# torch==2.14.1 from PyPI (its Linux wheels depend on the nvidia-* / cuda-toolkit 13 wheels), so
# the image runs on GPUs through the NVIDIA container toolkit (host driver only) and falls back
# to the CPU elsewhere. Every dependency is pinned by deploy/constraints.txt.
# Configuration: STREAMD_* environment variables and/or a TOML mounted at
# /etc/streamd/streamd.toml and passed with `--config` (see docs/deploy.md).
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STREAMD_API__HOST=0.0.0.0 \
    STREAMD_API__PORT=9400 \
    STREAMD_CHECKPOINT__DIR=/var/lib/streamd/checkpoints \
    STREAMD_SNAPSHOTS__DIR=/var/lib/streamd/snapshots

RUN groupadd --system --gid 10001 streamd \
    && useradd --system --uid 10001 --gid streamd --home-dir /var/lib/streamd --shell /usr/sbin/nologin streamd \
    && mkdir -p /var/lib/streamd/checkpoints /var/lib/streamd/snapshots /etc/streamd \
    && chown -R streamd:streamd /var/lib/streamd

WORKDIR /opt/streamd

# Dependencies first (a layer that survives source edits), then the package itself.
COPY deploy/constraints.txt ./constraints.txt
RUN pip install --constraint constraints.txt torch==2.14.1 torchvision==0.29.1

COPY pyproject.toml README.md ./
COPY streamd ./streamd
COPY models ./models
COPY connectors ./connectors
RUN pip install --constraint constraints.txt . \
    && streamd --help > /dev/null

USER 10001:10001
VOLUME ["/var/lib/streamd/checkpoints", "/var/lib/streamd/snapshots"]
EXPOSE 9400

# /healthz answers while the process lives; curl is not in the slim image, Python is.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('STREAMD_API__PORT', '9400'), timeout=4)"]

ENTRYPOINT ["streamd", "run"]
