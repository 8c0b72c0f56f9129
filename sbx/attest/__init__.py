"""Evidence: in-toto Statements, signing and verification (no Docker)."""
