"""Red-team attacks run inside a step, one after another, each timed.

Usage: python3 attack.py CONFIG_JSON OUT_JSON

CONFIG_JSON is {"attacks": [{"name": ..., "op": ..., ...}], "gap": seconds}. Each
result holds "reached" (did anything come back from the far side), "detail", and
the wall-clock window [t0, t1] so the test can find the attempt's events.
Reachability is judged by data from the far side, never by a local handshake.
Strings may hold {bridge} (the step network's host bridge, the default route) and
{gateway} (the gateway, from SBX_PROXY); both are filled in here.
"""

import base64
import json
import os
import random
import socket
import ssl
import struct
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

Result = dict[str, Any]
PROXY = urllib.parse.urlparse(os.environ.get("SBX_PROXY", "http://127.0.0.1:3128"))


def default_gateway() -> str:
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":
            return socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
    return "0.0.0.0"


FILL = {"bridge": default_gateway(), "gateway": PROXY.hostname or ""}


def fill(value: Any) -> Any:
    if isinstance(value, str):
        for key, sub in FILL.items():
            value = value.replace("{" + key + "}", sub)
        return value
    if isinstance(value, list):
        return [fill(v) for v in value]
    return value


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- TCP and TLS


def tcp(a: dict[str, Any]) -> Result:
    """Connect to (host, port) (a name goes through getaddrinfo), send, read."""
    payload = a.get("payload", "GET / HTTP/1.0\r\n\r\n").encode("latin-1")
    try:
        info = socket.getaddrinfo(a["host"], a["port"], type=socket.SOCK_STREAM)[0]
    except OSError as exc:
        return {"reached": False, "detail": f"does not resolve: {_err(exc)}"}
    mine: Result = {}  # the connection's own source port: the gateway records it
    try:
        with socket.socket(info[0], socket.SOCK_STREAM) as s:
            if a.get("bind_device"):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                             a["bind_device"].encode())
            s.settimeout(a.get("timeout", 3))
            s.connect(info[4])
            mine["src_port"] = s.getsockname()[1]
            data = b""
            for chunk in a.get("chunks", [payload]):
                s.sendall(chunk.encode("latin-1") if isinstance(chunk, str) else chunk)
                time.sleep(a.get("pause", 0))
            data = _read_all(s, a.get("read", 4096))
    except ConnectionRefusedError as exc:
        return {"reached": True, "detail": f"refused by the far side: {exc}", **mine}
    except OSError as exc:
        return {"reached": False, "detail": _err(exc), **mine}
    if b"\r\nx-sbx-reason:" in data.split(b"\r\n\r\n", 1)[0].lower():
        # The gateway's own refusal of a request it read (issue 15), not the far side.
        return {"reached": False, "detail": f"refused by the gateway: {data[:120]!r}", **mine}
    return {"reached": bool(data), "detail": repr(data[:120]),
            "body": data.decode("latin-1")[:2000], "connected": str(info[4][0]), **mine}


def _read_all(s: socket.socket, limit: int) -> bytes:
    data = b""
    try:
        while len(data) < limit:
            chunk = s.recv(limit - len(data))
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pass
    except OSError:
        if not data:
            raise
    return data


def _tls(sock: socket.socket, sni: str | None) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # reachability, not trust, is under test
    return ctx.wrap_socket(sock, server_hostname=sni)


def tls(a: dict[str, Any]) -> Result:
    """TLS to (ip, port) with the given SNI (None: no SNI at all), then an HTTP request."""
    request = a.get("request", "GET /{name} HTTP/1.0\r\nHost: {host}\r\n\r\n")
    try:
        raw = socket.create_connection((a["host"], a["port"]), timeout=a.get("timeout", 4))
    except OSError as exc:
        return {"reached": False, "detail": _err(exc)}
    mine = {"src_port": raw.getsockname()[1]}
    try:
        with _tls(raw, a.get("sni")) as s:
            s.sendall(request.format(name=a["name"], host=a.get("sni") or a["host"]).encode())
            data = _read_all(s, 4096)
    except OSError as exc:
        raw.close()
        return {"reached": False, "detail": _err(exc), **mine}
    return {"reached": bool(data), "detail": repr(data[:120]), "body": data.decode("latin-1"),
            **mine}


