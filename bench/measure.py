"""The six benchmarks of issue 5, each against an unsandboxed baseline in the same run.

Wall times are what a user waits for: `sbx run` as a process (Python start-up and
imports included) against `docker run --rm`. Throughput and time to first byte are
timed inside the container, so container start is not part of them.
"""

from __future__ import annotations

import compileall
import importlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import yaml

from bench.internet import HTTP_PORT, HTTPS_PORT, PAYLOAD, SERVER_NAME, Internet
from bench.memory import ROLES, MemorySampler
from sbx.sandbox import images
from sbx.sandbox import labels as L
from sbx.sandbox.sandbox import remove_by_label

IMAGE = images.STEP_IMAGE
KEEP_FAILED = Path(".sbx/bench-failed")
MIB = 1 << 20
# The phases of a no-op `sbx run` in the order they happen (run.json `timings` in the middle).
PHASES = ("cli start (imports, image check, records)", "image", "network", "runtime_start",
          "runtime_ready", "peers_wait", "probes", "settle", "needs_wait", "step_create",
          "copy_in", "step", "copy_out", "facts", "stop", "cleanup",
          "run teardown (label sweep, records)", "signing, summary, exit")


class BenchError(RuntimeError):
    """A benchmark could not run (not: it was slow)."""


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does: full mode, or `--quick` for CI."""

    reps: int = 5
    pipeline_reps: int = 3
    parallel: int = 8
    chain: int = 10
    download_bytes: int = 1 << 30
    download_reps: int = 3
    requests: int = 200
    verify_steps: int = 100
    verify_reps: int = 5
    scale: tuple[int, ...] = (8, 16, 24)  # independent steps, each against one (bench/scale)
    big: int = 64  # a pipeline this long must complete

    @classmethod
    def quick(cls) -> Sizes:
        """One repetition of everything, tiny sizes: proves the harness works, not speed."""
        return cls(reps=1, pipeline_reps=1, parallel=2, chain=3, download_bytes=8 * MIB,
                   download_reps=1, requests=10, verify_steps=3, verify_reps=1, scale=(2,), big=3)


@dataclass
class Result:
    """One benchmark's figures; `ok` is None when nothing is judged (quick mode)."""

    name: str
    unit: str
    sandboxed: float
    baseline: float | None
    compare: str  # "ratio" (sandboxed/baseline), "added" (sandboxed - baseline), "absolute"
    target: float
    aim: float | None = None
    ok: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def figure(self) -> float:
        """The judged number: a ratio, an added amount, or the sandboxed value itself."""
        if self.baseline is None or self.compare == "absolute":
            return self.sandboxed
        if self.compare == "added":
            return self.sandboxed - self.baseline
        return self.sandboxed / self.baseline if self.baseline else float("inf")

    def judge(self) -> None:
        """Rates must reach the target; times and sizes must stay under it."""
        higher_is_better = self.compare == "ratio" and self.unit == "MB/s"
        self.ok = self.figure >= self.target if higher_is_better else self.figure <= self.target

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "unit": self.unit, "sandboxed": self.sandboxed,
                "baseline": self.baseline, "compare": self.compare, "figure": self.figure,
                "target": self.target, "aim": self.aim, "ok": self.ok, "details": self.details}


def median(values: Sequence[float]) -> float:
    """The median; a benchmark with no samples is broken."""
    if not values:
        raise BenchError("no samples")
    return float(statistics.median(values))


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def sbx_command() -> list[str]:
    """The `sbx` a user runs: this Python's installed script (not a version manager's
    shim in front of it, which would add its own start-up), else this Python's module."""
    script = Path(sys.executable).with_name("sbx")
    found = str(script) if script.is_file() else shutil.which("sbx")
    return [found] if found else [sys.executable, "-m", "sbx"]


def compile_sbx() -> None:
    """Write sbx's bytecode, as `pip install` does: an editable install under
    PYTHONDONTWRITEBYTECODE (as on this machine) would otherwise compile every module
    on every start, a cost no installed sbx has."""
    import sbx

    compileall.compile_dir(str(Path(sbx.__file__).parent), quiet=1)


