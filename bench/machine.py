"""The machine a benchmark ran on, for the report."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from typing import Any

import docker
import psutil


def describe(client: docker.DockerClient) -> dict[str, Any]:
    """Cores, memory, kernel, CPU model, Docker and Python versions, and the date."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(), "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(), "os": platform.platform(terse=True),
        "docker": str(client.version().get("Version", "?")),
        "python": sys.version.split()[0],
    }
