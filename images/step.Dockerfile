# The sbx test/example step image (sbx-step:bookworm) for machines that can pull from a
# registry:  python -m sbx.sandbox.images --base python:3.12-slim --step-base debian:bookworm-slim
# Without a registry, sbx makes it with mmdebstrap instead (see sbx/sandbox/images.py).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip python3-setuptools \
      python3-wheel git curl ca-certificates openssl \
 && rm -rf /var/lib/apt/lists/*
LABEL sbx.managed=1
CMD ["/bin/bash"]
