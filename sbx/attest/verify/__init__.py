"""`sbx verify`: signatures, completeness, the artifact chain, replay and isolation.

`trust` opens signed documents (signature checks only), `evidence` reads a run
directory (I/O only), `checks` judges decoded Statements against a release
policy (no I/O), and `verifier` puts them together.
"""
