# syntax=docker/dockerfile:1.7
# oms-cleanup container image.
#
#   docker build -t oms-cleanup:0.1.0 .
#   docker run --rm --read-only --tmpfs /tmp -v "$PWD/reports:/reports" \
#       -v "$PWD/cleanup.toml:/etc/oms-cleanup/cleanup.toml:ro" --env-file credentials.env \
#       oms-cleanup:0.1.0 run --config /etc/oms-cleanup/cleanup.toml
# (docs/operations.md has the details: Kubernetes, cron, a manual mass cleanup.)
#
# Two stages: the builder turns this checkout into wheels (ours and every dependency's); the
# final stage installs them into a venv without reaching any index and without keeping the
# wheels in a layer. Pin the base by digest too (python:3.11.13-slim-bookworm@sha256:...) when
# your registry policy asks for it; the tag alone is pinned to a patch release here.

FROM python:3.11.13-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the wheel is built from (see .dockerignore): tests, configs and docs stay out.
COPY pyproject.toml README.md ./
COPY worker ./worker
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .


FROM python:3.11.13-slim-bookworm

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="oms-cleanup" \
      org.opencontainers.image.description="Asynchronous bulk cleanup of Huawei Cloud OMS migration tasks" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.13-slim-bookworm"

# HOME=/tmp: the root filesystem is read-only at run time and /tmp is the one scratch place.
# PYTHONDONTWRITEBYTECODE: the venv is compiled at install time, nothing is written at run time.
ENV PATH="/opt/oms-cleanup/bin:${PATH}" \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# --no-index: the final stage installs exactly the wheels the builder resolved, nothing newer.
# /reports is created owned by the runtime user so the image also works without a volume.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/oms-cleanup \
    && /opt/oms-cleanup/bin/pip install --no-cache-dir --no-index --find-links /wheels oms-cleanup \
    && mkdir /reports \
    && chown 65532:65532 /reports

# The default report path is relative (oms-cleanup-report.json), so from here it lands in
# /reports. It is deliberately not set as OMS_CLEANUP_REPORT: the environment outranks the
# config file, and an image default must not override what the operator's policy file says.
WORKDIR /reports
VOLUME /reports

# A numeric non-root user (the "nonroot" uid of distroless images): Kubernetes can check
# runAsNonRoot against a number without a passwd entry.
USER 65532:65532

ENTRYPOINT ["oms-cleanup"]
CMD ["run"]
