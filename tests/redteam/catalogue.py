"""The red-team catalogue: every distinct attack the suite tries, by category.

Each name here is tried by a test in tests/redteam/ (which declares it in its
module's COVERS) or, for attacks the suite had before, by the existing test named
in EXISTING. tests/redteam/test_catalogue.py fails when a name has no test, or a
test runs an attack that is not catalogued.

Outcomes: most attacks must be blocked and recorded. A few are spellings or
mismatches the policy resolves to the allowed host (ALLOWED, REDIRECTED): those
must reach only the allowed host and be recorded with where the gateway connected.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Attack:
    """One attack: its category and its name (unique across the catalogue)."""

    category: str
    name: str

    @property
    def key(self) -> str:
        """`category/name`, the name the tests use."""
        return f"{self.category}/{self.name}"


_NEW: dict[str, tuple[str, ...]] = {
    "egress": (
        "allowed-name-resolving-internal-absolute-uri", "allowed-name-resolving-internal-connect",
        "allowed-name-resolving-internal-dns", "allowed-name-resolving-internal-host-header",
        "allowed-name-resolving-internal-sni", "direct-ignoring-proxy-variables",
        "gateway-other-tcp-port", "gateway-udp", "http-host-denied-name-to-allowed-ip",
        "icmp-echo", "icmpv6-echo", "ipv4-mapped-ipv6-tcp", "ipv6-dns",
        "proxy-absolute-uri-denied", "proxy-absolute-uri-host-mismatch",
        "proxy-absolute-uri-userinfo", "proxy-connect-allowed-inner-sni-denied",
        "proxy-connect-allowed-name-other-port", "proxy-connect-decimal-ip",
        "proxy-connect-ipv4-mapped", "proxy-connect-userinfo", "quic-to-allowed-ip",
        "quic-to-denied-ip", "raw-ip-after-dns-other-port", "relay-duplicate-host-header",
        "relay-port-direct", "so-bindtodevice-eth0", "tls-no-sni-after-dns",
        "tls-no-sni-allowed-ip-before-dns", "tls-no-sni-denied-ip",
        "tls-sni-denied-name-to-allowed-ip", "udp-broadcast", "udp-ntp", "udp-wireguard-port",
        "udplite",
    ),
    "dns": (
        "direct-resolver-tcp", "doh-post", "doh-via-proxy", "dot-with-sni", "dot-without-sni",
        "embedded-resolver-tcp", "exfil-253-char-name", "exfil-64-char-label", "exfil-base32-aaaa",
        "exfil-hex-txt", "exfil-long-labels", "exfil-name-over-253", "gateway-tcp", "gateway-udp",
        "name-case-dns", "name-case-trailing-dot-connect", "name-case-trailing-dot-host-header",
        "name-case-trailing-dot-sni", "name-homoglyph-connect", "name-nul-byte-connect",
        "name-prefix-connect", "name-prefix-dns", "name-subdomain-of-exact-rule",
        "name-suffix-appended-connect", "name-suffix-appended-dns",
        "name-suffix-appended-host-header", "name-trailing-dot-dns", "not-dns-over-tcp-53",
        "not-dns-over-udp-53", "qtype-any", "resolver-on-other-port",
        "two-questions-allowed-first",
    ),
    "host": (
        "docker0-proxy-absolute-uri", "docker0-relay", "egress-bridge-docker-api-proxy",
        "egress-bridge-docker-api-relay", "gateway-itself-via-proxy", "host-address-proxy",
        "host-address-relay", "loopback-name-via-proxy", "loopback-via-proxy-absolute-uri",
        "private-egress-bridge-via-proxy", "step-bridge-docker-api-2375",
        "step-bridge-docker-api-2376",
    ),
    "metadata": (
        "alibaba", "aws-ipv6", "decimal", "dotted", "google-name", "hex", "icmp",
        "ipv4-mapped-ipv6", "octal", "proxy-absolute-uri", "proxy-aws-ipv6", "proxy-connect",
        "proxy-decimal", "proxy-google-name", "proxy-hex-ipv4-mapped", "rebinding-style-name",
        "short-form", "udp",
    ),
    "cross-step": (
        "peer-agent-name", "peer-gateway-dns", "peer-gateway-egress-address", "peer-gateway-name",
        "peer-gateway-proxy-port", "peer-step-icmp", "peer-step-name", "peer-step-tcp-listener",
        "peer-step-udp", "proxy-absolute-uri-peer-step", "proxy-connect-peer-gateway",
        "proxy-connect-peer-gateway-egress", "proxy-connect-peer-name", "proxy-connect-peer-step",
        "proxy-connect-step-pool",
    ),
    "side-channel": (
        "abstract-unix-socket", "network-namespace-listeners", "pid-namespace",
        "proc-net-unix-listing", "shared-dev-shm", "shared-files-anywhere", "shared-tmp",
        "shared-workspace", "sysv-message-queue", "sysv-semaphore", "sysv-shared-memory",
        "unix-socket-path", "uts-hostname",
    ),
    "privilege": (
        "bpf", "capabilities", "capabilities-as-user", "chroot", "docker-socket", "ip-addr-add",
        "ip-link-down", "ip-route-add", "ip6tables-flush", "iptables-flush-nat",
        "iptables-policy-accept", "kernel-module", "keyring", "mknod-device", "mount-tmpfs",
        "netlink-route-add", "no-new-privileges-and-seccomp", "packet-socket", "perf-event-open",
        "raw-socket", "sethostname", "settimeofday", "setuid-binaries", "so-mark",
        "sysctl-ip-forward", "sysctl-kernel-hostname", "sysctl-route-localnet",
        "unshare-network-namespace", "unshare-user-namespace", "unshare-user-namespace-as-user",
        "write-sys",
    ),
    "evidence": (
        "forged-attestation-over-the-real-one", "forged-attestation-planted-among-outputs",
        "replay-one-statement", "replay-whole-attestation-set",
        "rewrite-output-after-exit-double-fork", "rewrite-output-after-exit-nohup",
        "rewrite-output-after-exit-setsid", "symlink-swap-during-copy-out",
    ),
}

# Attacks the suite already made before tests/redteam existed: counted here, run there.
_ISO = "tests/sandbox/test_isolation.py"
_DENIED = f"{_ISO}::test_denied_server_is_unreachable_every_way_and_each_attempt_is_recorded"
EXISTING: dict[str, str] = {
    "egress/existing-denied-name-resolve": _DENIED,
    "egress/existing-raw-ip-tcp-http": _DENIED,
    "egress/existing-raw-ip-tcp-server-speaks-first": _DENIED,
    "egress/existing-proxy-connect-denied-name": _DENIED,
    "egress/existing-proxy-connect-denied-ip": _DENIED,
    "egress/existing-udp": _DENIED,
    "egress/existing-icmp": _DENIED,
    "egress/existing-ipv6-tcp": _DENIED,
    "egress/existing-ipv6-udp": _DENIED,
    "host/existing-step-bridge-tcp": _DENIED,
    "host/existing-step-bridge-icmp": _DENIED,
    "host/existing-step-bridge-via-proxy": _DENIED,
    "host/existing-egress-bridge-via-proxy": _DENIED,
    "host/existing-loopback-via-proxy": _DENIED,
    "cross-step/existing-step-pool-via-proxy": _DENIED,
    "dns/existing-embedded-resolver-udp": _DENIED,
    "dns/existing-direct-resolver-udp": _DENIED,
    "egress/existing-allowed-sni-to-denied-ip":
        f"{_ISO}::test_allowed_sni_sent_to_a_denied_ip_is_connected_to_the_allowed_host",
    "dns/existing-secret-in-dns-name":
        f"{_ISO}::test_secrets_never_reach_logs_events_or_records",
    "privilege/existing-nflog-bind":
        f"{_ISO}::test_step_has_no_privileges_and_sees_no_docker_socket",
    "evidence/existing-symlink-output": f"{_ISO}::test_symlinked_output_is_refused",
    "cross-step/existing-sibling-addresses-and-names":
        "tests/pipelines/run/test_pipeline.py::test_a_step_cannot_reach_its_sibling_by_address_or_name",
}

# Not blocked by design: the policy makes these the allowed host (see netattacks.py).
ALLOWED = frozenset({
    "dns/name-case-dns", "dns/name-trailing-dot-dns", "dns/name-case-trailing-dot-connect",
    "dns/name-case-trailing-dot-host-header", "dns/name-case-trailing-dot-sni",
})
# Mismatches once resolved to the allowed host are refused since issue 12 (a CONNECT name
# with another name inside, two Host headers): none is redirected any more.
REDIRECTED: frozenset[str] = frozenset()

ATTACKS: tuple[Attack, ...] = tuple(
    [Attack(cat, name) for cat, names in _NEW.items() for name in names]
    + [Attack(*key.split("/", 1)) for key in EXISTING])
CATEGORIES: tuple[str, ...] = tuple(_NEW)


def counts() -> dict[str, dict[str, int]]:
    """Per category: attacks tried, how many must be blocked, and how many the policy
    resolves to the allowed host instead (allowed or redirected)."""
    out: dict[str, dict[str, int]] = {}
    for attack in ATTACKS:
        row = out.setdefault(attack.category, {"tried": 0, "blocked": 0, "allowed-host": 0})
        row["tried"] += 1
        row["allowed-host" if attack.key in ALLOWED | REDIRECTED else "blocked"] += 1
    return out
