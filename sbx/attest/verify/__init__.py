"""`sbx verify`: signatures, completeness, the artifact chain, replay and isolation.

`trust` opens signed documents (signature checks only), `evidence` reads a run
directory (I/O only), `checks` and `isolation` judge decoded Statements against a
release policy (no I/O) with the inputs and results of `model`, and `verifier` puts
them together.
"""