# --------------------------------------------------------------------------- the explicit proxy


def proxy(a: dict[str, Any]) -> Result:
    """Send a raw request to the gateway's explicit proxy; reached means a 200 and data."""
    mine: Result = {}
    try:
        with socket.create_connection((PROXY.hostname, PROXY.port), timeout=5) as s:
            mine["src_port"] = s.getsockname()[1]
            s.sendall(a["request"].encode("utf-8", "surrogateescape"))
            if a.get("tunnel_tls") is not None:
                head = _read_head(s)
                if b" 200 " not in head[:16]:
                    return {"reached": False, "detail": head.split(b"\r\n")[0].decode(),
                            **mine}
                t = a["tunnel_tls"]
                with _tls(s, t.get("sni")) as inner:
                    inner.sendall(t["request"].encode())
                    data = _read_all(inner, 4096)
                return {"reached": bool(data), "detail": repr(data[:120]),
                        "body": data.decode("latin-1"), **mine}
            data = _read_all(s, 4096)
    except OSError as exc:
        return {"reached": False, "detail": _err(exc), **mine}
    status = data.split(b"\r\n", 1)[0].decode("latin-1")
    ok = b" 200 " in data[:16]
    return {"reached": ok, "detail": status, "body": data.decode("latin-1")[:2000], **mine}


def _read_head(s: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            break
        head += chunk
    return head


# --------------------------------------------------------------------------- DNS


def dns_query(qname: str | list[str], qtype: int = 1, questions: int = 1) -> bytes:
    """A DNS query in wire format; `qname` may be a list of raw labels."""
    labels = qname if isinstance(qname, list) else [x for x in qname.split(".") if x]
    wire = b"".join(bytes([len(lb.encode("latin-1"))]) + lb.encode("latin-1")
                    for lb in labels) + b"\x00"
    header = struct.pack("!HHHHHH", random.randrange(65536), 0x0100, questions, 0, 0, 0)
    return header + (wire + struct.pack("!HH", qtype, 1)) * questions


def _skip_name(msg: bytes, pos: int) -> int:
    while True:
        n = msg[pos]
        if n & 0xC0 == 0xC0:
            return pos + 2
        if n == 0:
            return pos + 1
        pos += 1 + n


def parse_answer(msg: bytes) -> Result:
    _id, flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", msg[:12])
    pos = 12
    for _ in range(qd):
        pos = _skip_name(msg, pos) + 4
    ips = []
    for _ in range(an):
        pos = _skip_name(msg, pos)
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", msg[pos:pos + 10])
        pos += 10
        rdata = msg[pos:pos + rdlen]
        pos += rdlen
        if rtype == 1:
            ips.append(socket.inet_ntoa(rdata))
        elif rtype == 28:
            ips.append(socket.inet_ntop(socket.AF_INET6, rdata))
        else:
            ips.append(f"type{rtype}")
    return {"rcode": flags & 0x0F, "answers": ips}


def dns(a: dict[str, Any]) -> Result:
    """A query over UDP or TCP to (server, port); reached means an address came back."""
    if "raw" in a:
        query = a["raw"].encode("latin-1")
    else:
        query = dns_query(a["qname"], a.get("qtype", 1), a.get("questions", 1))
    server, port = a.get("server", "127.0.0.11"), a.get("port", 53)
    try:
        if a.get("proto", "udp") == "udp":
            with socket.socket(_family(server), socket.SOCK_DGRAM) as s:
                s.settimeout(a.get("timeout", 4))
                s.sendto(query, (server, port))
                answer = s.recv(65535)
        else:
            with socket.create_connection((server, port), timeout=a.get("timeout", 4)) as s:
                s.sendall(struct.pack("!H", len(query)) + query)
                size = struct.unpack("!H", _exact(s, 2))[0]
                answer = _exact(s, size)
    except OSError as exc:
        return {"reached": False, "detail": _err(exc)}
    try:
        parsed = parse_answer(answer)
    except (IndexError, struct.error, OSError) as exc:
        return {"reached": True, "detail": f"unparsable answer {answer[:40]!r}: {exc}"}
    sink = any(ip in a.get("forbidden_answers", []) for ip in parsed["answers"])
    reached = bool(parsed["answers"]) if not a.get("forbidden_answers") else sink
    return {"reached": reached, "detail": json.dumps(parsed), **parsed}


def _exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def resolve(a: dict[str, Any]) -> Result:
    try:
        infos = socket.getaddrinfo(a["host"], 80, type=socket.SOCK_STREAM)
    except OSError as exc:
        return {"reached": False, "detail": f"does not resolve: {_err(exc)}"}
    return {"reached": True, "detail": "resolved", "answers": sorted({i[4][0] for i in infos})}


# --------------------------------------------------------------------------- datagrams


def quic_initial() -> bytes:
    """A QUIC v1 Initial packet's shape: long header, version 1, connection ids, padding."""
    dcid, scid = os.urandom(8), os.urandom(8)
    head = bytes([0xC3]) + struct.pack("!I", 1) + bytes([8]) + dcid + bytes([8]) + scid
    return (head + b"\x00" + struct.pack("!H", 0x4000 | 1162) + os.urandom(1162))[:1200]


def udp(a: dict[str, Any]) -> Result:
    payload = quic_initial() if a.get("quic") else a.get("payload", "sbx-exfil").encode()
    proto = a.get("protocol", 0)
    try:
        with socket.socket(_family(a["host"]), socket.SOCK_DGRAM, proto) as s:
            s.settimeout(a.get("timeout", 2))
            if a.get("broadcast"):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.connect((a["host"], a["port"]))
            s.send(payload)
            answer = s.recv(4096)
    except ConnectionRefusedError:
        return {"reached": True, "detail": "ICMP port unreachable came back"}
    except OSError as exc:
        return {"reached": False, "detail": _err(exc)}
    return {"reached": True, "detail": f"answered {answer[:40]!r}"}


def icmp(a: dict[str, Any]) -> Result:
    v6 = ":" in a["host"]
    try:
        s = socket.socket(_family(a["host"]), socket.SOCK_DGRAM,
                          socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    except OSError as exc:
        return {"reached": False, "detail": f"no ICMP socket: {_err(exc)}"}
    with s:
        s.settimeout(2)
        try:
            s.sendto(struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, 0, 1) + b"sbx", (a["host"], 0))
            s.recv(64)
        except OSError as exc:
            return {"reached": False, "detail": _err(exc)}
    return {"reached": True, "detail": "echo reply"}


def sctp(a: dict[str, Any]) -> Result:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132) as s:
            s.settimeout(2)
            s.connect((a["host"], a["port"]))
            s.sendall(b"sbx")
            data = s.recv(64)
    except OSError as exc:
        return {"reached": False, "detail": _err(exc)}
    return {"reached": bool(data), "detail": repr(data)}


