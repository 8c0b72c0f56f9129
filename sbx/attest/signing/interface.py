"""What every signing backend provides."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from sbx.attest.statements import Payload


class SignerKind(StrEnum):
    """The `--signer` choices."""

    LOCAL = "local"
    SIGSTORE = "sigstore"


@dataclass(frozen=True)
class Signed:
    """One signed Statement as written to disk.

    `document` is the file's exact content: a DSSE envelope (local) or a Sigstore
    bundle (keyless); `suffix` names the file type.
    """

    payload: Payload
    document: str
    suffix: str
    signer: str


class Signer(Protocol):
    """Signs Statement payloads; raises `SigningError` when it cannot."""

    kind: SignerKind

    def describe(self) -> str:
        """Who signs, for the run record (key id or certificate identity)."""
        ...

    def sign(self, payload: Payload) -> Signed:
        """Sign the payload's exact bytes inside a DSSE envelope."""
        ...
