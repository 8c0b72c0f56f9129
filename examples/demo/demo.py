"""`make demo`: what sbx is for, in under a minute once the images exist.

    python examples/demo/demo.py [--out DIR]

1. starts a small "internet" of its own: one web host on 198.18.x.0/24 (the benchmarking
   range, never routed on the real internet) answering as files.sbx.example and as
   collector.sbx.example; its objects carry sbx's labels (`sbx gc` finds them if this is
   killed) and are removed at the end, whatever happened;
2. runs examples/demo/step.yaml in a sandbox: the step fetches an allowed URL and then tries
   to upload to a host its allowlist does not name; sbx prints the violation as it happens;
3. runs `sbx verify` on the signed evidence against examples/demo/release-policy.yaml (the
   release gate refuses a run that tried to leave its allowlist), writes the HTML report,
   and prints the three paths to open and a one-line verdict.

Exit 0 when all of that behaved as it should (the allowed fetch worked, the attempt was
denied and recorded, the signatures verify and the gate refused the run for that attempt).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError

HERE = Path(__file__).resolve().parent
STEP = HERE / "step.yaml"
POLICY = HERE / "release-policy.yaml"
ALLOWED, DENIED = "files.sbx.example", "collector.sbx.example"
PORT = 8080
TOOL = b"sbx-demo-tool 1.0: fetched through the allowlist\n"


@contextmanager
def local_internet(client: docker.DockerClient, image: str) -> Iterator[str]:
    """A 198.18.x.0/24 network with one web host; yields the network's id."""
    from sbx.sandbox import labels as L
    from sbx.sandbox.archive import pack_files
    from sbx.sandbox.sandbox import remove_by_label

    demo_id = "demo-" + secrets.token_hex(4)
    labels = L.for_object(demo_id, "demo", "internet")
    api = client.api
    try:
        net_id, third = None, 0
        for _ in range(32):
            third = 1 + secrets.randbelow(250)
            try:
                net_id = api.create_network(
                    f"sbx-{demo_id}-internet", driver="bridge", labels=labels,
                    ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(
                        subnet=f"198.18.{third}.0/24", gateway=f"198.18.{third}.1")]))["Id"]
                break
            except APIError as exc:
                if "overlap" not in str(exc).lower():
                    raise
        if net_id is None:
            raise RuntimeError("no free 198.18.x.0/24 subnet for the demo's internet")
        cid = api.create_container(
            image, name=f"sbx-{demo_id}-web", labels=labels, user="65534:65534",
            command=["python3", "-u", "-m", "http.server", str(PORT), "--directory", "/srv",
                     "--bind", "0.0.0.0"],
            host_config=api.create_host_config(cap_drop=["ALL"],
                                               security_opt=["no-new-privileges:true"]),
            networking_config=api.create_networking_config({net_id: api.create_endpoint_config(
                aliases=[ALLOWED, DENIED], ipv4_address=f"198.18.{third}.10")}))["Id"]
        api.put_archive(cid, "/", pack_files({"tool.txt": TOOL}, prefix="srv"))
        api.start(cid)
        deadline = time.monotonic() + 20
        while b"Serving HTTP" not in api.logs(cid):
            if time.monotonic() > deadline:
                raise RuntimeError("the demo's web host did not start within 20 s")
            time.sleep(0.1)
        print(f"demo: a local internet on 198.18.{third}.0/24: {ALLOWED} and {DENIED} "
              f"(198.18.{third}.10), removed at the end", file=sys.stderr)
        yield net_id
    finally:
        remove_by_label(client, {L.RUN: demo_id})


def _denied(run_dir: Path) -> list[dict[str, Any]]:
    """What the step's own command was denied (not the probes before it started)."""
    started = json.loads((run_dir / "run.json").read_text())["steps"]["demo"]["step_started"]
    if not started:
        return []
    began = datetime.fromisoformat(started)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()
              if line.strip()]
    return [e for e in events if e.get("verdict") == "denied" and e.get("kind") != "probe"
            and datetime.fromisoformat(e["time"]) >= began]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; see the module's docstring."""
    from rich.console import Console

    from sbx.attest.signing.local import keygen
    from sbx.errors import SbxError
    from sbx.pipelines.cli import main as sbx_main
    from sbx.pipelines.verify import VerifyOptions, render, verify
    from sbx.sandbox import engine, images

    parser = argparse.ArgumentParser(prog="examples/demo/demo.py", description=__doc__)
    parser.add_argument("--out", type=Path,
                        help="where the demo writes (default .sbx/demo/<time>)")
    args = parser.parse_args(argv)
    out = (args.out or Path(".sbx/demo") / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"))
    run_dir, report = out / "run", out / "report.html"
    try:
        client = engine.connect()
        image = images.ensure_step_image(client)
        pair = keygen(out / "keys")  # a key made for this demo; sbx keygen does the same
    except SbxError as exc:
        print(f"demo: {exc.diagnostics()}", file=sys.stderr)
        return exc.exit_code

    with local_internet(client, image) as network:
        print(f"demo: running {STEP.name}: its allowlist names only {ALLOWED}:{PORT}; "
              "every denied attempt is printed as it happens", file=sys.stderr)
        code = sbx_main(["run", str(STEP), "--out", str(run_dir), "--egress-network", network,
                         "--key", str(pair.private)])
    if not (run_dir / "run.json").is_file():
        print(f"demo: sbx run failed before it wrote records (exit {code})", file=sys.stderr)
        return code or 1

    console = Console(stderr=False, highlight=False)
    console.rule("sbx verify: the release gate must refuse this run (its step tried to leave "
                 "its allowlist)")
    verification = verify(VerifyOptions(run_dir=run_dir, policy=POLICY, keys=(pair.public,)))
    render(verification, console)
    sbx_main(["report", str(run_dir), "--html", str(report), "--key", str(pair.public),
              "--policy", str(POLICY)])

    fetched = run_dir / "outputs" / "demo" / "dist" / "tool.txt"
    denied = _denied(run_dir)
    checks = {c.check.value: c for c in verification.results}
    failed = sorted(name for name, c in checks.items() if c.status.value == "fail")
    signatures_ok = "signatures" in checks and checks["signatures"].status.value == "pass"
    targets = sorted({str(e.get("name") or e.get("dst_ip") or "?") for e in denied})
    console.rule("what to open")
    console.print(f"records   {run_dir / 'run.json'} and {run_dir / 'events.jsonl'}",
                  markup=False, soft_wrap=True)
    console.print(f"report    {report}", markup=False, soft_wrap=True)
    console.print(f"evidence  {run_dir / 'attestations'}/ (sbx verify {run_dir} "
                  f"--key {pair.public})", markup=False, soft_wrap=True)
    as_expected = (fetched.is_file() and fetched.read_bytes() == TOOL and bool(denied)
                   and signatures_ok and not verification.passed and report.is_file())
    if as_expected:
        verdict = (f"verdict: the step fetched {ALLOWED}, sbx denied and recorded its attempt "
                   f"to reach {', '.join(targets)}, the evidence is signed and verifies, and "
                   f"the release gate refuses the run ({', '.join(failed)} failed)")
    else:
        verdict = (f"verdict: the demo did not behave as expected (exit {code}, fetched "
                   f"{fetched.is_file()}, denied {len(denied)}, signatures "
                   f"{'ok' if signatures_ok else 'not ok'}, gate "
                   f"{'passed' if verification.passed else 'refused'}): see the records")
    console.print(verdict, markup=False, soft_wrap=True)
    return 0 if as_expected else 1


if __name__ == "__main__":
    sys.exit(main())
