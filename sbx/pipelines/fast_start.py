"""Imported by the `sbx` command before anything that loads securesystemslib.

securesystemslib's signer package imports its optional AWS KMS signer, and with it
boto3 when boto3 is installed: about 0.4 s of every `sbx` start, for a signer sbx
never uses (it signs with Ed25519 keys or Sigstore). In the command's own process
only, boto3 is marked absent, so securesystemslib records AWS KMS as unavailable.
A library user importing sbx keeps their boto3.
"""

from __future__ import annotations

import sys

if "boto3" not in sys.modules:
    sys.modules["boto3"] = None  # type: ignore[assignment]  # `import boto3` raises ImportError