@dataclass
class Bench:
    """State shared by the benchmarks: the engine, a work directory, the signing key."""

    client: docker.DockerClient
    work: Path
    key: Path
    sizes: Sizes
    log: Callable[[str], None]
    internet: Internet | None = None
    squid_download: bool = False  # throughput also through the Squid sandbox (3b)
    _count: int = 0

    # -- helpers -----------------------------------------------------------------------
    def _dir(self, stem: str) -> Path:
        self._count += 1
        path = self.work / f"{self._count:03d}-{stem}"
        path.mkdir(parents=True)
        return path

    def sbx_run(self, doc: dict[str, Any], stem: str, files: dict[str, bytes] | None = None,
                egress_network: str | None = None, timeout: float = 600,
                ) -> tuple[float, float, dict[str, Any], Path]:
        """`sbx run` a step or pipeline as a process: (began, ended, run.json, run dir)."""
        ws = self._dir(stem)
        for name, data in (files or {}).items():
            (ws / name).write_bytes(data)
        spec = ws / "sbx.yaml"
        spec.write_text(yaml.safe_dump(doc, sort_keys=False))
        out = ws / "run"
        cmd = [*sbx_command(), "run", str(spec), "--out", str(out), "--key", str(self.key), "-q"]
        if egress_network:
            cmd += ["--egress-network", egress_network]
        began = time.time()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            self._gc(out)
            raise BenchError(f"sbx run {stem} took longer than {timeout:.0f} s") from None
        ended = time.time()
        record = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
        if proc.returncode != 0:
            self._gc(out)
            reasons = "; ".join(f"{name}: {step.get('status')}: {step.get('reason')}"
                                for name, step in record.get("steps", {}).items()
                                if step.get("status") != "succeeded")
            kept = KEEP_FAILED / f"{time.strftime('%Y%m%dT%H%M%S')}-{ws.name}"
            shutil.copytree(ws, kept, dirs_exist_ok=True)  # the records, for the diagnosis
            raise BenchError(f"sbx run {stem} exited {proc.returncode}: "
                             f"{(proc.stderr or proc.stdout).strip()[-800:]} ({reasons}); "
                             f"records kept in {kept}")
        return began, ended, record, out

    def _gc(self, out: Path) -> None:
        try:
            run_id = json.loads((out / "run.json").read_text())["run_id"]
        except (OSError, ValueError, KeyError):
            return
        remove_by_label(self.client, {L.RUN: run_id})

    def docker_run(self, *command: str) -> float:
        """Wall time of `docker run --rm IMAGE COMMAND`, the unsandboxed baseline."""
        began = time.perf_counter()
        proc = subprocess.run(["docker", "run", "--rm", IMAGE, *command], capture_output=True,
                              text=True, check=False, timeout=120)
        if proc.returncode != 0:
            raise BenchError(f"docker run exited {proc.returncode}: {proc.stderr.strip()}")
        return time.perf_counter() - began

    @staticmethod
    def noop(name: str) -> dict[str, Any]:
        """A step that does nothing, with no egress."""
        return {"name": name, "image": IMAGE, "run": "true"}

    @staticmethod
    def pipeline(name: str, count: int, chained: bool) -> dict[str, Any]:
        """`count` no-op steps, independent or each needing the one before."""
        steps: dict[str, Any] = {}
        for i in range(count):
            step: dict[str, Any] = {"image": IMAGE, "run": "true"}
            if chained and i:
                step["needs"] = [f"s{i - 1:02d}"]
            steps[f"s{i:02d}"] = step
        return {"name": name, "steps": steps}

    # -- 1. step overhead --------------------------------------------------------------
    def step_overhead(self) -> Result:
        """`sbx run` of a no-op step against `docker run --rm IMAGE true`, with phases."""
        sandboxed: list[float] = []
        baseline: list[float] = []
        phases: dict[str, list[float]] = {}
        for rep in range(self.sizes.reps):
            self.log(f"step overhead {rep + 1}/{self.sizes.reps}")
            baseline.append(self.docker_run("true"))
            began, ended, record, _ = self.sbx_run(self.noop("noop"), "noop")
            sandboxed.append(ended - began)
            step = record["steps"]["noop"]
            outer = {
                "cli start (imports, image check, records)": _epoch(record["started"]) - began,
                # The step's `ended` comes before its sandbox is removed (`cleanup`).
                "run teardown (label sweep, records)": max(
                    0.0, _epoch(record["ended"]) - _epoch(step["ended"])
                    - step["timings"].get("cleanup", 0.0)),
                "signing, summary, exit": ended - _epoch(record["ended"]),
            }
            for name, value in {**outer, **step["timings"]}.items():
                phases.setdefault(name, []).append(value)
        order = [p for p in PHASES if p in phases] + sorted(set(phases) - set(PHASES))
        breakdown = {name: median(phases[name]) for name in order}
        return Result("1. step overhead (no-op step)", "s", median(sandboxed), median(baseline),
                      "ratio", target=6.0,
                      details={"samples": sandboxed, "baseline_samples": baseline,
                               "breakdown": breakdown})

    # -- 2. pipeline parallelism -------------------------------------------------------
    def parallelism(self) -> list[Result]:
        """N independent no-op steps against one; a chain against as many docker runs."""
        n, chain = self.sizes.parallel, self.sizes.chain
        one: list[float] = []
        many: list[float] = []
        chained: list[float] = []
        plain: list[float] = []
        for rep in range(self.sizes.pipeline_reps):
            self.log(f"parallelism {rep + 1}/{self.sizes.pipeline_reps}: 1 step, {n} steps, "
                     f"a chain of {chain} and {chain} docker runs")
            began, ended, _, _ = self.sbx_run(self.pipeline("one", 1, False), "one")
            one.append(ended - began)
            began, ended, _, _ = self.sbx_run(self.pipeline("many", n, False), "many")
            many.append(ended - began)
            began, ended, _, _ = self.sbx_run(self.pipeline("chain", chain, True), "chain")
            chained.append(ended - began)
            t0 = time.perf_counter()
            for _ in range(chain):
                self.docker_run("true")
            plain.append(time.perf_counter() - t0)
        return [
            Result(f"2a. {n} independent steps vs 1", "s", median(many), median(one), "ratio",
                   target=1.8, details={"samples": many, "baseline_samples": one}),
            Result(f"2b. chain of {chain} vs {chain} docker runs", "s", median(chained),
                   median(plain), "ratio", target=2.5,
                   details={"samples": chained, "baseline_samples": plain,
                            "note": "target: the step-overhead target; later steps' "
                                    "preparation hidden behind earlier ones"}),
        ]

    # -- 3. gateway throughput and 6. memory under load ---------------------------------
    def _net(self) -> Internet:
        if self.internet is None:
            raise BenchError("the bench network is not up")
        return self.internet

    def throughput(self) -> list[Result]:
        """Download a generated body through the sandbox and from a plain container."""
        net = self._net()
        size, reps = self.sizes.download_bytes, self.sizes.download_reps
        args = ["python3", "download.py", SERVER_NAME, str(HTTP_PORT), str(size), str(reps)]
        files = {"download.py": (PAYLOAD / "download.py").read_bytes()}
        self.log(f"throughput: {reps} x {size // MIB} MiB from a plain container")
        base = _last_json(net.run_plain(args, files))
        self.log(f"throughput: {reps} x {size // MIB} MiB through the sandbox")
        doc = {"name": "benchdl", "image": IMAGE, "inputs": ["download.py"], "run": [args],
               "egress": {"allow": [f"{SERVER_NAME}:{HTTP_PORT}"]}}
        with MemorySampler(self.client, "benchdl") as mem:
            _, _, _, out = self.sbx_run(doc, "download", files, egress_network=net.network)
        boxed = _last_json((out / "logs" / "benchdl.log").read_text())
        result = Result(f"3. download {size // MIB} MiB", "MB/s", median(boxed["mb_per_s"]),
                        median(base["mb_per_s"]), "ratio", target=0.8, aim=0.9,
                        details={"samples": boxed["mb_per_s"],
                                 "baseline_samples": base["mb_per_s"]})
        results = [result, *self._memory_results(mem.peak, "during the download")]
        # The same bytes without Content-Length (HTTP/1.0, the close ends the body): the
        # shape the gateway once read through h11 in Python.
        stream = {"BENCH_STREAM": "1"}
        self.log(f"throughput: {reps} x {size // MIB} MiB without Content-Length, plain "
                 "and through the sandbox")
        base_close = _last_json(net.run_plain(args, files, env=stream))
        _, _, _, out = self.sbx_run({**doc, "name": "benchclose", "env": stream}, "download-close",
                                    files, egress_network=net.network)
        boxed_close = _last_json((out / "logs" / "benchclose.log").read_text())
        results.insert(1, Result(
            f"3c. download {size // MIB} MiB, no Content-Length (ends at close)", "MB/s",
            median(boxed_close["mb_per_s"]), median(base_close["mb_per_s"]), "ratio",
            target=0.8, aim=0.9, details={"samples": boxed_close["mb_per_s"],
                                          "baseline_samples": base_close["mb_per_s"]}))
        if self.squid_download:
            from bench import squid  # imports this module: not at the top

            squid.ensure_image(self.client, self.log)
            self.log(f"throughput: {reps} x {size // MIB} MiB through the hand-built Squid "
                     "sandbox")
            hand = _last_json(squid.squid_download(self.client, IMAGE, net.network, SERVER_NAME,
                                                   args, files))
            results.insert(1, Result(
                f"3b. download {size // MIB} MiB, sbx vs the Squid sandbox", "MB/s",
                median(boxed["mb_per_s"]), median(hand["mb_per_s"]), "ratio", target=1.0,
                details={"samples": boxed["mb_per_s"], "baseline_samples": hand["mb_per_s"],
                         "direct_samples": base["mb_per_s"]}))
        return results

    def _memory_results(self, peak: dict[str, int], when: str) -> list[Result]:
        missing = [role for role in ROLES if not peak[role]]
        if missing:
            raise BenchError(f"no memory sample of the {', '.join(missing)} {when}")
        return [Result(f"6. {role} peak RSS {when}", "MiB", peak[role] / MIB, None, "absolute",
                       target=40.0) for role in ROLES]

    def memory_idle(self) -> list[Result]:
        """Peak RSS of the gateway and agent of a step that only sleeps."""
        self.log("memory: an idle step")
        doc = {"name": "benchidle", "image": IMAGE, "run": "sleep 1"}
        with MemorySampler(self.client, "benchidle") as mem:
            self.sbx_run(doc, "idle")
        return self._memory_results(mem.peak, "at idle")

    # -- 4. connection latency ---------------------------------------------------------
    def latency(self) -> Result:
        """Time to first byte of sequential HTTPS requests, sandboxed against direct."""
        net = self._net()
        n = self.sizes.requests
        args = ["python3", "ttfb.py", SERVER_NAME, str(HTTPS_PORT), str(n), "ca.pem"]
        files = {"ttfb.py": (PAYLOAD / "ttfb.py").read_bytes(), "ca.pem": net.ca_pem}
        doc = {"name": "benchttfb", "image": IMAGE, "inputs": ["ttfb.py", "ca.pem"],
               "run": [args], "egress": {"allow": [f"{SERVER_NAME}:{HTTPS_PORT}"]}}
        base: list[float] = []
        boxed: list[float] = []
        rounds = self.sizes.pipeline_reps
        for rep in range(rounds):
            self.log(f"latency {rep + 1}/{rounds}: {n} HTTPS requests from a plain container "
                     "and through the sandbox")
            base.append(median(_last_json(net.run_plain(args, files))["ttfb_ms"]))
            _, _, _, out = self.sbx_run(doc, "ttfb", files, egress_network=net.network)
            boxed.append(median(
                _last_json((out / "logs" / "benchttfb.log").read_text())["ttfb_ms"]))
        return Result(f"4. HTTPS time to first byte ({n} connections)", "ms", median(boxed),
                      median(base), "added", target=2.0,
                      details={"samples": boxed, "baseline_samples": base,
                               "note": "each sample is the median of one round's requests"})

    # -- 5. verification ---------------------------------------------------------------
    def verification(self) -> Result:
        """`sbx verify` (CLI wall time) of a signed run of many steps."""
        # Reused from the test suite rather than copied: the synthetic signed run (the
        # test code is imported at run time, outside mypy's files).
        from sbx.attest.signing.local import keygen

        build_run = importlib.import_module("tests.fakes.signed_run").build_run

        n = self.sizes.verify_steps
        pair = keygen(self._dir("verify-key"))
        big = build_run(self._dir("verify") / "run", pair,
                        tuple(f"s{i:03d}" for i in range(n)))
        small = build_run(self._dir("verify1") / "run", pair, ("s000",))
        timed: dict[str, list[float]] = {"big": [], "small": []}
        for rep in range(self.sizes.verify_reps):
            self.log(f"verify {rep + 1}/{self.sizes.verify_reps}: {n} steps and 1 step")
            for label, run in (("big", big.root), ("small", small.root)):
                began = time.perf_counter()
                proc = subprocess.run([*sbx_command(), "verify", str(run), "--key",
                                       str(pair.public)], capture_output=True, text=True,
                                      check=False, timeout=300)
                timed[label].append(time.perf_counter() - began)
                if proc.returncode != 0:
                    raise BenchError(f"sbx verify of the {label} run exited {proc.returncode}: "
                                     f"{(proc.stdout + proc.stderr)[-800:]}")
        return Result(f"5. sbx verify, {n} steps (1 step as reference)", "s",
                      median(timed["big"]), median(timed["small"]), "absolute", target=2.0,
                      details={"samples": timed["big"], "baseline_samples": timed["small"]})


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            value: dict[str, Any] = json.loads(line)
            return value
    raise BenchError(f"no JSON result in the output: {text[-500:]!r}")


def _p90(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
