# syntax=docker/dockerfile:1
# heimdall-stream consumer image: multi-stage, slim, non-root; runtime dependencies and the `train`
# extra (the compose file's reference-model job runs `train-reference` from this image), no dev tools.
#
# BASE_IMAGE is any Debian bookworm image with python3 (3.11) and its venv module. The default
# comes from Docker Hub; `make image` (deploy/image/image) assembles a local one from Debian's
# packages when it builds with buildah, so the image builds without Docker Hub too.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# A virtual environment, not the system site-packages: Debian's python3 refuses system-wide pip
# installs (PEP 668), and a self-contained /opt/heimdall-stream can be copied as one layer.
RUN python3 -m venv /opt/heimdall-stream
COPY pyproject.toml README.md ./
# Dependencies first, from pyproject.toml alone (an empty package stands in for the code), so that
# a change of code rebuilds only the small layer below. The optional build secret `pip-ca` is a CA
# bundle for a TLS-intercepting proxy between the build and the package index; it is read only
# while these steps run and is never stored in the image.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && mkdir heimdall_stream && touch heimdall_stream/__init__.py \
    && /opt/heimdall-stream/bin/pip install ".[train]" \
    && /opt/heimdall-stream/bin/pip uninstall --yes heimdall-stream \
    && rm -rf heimdall_stream build ./*.egg-info
COPY heimdall_stream ./heimdall_stream
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && /opt/heimdall-stream/bin/pip install --no-deps . \
    && /opt/heimdall-stream/bin/pip check \
    && /opt/heimdall-stream/bin/heimdall-stream --help >/dev/null

FROM ${BASE_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/heimdall-stream/bin:$PATH \
    HEIMDALL_MLFLOW__CACHE_DIR=/var/cache/heimdall/models \
    HEIMDALL_METRICS__PORT=9108
# jemalloc, for HEIMDALL_MEMORY__ALLOCATOR=auto or jemalloc: less memory than glibc's malloc,
# for some throughput (README "Memory").
RUN apt-get update \
    && apt-get install -y --no-install-recommends libjemalloc2=5.3.0-1 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 heimdall \
    && useradd --system --uid 10001 --gid heimdall --home-dir /home/heimdall --create-home heimdall \
    && mkdir -p /var/cache/heimdall/models && chown -R heimdall:heimdall /var/cache/heimdall
COPY --from=build /opt/heimdall-stream /opt/heimdall-stream
USER 10001:10001
WORKDIR /home/heimdall
VOLUME ["/var/cache/heimdall/models"]
# 9108: /metrics, /healthz, /readyz; 8080: the predict API when HEIMDALL_API__ENABLED=true.
EXPOSE 9108 8080
# Kept only in the Docker image format: build with `--format docker` (OCI has no HEALTHCHECK).
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["heimdall-stream"]
CMD ["run"]
