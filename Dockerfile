# syntax=docker/dockerfile:1
# ua-sentinel: the admission/audit webhook service (`serve`) and the audit log tailer (`tail`).
#
#   docker build --build-arg REVISION="$(git rev-parse HEAD)" -t ua-sentinel:0.1.0 .
#
# The final image holds the Python runtime and one virtualenv (/opt/venv) with the ua-sentinel
# wheel and its dependencies, installed from binary wheels only: no compiler, no pip cache,
# no source tree. It runs as uid 65532 and writes nothing outside /tmp, so it works with
# readOnlyRootFilesystem (the chart mounts an emptyDir at /tmp).
# tests/image/ lints this file with hadolint and replays the build stage's steps without a
# container engine.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: wheel, then a virtualenv with the wheel and its dependencies ---------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY webhook ./webhook
# --only-binary: every dependency must come as a wheel, so the build needs no compiler.
# pip byte-compiles what it installs; at run time nothing can (read-only root).
# [otlp]: the chart offers the otlp: sink, which needs opentelemetry-proto.
# [aws]: `tail --source cloudwatch:LOG_GROUP` (EKS audit logs), which needs boto3.
# [gcp]: `tail --source pubsub:` (GKE audit logs routed to Pub/Sub), google-cloud-pubsub.
# [azure]: `tail --source eventhub:` / `azblob:` (AKS), azure-eventhub, azure-storage-blob, azure-identity.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/venv \
    && wheel="$(echo /wheels/ua_sentinel-*.whl)" \
    && /opt/venv/bin/python -m pip install --only-binary=:all: "${wheel}[otlp,aws,gcp,azure]"

# ---- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ua-sentinel" \
      org.opencontainers.image.description="Flags Kubernetes API requests from user agents not on the cluster's allowlist" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/ua-sentinel/ua-sentinel" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"
RUN groupadd --system --gid 65532 nonroot \
    && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin nonroot
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
USER 65532:65532
WORKDIR /
EXPOSE 8443
ENTRYPOINT ["ua-sentinel"]
CMD ["--help"]
