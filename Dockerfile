# The gvtsim image. BASE_IMAGE is a build argument so CI can build on a locally made base image
# (no registry is reachable there); the project installs from wheels built on the host, so the build
# needs no network.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
WORKDIR /app
COPY . /app
RUN python3 -m pip install --no-index --find-links /app/wheels /app || python3 -m pip install /app
ENV PYTHONUNBUFFERED=1
CMD ["gvtsim", "--help"]
