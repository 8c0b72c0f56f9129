"""A canary for the red-team suite: it logs every IP packet addressed to it.

Runs in a container the test creates on its own network. An AF_PACKET socket
sees each frame that arrives, whatever the protocol or port, so "nothing
reached the sink" covers TCP, UDP, ICMP, SCTP, QUIC and anything else. A few
listeners answer too, so an attempt that got through would also show data on
the attacker's side. Each packet or connection is one JSON line on stdout.
"""

import json
import socket
import struct
import threading
from datetime import UTC, datetime

_lock = threading.Lock()
TCP_PORTS = (22, 53, 80, 443, 853, 2375, 2376, 3128, 8000, 8080, 8443)
UDP_PORTS = (53, 123, 443, 853, 9999, 51820)


def log(**fields: object) -> None:
    fields["time"] = datetime.now(UTC).isoformat()
    with _lock:
        print(json.dumps(fields), flush=True)


def _ports(proto: int, l4: bytes) -> tuple[int | None, int | None]:
    if proto in (6, 17, 132, 136) and len(l4) >= 4:
        sport, dport = struct.unpack("!HH", l4[:4])
        return sport, dport
    return None, None


def sniff() -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    while True:
        frame, addr = s.recvfrom(65535)
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        ethertype = struct.unpack("!H", frame[12:14])[0]
        if ethertype == 0x0800:
            ip = frame[14:]
            ihl = (ip[0] & 0x0F) * 4
            proto, src, dst = ip[9], socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
            first = int(dst.split(".")[0])
            if dst == "255.255.255.255" or 224 <= first <= 239:
                continue
            sport, dport = _ports(proto, ip[ihl:])
        elif ethertype == 0x86DD:
            ip = frame[14:]
            proto = ip[6]
            src = socket.inet_ntop(socket.AF_INET6, ip[8:24])
            dst = socket.inet_ntop(socket.AF_INET6, ip[24:40])
            if dst.startswith("ff"):
                continue  # the stack's own multicast chatter
            sport, dport = _ports(proto, ip[40:])
        else:
            continue
        log(kind="packet", proto=proto, src=src, dst=dst, sport=sport, dport=dport,
            size=len(frame))


def tcp_listener(port: int) -> None:
    srv = socket.create_server(("0.0.0.0", port))
    while True:
        conn, peer = srv.accept()
        log(kind="tcp", port=port, peer=peer[0])
        try:
            conn.sendall(b"SINK\r\n")
        except OSError:
            pass
        conn.close()


def udp_listener(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    while True:
        data, peer = sock.recvfrom(65535)
        log(kind="udp", port=port, peer=peer[0], size=len(data))
        sock.sendto(b"SINK", peer)


def main() -> None:
    threading.Thread(target=sniff, daemon=True).start()
    for port in TCP_PORTS:
        threading.Thread(target=tcp_listener, args=(port,), daemon=True).start()
    for port in UDP_PORTS[1:]:
        threading.Thread(target=udp_listener, args=(port,), daemon=True).start()
    log(kind="ready")
    udp_listener(UDP_PORTS[0])


if __name__ == "__main__":
    main()
