"""Evidence: in-toto Statements about a run, their signatures and their verification.

This layer knows nothing of Docker. It is given plain facts (frozen dataclasses
from `sbx.attest.model`), turns them into in-toto Statement v1 payloads in
canonical JSON, signs them with a local key or keylessly with Sigstore, and
verifies a run directory against a release policy.
"""
