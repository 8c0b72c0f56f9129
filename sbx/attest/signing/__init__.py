"""Signing backends: a local Ed25519 key (DSSE) and Sigstore keyless (bundle v0.3)."""
