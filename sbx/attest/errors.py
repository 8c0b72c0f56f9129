"""The attest layer's exception family.

Trust failures (a signature that does not verify, a broken chain) are not
exceptions: they are failed checks in a verification report. The exceptions
here are for what stops the work itself: bad input (exit 2) and an environment
that cannot sign (exit 3).
"""

from __future__ import annotations

from sbx.errors import EXIT_ENVIRONMENT, EXIT_INPUT, SbxError


class AttestError(SbxError):
    """Base of the attest layer's errors."""


class KeyFileError(AttestError):
    """A key file is missing, unreadable or not an Ed25519 key in PEM."""

    exit_code = EXIT_INPUT


class SigningError(AttestError):
    """Signing could not happen: no identity token, Sigstore unreachable, a refusal."""

    exit_code = EXIT_ENVIRONMENT


class EvidenceInputError(AttestError):
    """The run directory, trust material or release policy given to verify is unusable."""

    exit_code = EXIT_INPUT
