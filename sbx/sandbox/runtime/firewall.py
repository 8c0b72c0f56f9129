"""The agent's privileged set-up: interception rules (IPv4 and IPv6) and the capability drop.

Everything here runs once, before the agent drops every capability for good.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
from typing import Any

_PR_SET_NO_NEW_PRIVS, _PR_CAPBSET_DROP, _PR_CAP_AMBIENT = 38, 24, 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
NOBODY = 65534
# A chain that only returns: the rules jumping to it count what the firewall drops.
COUNT_CHAIN = "SBX_DROPPED"


def rules_v4(cfg: dict[str, Any]) -> str:
    """iptables-restore input: interception (nat) and the drop-and-log filter."""
    gw, bridge, group = cfg["gateway_ip"], cfg["bridge_ip"], cfg["nflog_group"]
    relay, dns_udp, dns_tcp = cfg["relay_port"], cfg["dns_udp_port"], cfg["dns_tcp_port"]
    own = cfg["own_ip"]
    log_rule = (f"-j NFLOG --nflog-group {group} --nflog-prefix out "
                "-m limit --limit 200/second --limit-burst 400")
    return "\n".join([
        "*nat",
        ":SBX_OUT - [0:0]",
        # Before Docker's DNAT for 127.0.0.11, so the embedded resolver is bypassed.
        "-I OUTPUT 1 -j SBX_OUT",
        f"-A SBX_OUT -d {gw}/32 -j RETURN",
        f"-A SBX_OUT -p udp --dport 53 -j REDIRECT --to-ports {dns_udp}",
        f"-A SBX_OUT -p tcp --dport 53 -j REDIRECT --to-ports {dns_tcp}",
        "-A SBX_OUT -d 127.0.0.0/8 -j RETURN",
        f"-A SBX_OUT -d {own}/32 -j RETURN",
        f"-A SBX_OUT -d {bridge}/32 -j RETURN",
        f"-A SBX_OUT -p tcp -j REDIRECT --to-ports {relay}",
        "COMMIT",
        "*filter",
        ":INPUT DROP [0:0]",
        ":FORWARD DROP [0:0]",
        ":OUTPUT DROP [0:0]",
        f":{COUNT_CHAIN} - [0:0]",
        f"-A {COUNT_CHAIN} -j RETURN",
        "-A INPUT -i lo -j ACCEPT",
        "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        # Loopback only to the agent's own addresses (its relays, the step's own local
        # servers). The rest of 127.0.0.0/8 is dropped and logged: Docker's embedded DNS
        # listens on 127.0.0.11 at high ports (readable in /proc/net/udp), and a query
        # sent there directly would be answered by dockerd, unrecorded.
        "-A OUTPUT -o lo -d 127.0.0.1/32 -j ACCEPT",
        f"-A OUTPUT -o lo -d {own}/32 -j ACCEPT",
        # A redirected packet no longer matches "-o lo" in filter OUTPUT (measured).
        "-A OUTPUT -m conntrack --ctstate DNAT -j ACCEPT",
        f"-A OUTPUT -d {gw}/32 -p tcp --dport {cfg['proxy_port']} -j ACCEPT",
        f"-A OUTPUT -d {gw}/32 -p tcp --dport 53 -j ACCEPT",
        f"-A OUTPUT -d {gw}/32 -p udp --dport 53 -j ACCEPT",
        # Counts every packet about to be dropped, unlike the rate-limited log rule:
        # sbx reads this counter at the step's end (`iptables-save -c`).
        f"-A OUTPUT -j {COUNT_CHAIN}",
        f"-A OUTPUT {log_rule}",
        "COMMIT",
        # A socket bound to eth0 (SO_BINDTODEVICE, no privilege needed) keeps its device
        # after the REDIRECT above: its packet, now addressed to 127.0.0.1, would leave
        # on eth0 and be dropped beyond the namespace with no record (measured). Only
        # here, after rerouting, is that visible: log it and drop it.
        "*mangle",
        f":{COUNT_CHAIN} - [0:0]",
        f"-A {COUNT_CHAIN} -j RETURN",
        f"-A POSTROUTING ! -o lo -d 127.0.0.0/8 -j {COUNT_CHAIN}",
        f"-A POSTROUTING ! -o lo -d 127.0.0.0/8 -j NFLOG --nflog-group {group} "
        "--nflog-prefix bound -m limit --limit 200/second --limit-burst 400",
        "-A POSTROUTING ! -o lo -d 127.0.0.0/8 -j DROP",
        "COMMIT",
        "",
    ])


def rules_v6(cfg: dict[str, Any]) -> str:
    """All IPv6 but loopback is dropped and logged."""
    group = cfg["nflog_group"]
    return "\n".join([
        "*filter",
        ":INPUT DROP [0:0]",
        ":FORWARD DROP [0:0]",
        ":OUTPUT DROP [0:0]",
        f":{COUNT_CHAIN} - [0:0]",
        f"-A {COUNT_CHAIN} -j RETURN",
        "-A INPUT -i lo -s ::1/128 -d ::1/128 -j ACCEPT",
        "-A OUTPUT -o lo -s ::1/128 -d ::1/128 -j ACCEPT",
        # The kernel's own multicast listener reports; nothing routes beyond loopback anyway.
        "-A OUTPUT -d ff02::/16 -p ipv6-icmp -j DROP",
        f"-A OUTPUT -j {COUNT_CHAIN}",
        f"-A OUTPUT -j NFLOG --nflog-group {group} --nflog-prefix out6 "
        "-m limit --limit 200/second --limit-burst 400",
        "COMMIT",
        "",
    ])


def run(argv: list[str], stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def setup_ipv6() -> None:
    """Route all IPv6 into loopback so attempts hit the log rule and never the wire.

    The step network has no IPv6 (Docker 20.10 does not isolate it); without an
    address the kernel would fail IPv6 connects silently, leaving no record.
    """
    commands: list[str] = []
    for _index, name in socket.if_nameindex():
        if name != "lo":
            commands += [f"link set dev {name} addrgenmode none",
                         f"addr flush dev {name} to ::/0"]  # its IPv6 addresses
    commands.append("route replace ::/0 dev lo")
    # One ip process for all (a batch stops at, and fails on, its first error).
    run(["ip", "-batch", "-"], "\n".join(commands) + "\n")


def drop_privileges() -> dict[str, str]:
    """Give up every capability for good; returns the resulting Cap* lines."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(64):
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the last cap: fine
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)  # clears permitted and effective sets
    caps = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key.startswith("Cap") or key == "NoNewPrivs":
                caps[key] = value.strip()
    if any(int(caps[k], 16) for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh")):
        raise RuntimeError(f"capabilities remain after dropping: {caps}")
    return caps
