"""The victim step of the cross-step suite: it leaves a trace in every shared place a
neighbour might look, listens everywhere a neighbour might connect, and reports.

Usage: python3 victim.py SECONDS OUT_JSON

It writes `victim-ready` once everything is in place, and stays until a `stop-victim`
file appears in its working directory (the test drops it in once the attacker is done);
SECONDS only bounds a hang.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

MARKER = "sbx-sidechannel"
received: list[dict[str, Any]] = []


def serve_stream(sock: socket.socket, what: str) -> None:
    sock.listen(16)
    while True:
        conn, _ = sock.accept()
        received.append({"what": what, "time": time.time()})
        conn.close()


def serve_udp(sock: socket.socket) -> None:
    while True:
        _, peer = sock.recvfrom(4096)
        received.append({"what": "udp", "peer": str(peer), "time": time.time()})


def main() -> None:
    seconds, out = float(sys.argv[1]), Path(sys.argv[2])
    report: dict[str, Any] = {"started": time.time(), "hostname": socket.gethostname()}
    files = ["/tmp/" + MARKER, "/dev/shm/" + MARKER, os.getcwd() + "/" + MARKER]
    for path in files:
        Path(path).write_text("written by the victim step\n")
    report["files"] = files
    report["ipc"] = [subprocess.run(["ipcmk", flag, *arg], capture_output=True, text=True).stdout
                     for flag, *arg in (("-M", "4096"), ("-Q",), ("-S", "1"))]
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind("\0" + MARKER)
    path_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path_sock.bind("/tmp/" + MARKER + ".sock")
    tcp = socket.create_server(("0.0.0.0", 8000))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", 8001))
    for target, args in ((serve_stream, (abstract, "abstract")),
                         (serve_stream, (path_sock, "path-socket")),
                         (serve_stream, (tcp, "tcp")), (serve_udp, (udp,))):
        threading.Thread(target=target, args=args, daemon=True).start()
    marker_process = subprocess.Popen(["sleep", "31.337"])
    report["marker_pid"] = marker_process.pid
    report["ready"] = time.time()
    Path("victim-ready").touch()
    deadline = time.monotonic() + seconds
    while not Path("stop-victim").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    report["stopped_by_test"] = Path("stop-victim").exists()
    report["ended"] = time.time()
    report["received"] = received
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    marker_process.kill()


if __name__ == "__main__":
    main()
