# The sbx runtime image (egress gateway, namespace agent, probes) for machines that can pull
# from a registry. sbx builds it itself with an in-memory context holding this file and the
# runtime code under sbx/:
#     python -m sbx.sandbox.images --base python:3.12-slim      (or SBX_IMAGE_BASE=...)
# By hand, from the repository root (copies the whole package, which is harmless):
#     docker build -f images/runtime.Dockerfile --build-arg BASE=python:3.12-slim \
#         -t sbx-runtime:custom .
# Without a registry, sbx makes the base with mmdebstrap instead (see sbx/sandbox/images.py).
ARG BASE=python:3.12-slim
FROM ${BASE}
# A base that already has what the runtime needs (a Debian python3 with python3-dnslib,
# iptables and iproute2, such as a mirrored sbx-base-runtime) builds without any network.
RUN if command -v iptables >/dev/null && command -v ip >/dev/null \
      && python3 -c 'import dnslib, h11, cryptography' 2>/dev/null; then exit 0; fi \
 && apt-get update \
 && apt-get install -y --no-install-recommends iptables iproute2 \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m pip install --no-cache-dir 'dnslib>=0.9' 'h11>=0.14' 'cryptography>=38'
COPY sbx /opt/sbx/sbx
# As sbx.sandbox.images.COMPILE_RUNTIME: no start compiles sbx's modules.
RUN python3 -m compileall -q --invalidation-mode checked-hash /opt/sbx/sbx
ENV PYTHONPATH=/opt/sbx PYTHONDONTWRITEBYTECODE=1
LABEL sbx.managed=1
CMD ["python3"]
