# aigw container image: python:3.11-slim, multi-stage (wheels are built in the first stage, only the installed
# virtualenv reaches the runtime stage), non-root, no compiler, no pip, no curl. See docs/deployment.md.
#
#   docker build -t aigw:local .
#   docker build --build-arg AIGW_EXTRAS= -t aigw:local-nobedrock .     # ~35 MB smaller, no Bedrock support
#   docker run --rm -p 8080:8080 -e AIGW_ADMIN_KEY=$(openssl rand -hex 24) aigw:local
ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: wheels for aigw and every dependency, then a virtualenv installed from them only -------------------
FROM ${PYTHON_IMAGE} AS build
# Comma-separated extras of the aigw package; `bedrock` brings botocore for the AWS Bedrock provider.
ARG AIGW_EXTRAS=bedrock
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# pyproject.toml names README.md as the long description: both are needed to build the wheel.
COPY pyproject.toml README.md ./
COPY src ./src
# DL3013: versions are fixed by the wheels just built; the install is --no-index.
# hadolint ignore=DL3013
RUN pip wheel --wheel-dir /wheels ".${AIGW_EXTRAS:+[$AIGW_EXTRAS]}" \
 && python -m venv --without-pip /opt/aigw \
 && pip --python /opt/aigw/bin/python install --no-index --find-links /wheels "aigw${AIGW_EXTRAS:+[$AIGW_EXTRAS]}" \
 && /opt/aigw/bin/aigw --version

# ---- runtime ------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="aigw" \
      org.opencontainers.image.description="An OpenAI-compatible AI gateway" \
      org.opencontainers.image.licenses="MIT"
# A fixed numeric uid/gid, so Kubernetes can check runAsNonRoot and volumes can be chowned to it.
RUN groupadd --system --gid 10001 aigw \
 && useradd --system --uid 10001 --gid aigw --home-dir /var/lib/aigw --no-create-home --shell /usr/sbin/nologin aigw \
 && install -d -o aigw -g aigw -m 0750 /var/lib/aigw
COPY --from=build /opt/aigw /opt/aigw
COPY deploy/aigw.docker.yaml /etc/aigw/config.yaml
# AIGW_WORKERS: uvicorn worker processes, one per CPU core the container may use. Keep 1 on Kubernetes and scale
# with pods; raise it on a VM or plain Docker host. With AIGW_WORKERS > 1 the workers share their Prometheus
# metrics through PROMETHEUS_MULTIPROC_DIR (default /tmp/aigw-prometheus), which is emptied at every start.
ENV PATH=/opt/aigw/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AIGW_CONFIG=/etc/aigw/config.yaml \
    AIGW_WORKERS=1 \
    OTEL_SERVICE_NAME=aigw
WORKDIR /var/lib/aigw
USER 10001:10001
EXPOSE 8080
# uvicorn drains on SIGTERM: stops accepting, lets in-flight requests finish (shutdown_drain_s, 30 s), flushes the usage ledger,
# exits 0. Give it that long: `docker stop -t 45`, compose's stop_grace_period, Kubernetes'
# terminationGracePeriodSeconds.
STOPSIGNAL SIGTERM
# No curl in slim images: the probe is the image's own Python. Liveness only (/healthz answers even with the
# database or Redis down); readiness (/readyz) is for load balancers and Kubernetes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]
# A shell only to read AIGW_WORKERS; `exec` makes aigw PID 1 so it receives SIGTERM itself. Any other command
# (`docker run IMAGE aigw migrate --config /etc/aigw/config.yaml`) replaces this one.
CMD ["/bin/sh", "-c", "if [ \"${AIGW_WORKERS:-1}\" -gt 1 ]; then export PROMETHEUS_MULTIPROC_DIR=\"${PROMETHEUS_MULTIPROC_DIR:-/tmp/aigw-prometheus}\"; mkdir -p \"$PROMETHEUS_MULTIPROC_DIR\" && find \"$PROMETHEUS_MULTIPROC_DIR\" -mindepth 1 -delete; fi; exec aigw serve --config \"$AIGW_CONFIG\" --host 0.0.0.0 --port 8080 --workers \"${AIGW_WORKERS:-1}\""]
