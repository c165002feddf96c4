# syntax=docker/dockerfile:1
# The server image with a model baked in: one immutable image per model version, which is what
# deploy/kubernetes.yaml and deploy/inferenceservice.yaml run. Build it from the repository root,
# after `maas export` has written model.maas there:
#
#   docker build -t maas .
#   docker build -f deploy/model.Dockerfile -t maas-model:1 .
ARG MAAS_IMAGE=maas:latest
FROM ${MAAS_IMAGE}
# Owned by root and world-readable: the server (uid 10001) reads it and cannot change it.
COPY --chown=0:0 --chmod=0444 model.maas /srv/model.maas
