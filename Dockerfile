# syntax=docker/dockerfile:1
# heimdall-stream consumer image: multi-stage, slim, non-root, runtime dependencies only.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY heimdall_stream ./heimdall_stream
COPY schemas ./schemas
# The package links its schemas through a symlink; build a wheel that contains real files.
RUN rm heimdall_stream/schemas && cp -r schemas heimdall_stream/schemas \
    && pip wheel --wheel-dir /wheels ".[train]"

FROM python:3.11-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HEIMDALL_MLFLOW__CACHE_DIR=/var/cache/heimdall/models \
    HEIMDALL_METRICS__PORT=9108
RUN groupadd --system --gid 10001 heimdall \
    && useradd --system --uid 10001 --gid heimdall --home-dir /home/heimdall --create-home heimdall \
    && mkdir -p /var/cache/heimdall/models && chown -R heimdall:heimdall /var/cache/heimdall
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels "heimdall-stream[train]==0.1.0" && rm -rf /wheels
USER 10001:10001
VOLUME ["/var/cache/heimdall/models"]
EXPOSE 9108
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["heimdall-stream"]
CMD ["run"]
