#!/usr/bin/env python3
"""pipe.relay on loopback, splice against the copy loop, without Docker.

`python bench/relay_hops.py [--hops 2] [--gib 2] [--runs 5]`: a server streams zeros
through HOPS relays (the sandbox has two: agent and gateway) to a client; prints the
median MB/s with splice and with the recv_into/sendall loop, runs alternated.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import threading
import time

from sbx.sandbox.runtime import pipe

_BLOCK = memoryview(bytes(1 << 20))


def _serve(listener: socket.socket, size: int) -> None:
    while True:
        conn, _ = listener.accept()

        def send(c: socket.socket = conn) -> None:
            left = size
            while left:
                n = min(left, len(_BLOCK))
                c.sendall(_BLOCK[:n])
                left -= n
            c.close()

        threading.Thread(target=send, daemon=True).start()


def _relay(listener: socket.socket, target: tuple[str, int]) -> None:
    while True:
        conn, _ = listener.accept()
        upstream = socket.create_connection(target)
        threading.Thread(target=pipe.relay, args=(conn, upstream), daemon=True).start()


def _listen() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


def measure(hops: int, size: int, splice: bool) -> float:
    """MB/s of one download of `size` bytes through `hops` relays."""
    pipe._SPLICE = getattr(os, "splice", None) if splice else None
    server = _listen()
    threading.Thread(target=_serve, args=(server, size), daemon=True).start()
    target = server.getsockname()
    for _ in range(hops):
        hop = _listen()
        threading.Thread(target=_relay, args=(hop, target), daemon=True).start()
        target = hop.getsockname()
    buf = bytearray(1 << 20)
    began = time.perf_counter()
    got = 0
    with socket.create_connection(target) as c:
        while n := c.recv_into(buf):
            got += n
    if got != size:
        raise SystemExit(f"got {got} of {size} bytes")
    return size / (time.perf_counter() - began) / 1e6


def main() -> None:
    """Alternate splice and copy runs; print both medians."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--hops", type=int, default=2)
    p.add_argument("--gib", type=float, default=2.0)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    size = int(args.gib * (1 << 30))
    rates: dict[str, list[float]] = {"splice": [], "copy": []}
    for _ in range(args.runs):
        for mode in rates:
            rates[mode].append(measure(args.hops, size, mode == "splice"))
    direct = statistics.median(measure(0, size, False) for _ in range(args.runs))
    for mode, values in rates.items():
        print(f"{args.hops} hops, {mode}: median {statistics.median(values):.0f} MB/s "
              f"({', '.join(f'{v:.0f}' for v in values)})")
    print(f"direct, no relay: median {direct:.0f} MB/s")


if __name__ == "__main__":
    main()
