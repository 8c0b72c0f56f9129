"""The one error every policy refusal raises (standard library only, like the whole package)."""

from __future__ import annotations


class PolicyError(ValueError):
    """An allow entry or policy is invalid; the message says what is wrong and how to fix it."""

