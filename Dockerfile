# One image for both programs: k3s-upgrade-coordinator and k3s-upgrade-agent.
# Non-root by default (the coordinator runs as is); the agent's DaemonSet opts into root + privilege.
# The sandbox (sandbox/) is a test and demo tool and is not shipped.

FROM python:3.11.10-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/k3s-upgrader
COPY pyproject.toml README.md ./
COPY wire ./wire
COPY agent ./agent
COPY coordinator ./coordinator
RUN /opt/k3s-upgrader/bin/pip install --no-compile . \
    && /opt/k3s-upgrader/bin/python -m compileall -q /opt/k3s-upgrader/lib

FROM python:3.11.10-slim-bookworm
LABEL org.opencontainers.image.title="k3s-upgrader" \
      org.opencontainers.image.description="Coordinator and node agent for safe k3s binary upgrades"
COPY --from=build /opt/k3s-upgrader /opt/k3s-upgrader
ENV PATH=/opt/k3s-upgrader/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
ENTRYPOINT []
CMD ["k3s-upgrade-coordinator", "--help"]