# --------------------------------------------------------------------------- local checks


def shell(a: dict[str, Any]) -> Result:
    """Run a command; reached means it succeeded (exit 0) where it should not."""
    done = subprocess.run(a["argv"], capture_output=True, text=True, timeout=10)
    out = (done.stdout + done.stderr).strip()[-300:]
    return {"reached": done.returncode == 0, "detail": f"exit {done.returncode}: {out}"}


def sleep(a: dict[str, Any]) -> Result:
    time.sleep(a["seconds"])
    return {"reached": False, "detail": "slept"}


OPS = {"tcp": tcp, "tls": tls, "proxy": proxy, "dns": dns, "resolve": resolve, "udp": udp,
       "icmp": icmp, "sctp": sctp, "shell": shell, "sleep": sleep}


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    results: dict[str, Result] = {}
    for attack in cfg["attacks"]:
        a = {k: fill(v) for k, v in attack.items()}
        if "raw_b64" in a:
            a["raw"] = base64.b64decode(a["raw_b64"]).decode("latin-1")
        t0 = time.time()
        try:
            result = OPS[a["op"]](a)
        except Exception as exc:  # a crashed attack proves nothing: say so, do not hide it
            result = {"reached": None, "detail": f"attack crashed: {_err(exc)}"}
        result.update(t0=t0, t1=time.time())
        results[a["name"]] = result
        time.sleep(cfg.get("gap", 0.15))
    Path(sys.argv[2]).parent.mkdir(parents=True, exist_ok=True)
    Path(sys.argv[2]).write_text(json.dumps({"results": results, "fill": FILL}, indent=1))


if __name__ == "__main__":
    main()
