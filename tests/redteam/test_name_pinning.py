"""Name pinning: the name decided is the name reached (issue 12).

One step (steps/pinning.py) attacks a shared-address host (servers/vhost.py: the
names `allowed.sbx.test` and `denied.sbx.test` on one address, TLS routed by SNI,
HTTP by Host) with only `allowed` in its policy. Every way of arranging "no name" or
"another name" (silence past the old sniff window, CONNECT <ip>, a split or oversize
ClientHello, an unknown method, bare LF, duplicate Host) must leave the denied tenant
untouched and be on record as denied; Docker's resolver behind 127.0.0.11's high
ports must not answer; the allowed paths (a split hello naming `allowed`, CONNECT
name, a nameless rule for an ssh-like port, an IDN name) must still work.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from sbx.pipelines.run.records import is_decision, parse_time
from sbx.pipelines.run.runner import RunResult
from tests.conftest import Internet, run_spec
from tests.redteam.conftest import SharedHost

STEP_SCRIPT = Path(__file__).parent / "steps" / "pinning.py"
SLACK = 3.0  # seconds an event may trail its attempt (see harness.SLACK)
ALLOW: list[Any] = [
    "allowed.sbx.test:8443",
    "allowed.sbx.test:8080",
    {"host": "allowed.sbx.test", "port": 2222, "nameless": True},
    "straße.sbx.test:8080",
]
ATTACKS = ["silence-then-sni", "connect-ip-then-sni", "split-hello", "oversize-hello",
           "unknown-method", "bare-lf-relay", "duplicate-host-relay", "bare-lf-proxy",
           "duplicate-host-proxy", "ssh-on-a-name-port"]


@dataclass
class Pinning:
    result: RunResult
    results: dict[str, dict[str, Any]]
    events: list[dict[str, Any]]
    hits: list[dict[str, Any]]

    def during(self, case: str, slack: bool = False) -> tuple[float, float]:
        """The case's window: from its start to the next case's start (the gateway decides
        before the step hears back); `slack` for the asynchronous firewall log."""
        r = self.results[case]
        later = sorted(x["t0"] for x in self.results.values() if x["t0"] > r["t0"])
        end = r["t1"] + SLACK if slack or not later else later[0]
        return r["t0"], end

    def events_of(self, case: str, slack: bool = False) -> list[dict[str, Any]]:
        t0, t1 = self.during(case, slack)
        return [e for e in self.events
                if is_decision(e) and t0 <= parse_time(e["time"]).timestamp() <= t1]

    def hits_of(self, case: str) -> list[dict[str, Any]]:
        t0, t1 = self.during(case)
        return [h for h in self.hits if t0 <= parse_time(h["time"]).timestamp() <= t1]


@pytest.fixture(scope="module")
def pinning(shared_host: SharedHost, internet: Internet, docker_client: docker.DockerClient,
            tmp_path_factory: pytest.TempPathFactory) -> Pinning:
    spec = {"name": "pinning", "image": "sbx-step:bookworm",
            "run": "mkdir -p out && python3 pinning.py out/r.json",
            "inputs": ["pinning.py"], "outputs": ["out/"],
            "egress": {"mode": "enforce", "allow": ALLOW}, "resources": {"timeout": 300}}
    run = run_spec(tmp_path_factory.mktemp("pinning"), spec,
                   {"pinning.py": STEP_SCRIPT.read_bytes()}, internet.network)
    result, events = run.result, run.events
    results = json.loads(run.output("out/r.json"))
    raw = docker_client.api.logs(shared_host.host.container_id, stdout=True, stderr=False)
    hits = [h for h in map(json.loads, raw.decode().splitlines()) if h["kind"] != "ready"]
    return Pinning(result, results, events, hits)


def _denied_tenant_reached(p: Pinning, case: str) -> list[dict[str, Any]]:
    return [h for h in p.hits_of(case) if h.get("tenant") == "denied" or h.get("sni")
            == "denied.sbx.test"]


@pytest.mark.docker
@pytest.mark.parametrize("case", ATTACKS)
def test_attack_never_reaches_another_tenant_and_is_recorded_denied(
        pinning: Pinning, case: str) -> None:
    result = pinning.results[case]
    assert '"tenant": "denied"' not in result["body"], result
    assert _denied_tenant_reached(pinning, case) == []
    denied = [e for e in pinning.events_of(case) if e["kind"] == "tcp"
              and e["verdict"] == "denied" and e.get("violation") is True]
    assert denied, f"no denial on record for {case}: {pinning.events_of(case)}"
    assert not [e for e in pinning.events_of(case) if e["kind"] == "tcp"
                and e["verdict"] == "allowed"], "an attempt was recorded as allowed"


@pytest.mark.docker
def test_the_run_is_not_called_clean(pinning: Pinning) -> None:
    step = pinning.result.record["steps"]["pinning"]
    assert step["exit_code"] == 0, step
    assert pinning.result.exit_code == 1  # enforce mode: the violations fail the run


@pytest.mark.docker
def test_dockers_resolver_on_127_0_0_11_high_ports_does_not_answer(pinning: Pinning) -> None:
    result = pinning.results["docker-dns-high-port"]
    assert result["ports"], "no listener on 127.0.0.11 found: the test proves nothing"
    assert result["body"] == "", "dockerd's resolver answered the step directly"
    ports = {port for _, port in result["ports"]}
    dropped = [e for e in pinning.events_of("docker-dns-high-port", slack=True)
               if e.get("dst_ip") == "127.0.0.11" and e.get("dst_port") in ports
               and e["verdict"] == "denied"]
    assert dropped, pinning.events_of("docker-dns-high-port")


@pytest.mark.docker
def test_a_zone_index_is_refused_and_never_recorded_verbatim(pinning: Pinning) -> None:
    assert pinning.results["scope-proxy"]["body"].startswith("HTTP/1.1 400")
    assert not [e for e in pinning.events if "SCOPETEXT" in json.dumps(e)]


@pytest.mark.docker
@pytest.mark.parametrize("case", ["allowed-sni", "allowed-split-hello", "allowed-connect-name"])
def test_the_allowed_tenant_is_reached_by_its_name(pinning: Pinning, case: str) -> None:
    """Positive controls: the refusals above are the checks, not a broken path."""
    assert '"tenant": "allowed"' in pinning.results[case]["body"], pinning.results[case]
    opened = [e for e in pinning.events_of(case) if e.get("phase") == "open" and e["kind"] == "tcp"]
    assert opened and all(e["name"] == "allowed.sbx.test" for e in opened)


@pytest.mark.docker
def test_a_nameless_rule_allows_a_protocol_without_names_and_says_so(pinning: Pinning) -> None:
    assert pinning.results["nameless-banner"]["body"].startswith("SSH-2.0-vhost")
    opened = [e for e in pinning.events_of("nameless-banner")
              if e.get("phase") == "open" and e["kind"] == "tcp"]
    assert opened and opened[0]["nameless"] is True
    assert opened[0]["rule"] == "allowed.sbx.test:2222" and opened[0].get("name") is None


@pytest.mark.docker
def test_an_idn_rule_reaches_the_name_clients_encode_with_uts46(pinning: Pinning) -> None:
    """straße.sbx.test is xn--strae-oqa.sbx.test for curl (UTS 46); IDNA 2003 made the
    rule strasse.sbx.test, another domain, and the step's lookup was denied."""
    assert '"tenant": "xn--strae-oqa"' in pinning.results["idna-name"]["body"], \
        pinning.results["idna-name"]


@pytest.mark.parametrize("entry", ["2002:a9fe:a9fe::/48", "2002:7f00:1::/48", "64:ff9b::/64",
                                   "::a9fe:a9fe", "2002::/16", "64:ff9b:1::/48",
                                   "[2001:0:4136:e378:8000:63bf:5601:5601]:443"])
def test_a_wrapped_forbidden_range_is_refused_at_parse_time(tmp_path: Path, entry: str) -> None:
    """6to4, NAT64 (well-known and local-use), IPv4-compatible and Teredo spellings of the
    metadata address or loopback: one line naming the file and entry, exit 2."""
    path = tmp_path / "step.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "image": "sbx-step:bookworm", "run": "true",
                                    "egress": {"allow": [entry]}}))
    done = subprocess.run([sys.executable, "-m", "sbx.pipelines.cli", "lint", str(path)],
                          capture_output=True, text=True)
    assert done.returncode == 2, done
    assert done.stderr.count("\n") == 1 and "egress.allow[0]" in done.stderr
    assert "Traceback" not in done.stderr
