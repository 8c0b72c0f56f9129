"""7. TLS inspection: a 1 GiB download and 200 small HTTPS requests through an inspected
host (an action-level rule), against the same from a plain container, in the same run.

The step's allowlist is a mapping entry (methods and paths) on the bench server's HTTPS
port, so the gateway terminates the step's TLS with its run CA, checks each request and
opens its own TLS to the server (trusting the bench CA as `upstream_ca`).
"""

from __future__ import annotations

from typing import Any

from bench.internet import HTTPS_PORT, PAYLOAD, SERVER_NAME
from bench.measure import IMAGE, MIB, Bench, Result, _last_json, median


def _doc(name: str, args: list[str], inputs: list[str]) -> dict[str, Any]:
    return {"name": name, "image": IMAGE, "inputs": inputs, "run": [args],
            "egress": {"upstream_ca": "ca.pem", "allow": [
                {"host": SERVER_NAME, "port": HTTPS_PORT, "methods": ["GET"],
                 "paths": ["/bytes/*", "/"]}]}}


def inspected_download(bench: Bench) -> Result:
    """MB/s of HTTPS downloads through inspection against direct HTTPS."""
    net = bench._net()
    size, reps = bench.sizes.download_bytes, bench.sizes.download_reps
    files = {"download.py": (PAYLOAD / "download.py").read_bytes(), "ca.pem": net.ca_pem}
    common = ["python3", "download.py", SERVER_NAME, str(HTTPS_PORT), str(size), str(reps)]
    bench.log(f"inspection: {reps} x {size // MIB} MiB over HTTPS from a plain container")
    base = _last_json(net.run_plain([*common, "ca.pem"], files))
    bench.log(f"inspection: {reps} x {size // MIB} MiB over HTTPS through inspection")
    doc = _doc("benchinspdl", [*common, "env"], ["download.py", "ca.pem"])
    _, _, _, out = bench.sbx_run(doc, "inspdl", files, egress_network=net.network)
    boxed = _last_json((out / "logs" / "benchinspdl.log").read_text())
    return Result(f"7a. download {size // MIB} MiB over inspected HTTPS", "MB/s",
                  median(boxed["mb_per_s"]), median(base["mb_per_s"]), "ratio", target=0.4,
                  details={"samples": boxed["mb_per_s"], "baseline_samples": base["mb_per_s"]})


def inspected_requests(bench: Bench) -> Result:
    """Time to first byte of small HTTPS requests (a new connection each) through
    inspection against direct."""
    net = bench._net()
    n = bench.sizes.requests
    files = {"ttfb.py": (PAYLOAD / "ttfb.py").read_bytes(), "ca.pem": net.ca_pem}
    common = ["python3", "ttfb.py", SERVER_NAME, str(HTTPS_PORT), str(n)]
    doc = _doc("benchinspreq", [*common, "env"], ["ttfb.py", "ca.pem"])
    base: list[float] = []
    boxed: list[float] = []
    for rep in range(bench.sizes.pipeline_reps):
        bench.log(f"inspection {rep + 1}/{bench.sizes.pipeline_reps}: {n} HTTPS requests, "
                  "direct and inspected")
        base.append(median(_last_json(net.run_plain([*common, "ca.pem"], files))["ttfb_ms"]))
        _, _, _, out = bench.sbx_run(doc, "inspreq", files, egress_network=net.network)
        boxed.append(median(
            _last_json((out / "logs" / "benchinspreq.log").read_text())["ttfb_ms"]))
    return Result(f"7b. {n} small requests over inspected HTTPS (new connection each)", "ms",
                  median(boxed), median(base), "added", target=3.0,
                  details={"samples": boxed, "baseline_samples": base,
                           "note": "each sample is the median of one round's requests"})
