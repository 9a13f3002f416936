# The gvtsim image: every service (vhm, gvt, pgpu, guest) runs from it; docker-compose.yml picks the command.
#
# BASE_IMAGE is a build argument: CI has no image registry and builds on a base made locally with
# mmdebstrap (localhost/pybase: Debian bookworm's python3 with pip and venv). The build needs no network:
# the project and its dependencies come as wheels built on the host (`make wheels`: cp311 wheels fit both
# python:3.11-slim and bookworm's python3.11) and install with --no-index.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
COPY wheels/ /tmp/wheels/
# A venv: bookworm's system python refuses system-wide pip installs (PEP 668); the slim image does not care.
RUN python3 -m venv /opt/gvtsim \
 && /opt/gvtsim/bin/pip install --no-index --no-cache-dir --find-links /tmp/wheels gvtsim \
 && rm -rf /tmp/wheels
ENV PATH=/opt/gvtsim/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /run/gvtsim
CMD ["gvtsim", "--help"]
