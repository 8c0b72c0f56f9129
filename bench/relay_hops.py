#!/usr/bin/env python3
"""pipe.relay on loopback, splice against the copy loop, without Docker.

`python bench/relay_hops.py [--hops 2] [--gib 2] [--runs 5]`: a server streams zeros
through HOPS relays (the sandbox has two: agent and gateway) to a client; prints the
median MB/s with splice and with the recv_into/sendall loop, runs alternated.

`--http` makes it the sandbox's plain-HTTP path: the client sends a GET, the server
answers with an HTTP/1.0 response (`--no-length`: without Content-Length, the close ends
it), the hop next to the server is the gateway's request checker (`http.relay.run` with
an `Exchange`) and the others are `pipe.relay` (the agent). Each run also prints the CPU
seconds of each role (client, server, all relays; the checked hop alone): on a 2-CPU
machine the direct download already keeps both CPUs busy, so what the relays cost in CPU
is what they take from the rate.
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable

from sbx.sandbox.policy import Policy, parse_rule
from sbx.sandbox.runtime import pipe
from sbx.sandbox.runtime.http.exchange import Exchange
from sbx.sandbox.runtime.http.judge import Judge
from sbx.sandbox.runtime.http.relay import Side, run

_BLOCK = memoryview(bytes(1 << 20))
HOST = "bench.sbx.test"


class _Cpu:
    """CPU seconds per role, summed over the threads that played it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.lock = threading.Lock()

    def thread(self, role: str, fn: Callable[[], None]) -> None:
        def timed() -> None:
            try:
                fn()
            finally:
                with self.lock:
                    self.seconds[role] = self.seconds.get(role, 0.0) + time.thread_time()
        threading.Thread(target=timed, daemon=True).start()


def _serve(listener: socket.socket, size: int, http: bool, length: bool, cpu: _Cpu) -> None:
    while True:
        conn, _ = listener.accept()

        def send(c: socket.socket = conn) -> None:
            if http:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += c.recv(4096)
                c.sendall(b"HTTP/1.0 200 OK\r\n"
                          + (f"Content-Length: {size}\r\n".encode() if length else b"")
                          + b"\r\n")
            left = size
            while left:
                n = min(left, len(_BLOCK))
                c.sendall(_BLOCK[:n])
                left -= n
            c.close()

        cpu.thread("server", send)


def _relay(listener: socket.socket, target: tuple[str, int], checked: bool, cpu: _Cpu) -> None:
    policy = Policy(mode="enforce", rules=(parse_rule(f"{HOST}:{target[1]}", "bench"),))
    while True:
        conn, _ = listener.accept()
        upstream = socket.create_connection(target)
        upstream.settimeout(None)
        if checked:
            cpu.thread("gateway (checked)", functools.partial(
                run, Side(conn), Side(upstream), Exchange(Judge(policy, HOST, target[1])),
                _ignore, [0, 0]))
        else:
            threading.Thread(target=pipe.relay, args=(conn, upstream), daemon=True).start()


def _ignore(_record: object) -> None:
    pass


def _listen() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


def measure(hops: int, size: int, splice: bool, http: bool = False, length: bool = True,
            ) -> tuple[float, dict[str, float]]:
    """MB/s of one download of `size` bytes through `hops` relays, and CPU s per role."""
    pipe._SPLICE = getattr(os, "splice", None) if splice else None
    cpu = _Cpu()
    server = _listen()
    threading.Thread(target=_serve, args=(server, size, http, length, cpu), daemon=True).start()
    target = server.getsockname()
    for i in range(hops):
        hop = _listen()
        threading.Thread(target=_relay, args=(hop, target, http and i == 0, cpu),
                         daemon=True).start()
        target = hop.getsockname()
    buf = bytearray(1 << 20)
    began = time.perf_counter()
    client_cpu = time.thread_time()
    process_cpu = time.process_time()
    got = 0
    with socket.create_connection(target) as c:
        if http:
            c.sendall(f"GET /bytes/{size} HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
        while n := c.recv_into(buf):
            got += n
    took = time.perf_counter() - began
    cpu.seconds["client"] = time.thread_time() - client_cpu
    if got < size:
        raise SystemExit(f"got {got} of {size} bytes")
    time.sleep(0.2)  # the relays' threads end and add their CPU time
    with cpu.lock:
        seconds = dict(cpu.seconds)
    # Every relay thread (pipe.relay starts its own), whatever starts it: the rest of it.
    seconds["all relays"] = (time.process_time() - process_cpu - seconds["client"]
                             - seconds.get("server", 0.0))
    return size / took / 1e6, seconds


def _line(label: str, samples: list[tuple[float, dict[str, float]]]) -> str:
    rates = [r for r, _ in samples]
    roles = sorted({k for _, c in samples for k in c})
    cpu = ", ".join(f"{k} {statistics.median(c.get(k, 0.0) for _, c in samples):.2f}"
                    for k in roles)
    return (f"{label}: median {statistics.median(rates):.0f} MB/s "
            f"({', '.join(f'{v:.0f}' for v in rates)}); CPU s (medians): {cpu}")


def main() -> None:
    """Alternate splice and copy runs (and direct ones); print medians."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--hops", type=int, default=2)
    p.add_argument("--gib", type=float, default=2.0)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--http", action="store_true", help="the checked plain-HTTP path")
    p.add_argument("--no-length", action="store_true", help="responses without Content-Length")
    args = p.parse_args()
    size = int(args.gib * (1 << 30))
    length = not args.no_length
    modes = ["splice"] if args.http else ["splice", "copy"]
    samples: dict[str, list[tuple[float, dict[str, float]]]] = {m: [] for m in
                                                                 [*modes, "direct"]}
    for _ in range(args.runs):
        for mode in modes:
            samples[mode].append(measure(args.hops, size, mode == "splice", args.http, length))
        samples["direct"].append(measure(0, size, False, args.http, length))
    for mode in modes:
        print(_line(f"{args.hops} hops, {mode}", samples[mode]))
    print(_line("direct, no relay", samples["direct"]))


if __name__ == "__main__":
    main()
