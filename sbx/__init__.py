"""sbx: run CI build steps in isolated Docker sandboxes with an egress allowlist.

This module stays import-free: parts of the package are copied into the
gateway/agent image, which has only the standard library and dnslib.
"""

__version__ = "0.1.0"
