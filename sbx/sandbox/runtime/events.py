"""Event records written by the runtime as JSON lines on standard output.

Standard output of the gateway and agent containers carries events only; the
orchestrator follows it through the Docker API. A step shares only the agent's
network namespace, so it can never write to these streams.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from typing import Any

# Re-entrant: the gateway's SIGTERM handler writes its last lines from the main thread,
# which may have been stopped inside emit().
_lock = threading.RLock()


def now() -> str:
    """RFC 3339 UTC timestamp with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def emit(kind: str, **fields: Any) -> None:
    """Write one event line; fields with value None are left out."""
    record: dict[str, Any] = {"time": now(), "kind": kind}
    record.update({k: v for k, v in fields.items() if v is not None})
    line = json.dumps(record, sort_keys=True, separators=(",", ":"))
    with _lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def log(message: str) -> None:
    """Diagnostics go to standard error, never mixed with events."""
    with _lock:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
