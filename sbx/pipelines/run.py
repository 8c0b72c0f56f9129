"""`sbx run STEP`: one step, end to end, with its records.

This is the composition root for a single step: it turns a validated spec into
a sandbox StepConfig, drives the sandbox through prepare, probe, run and copy
out, and writes run.json, events.jsonl, logs/ and outputs/ as it goes.
"""

from __future__ import annotations

import glob
import os
import secrets
import shlex
import signal
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import psutil

import sbx
from sbx.attest.errors import SigningError
from sbx.attest.model import Artifact, RunBinding, RunEvidence, StepEvidence
from sbx.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, SbxError, SpecError
from sbx.pipelines import evidence as ev
from sbx.pipelines.loader import load_yaml
from sbx.pipelines.records import EventLog, Masker, parse_time, write_json
from sbx.pipelines.spec import StepSpec, spec_digest, validate_step
from sbx.pipelines.view import LiveView
from sbx.sandbox import engine, images
from sbx.sandbox.archive import OutputFile
from sbx.sandbox.config import Limits, ProbeResult, SandboxFacts, SandboxOptions, StepConfig
from sbx.sandbox.sandbox import Sandbox, SandboxFailure, utcnow


@dataclass(frozen=True)
class RunOptions:
    """How to run: where records go and which network is the outside world."""

    out_dir: Path | None = None
    workspace: Path | None = None
    egress_network: str | None = None
    build_images: bool = True
    signing: ev.SigningOptions = field(default_factory=ev.SigningOptions)


@dataclass(frozen=True)
class RunResult:
    """What a run ended with; `record` is the content of run.json."""

    run_id: str
    out_dir: Path
    exit_code: int
    record: dict[str, Any]


def new_run_id() -> str:
    """Sortable and unique: UTC time plus randomness."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)


def command_of(spec: StepSpec) -> tuple[str, ...]:
    """The container command: a script runs under sh -e; argv lists run in order."""
    if isinstance(spec.run, str):
        return ("/bin/sh", "-ec", spec.run)
    commands = [list(c) for c in spec.run]
    if len(commands) == 1:
        return tuple(commands[0])
    return ("/bin/sh", "-ec", "\n".join(shlex.join(c) for c in commands))


def resolve_inputs(spec: StepSpec, spec_path: Path,
                   workspace: Path) -> tuple[tuple[Path, str], ...]:
    """Expand input patterns inside the workspace; nothing may point outside it."""
    root = workspace.resolve()
    found: dict[str, Path] = {}
    for i, pattern in enumerate(spec.inputs):
        matches = sorted(glob.glob(pattern, root_dir=root, recursive=True))
        if not matches:
            raise SpecError(str(spec_path), f"inputs[{i}]",
                            f"{pattern!r} matches nothing in {root}: create it or remove the entry")
        for match in matches:
            for path in _walk(root / match):
                if path.is_symlink():
                    raise SpecError(
                        str(spec_path), f"inputs[{i}]",
                        f"{path} is a symbolic link: list the file it points to instead")
                resolved = path.resolve()
                if not resolved.is_relative_to(root):
                    raise SpecError(
                        str(spec_path), f"inputs[{i}]",
                        f"{path} leads outside the workspace {root}: copy it in instead")
                rel = path.relative_to(root).as_posix()
                found[rel] = path
    return tuple((p, rel) for rel, p in sorted(found.items()))


def _walk(path: Path) -> list[Path]:
    if path.is_dir() and not path.is_symlink():
        return [path] + [p for child in sorted(path.iterdir()) for p in _walk(child)]
    return [path]


def step_config(spec: StepSpec, spec_path: Path, workspace: Path,
                environ: dict[str, str]) -> StepConfig:
    """The sandbox's view of a step: resolved argv, files, secrets and policy."""
    missing = [name for name in spec.secrets if name not in environ]
    if missing:
        raise SpecError(
            str(spec_path), "secrets",
            f"{', '.join(missing)} not set in the environment: export it before sbx run")
    res = spec.resources
    return StepConfig(
        name=spec.name, image=spec.image, command=command_of(spec), workdir=spec.workdir,
        policy=spec.policy(str(spec_path)), env=tuple(sorted(spec.env.items())),
        secrets=tuple((n, environ[n]) for n in spec.secrets), user=spec.user,
        read_only_rootfs=spec.read_only_rootfs, tmpfs=tuple(spec.tmpfs),
        limits=Limits(cpus=res.cpus, memory=res.memory_bytes, pids=res.pids,
                      timeout=float(res.timeout)),
        proxy_env=spec.egress.proxy_env, inputs=resolve_inputs(spec, spec_path, workspace),
        outputs=tuple(spec.outputs))


def host_addresses(client: docker.DockerClient) -> tuple[str, ...]:
    """Addresses that lead to the host: its interfaces and every Docker bridge gateway."""
    found: set[str] = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family.name in ("AF_INET", "AF_INET6"):
                found.add(a.address.split("%")[0])
    for net in client.api.networks():
        for cfg in (net.get("IPAM") or {}).get("Config") or []:
            if cfg.get("Gateway"):
                found.add(cfg["Gateway"])
    return tuple(sorted(found))


class _Interrupted(BaseException):
    pass


def _on_signal(signum: int, _frame: Any) -> None:
    raise _Interrupted(signal.Signals(signum).name)


def run_step_file(path: Path, options: RunOptions, view: LiveView) -> RunResult:
    """Run one step file; always leaves run.json and removes every Docker object."""
    loaded = load_yaml(path)
    spec = validate_step(loaded)
    digest = spec_digest(loaded)
    workspace = options.workspace or path.parent
    config = step_config(spec, path, workspace, dict(os.environ))
    # The signer first: a bad key or a missing token stops the run before anything runs.
    signer = ev.make_signer(options.signing, os.environ, lambda m: view.phase(spec.name, m))
    client = engine.connect()
    runtime_image = images.ensure_runtime_image(client, build=options.build_images,
                                                log=lambda m: view.phase(spec.name, m))
    if spec.image == images.STEP_IMAGE:
        images.ensure_step_image(client, build=options.build_images,
                                 log=lambda m: view.phase(spec.name, m))
    run_id = new_run_id()
    out = (options.out_dir or Path(".sbx/runs") / run_id).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "outputs" / spec.name).mkdir(parents=True, exist_ok=True)
    masker = Masker(v for _, v in config.secrets)
    events = EventLog(out / "events.jsonl", masker, listeners=[view.event])
    engine_info = engine.info(client)
    record: dict[str, Any] = {
        "schema": "https://sbx.dev/run/v1", "run_id": run_id, "sbx_version": sbx.__version__,
        "spec": {"path": str(path), "digest": digest}, "out_dir": str(out),
        "started": utcnow(), "step_started": None, "ended": None, "interrupted": False,
        "step": {"name": spec.name, "status": "preparing", "exit_code": None, "reason": None},
        "image": {"ref": spec.image, "id": None}, "engine": {"version": engine_info.version},
        "policy": {"mode": config.policy.mode, "digest": config.policy.digest(),
                   "allow": [r.text for r in config.policy.rules]},
        "docker": {}, "probes": [], "outputs": [], "flows": {}, "faults": [],
        "evidence": None,
    }
    write_json(out / "run.json", record)
    sandbox = Sandbox(client, run_id, config,
                      SandboxOptions(runtime_image=runtime_image,
                                     egress_network=options.egress_network,
                                     host_ips=host_addresses(client)),
                      events.add, out / "logs")
    step_started: datetime | None = None
    probes: tuple[ProbeResult, ...] = ()
    facts: SandboxFacts | None = None
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    error: SbxError | None = None
    try:
        record["image"]["id"] = sandbox.image_digest()
        view.phase(spec.name, "preparing the sandbox (network, gateway, agent)")
        sandbox.prepare()
        record["step"]["status"] = "probing"
        view.phase(spec.name, "probing from inside the step's namespace")
        probes = sandbox.probe()
        record["probes"] = [_probe_dict(p) for p in probes]
        leaks = [p for p in probes if not p.blocked]
        if leaks:
            raise SandboxFailure("fail closed: probes got through: " + "; ".join(
                f"{p.name} {p.target} ({p.detail})" for p in leaks))
        view.phase(spec.name, f"{len(probes)} probes blocked; running the step")
        record["step"]["status"] = "running"
        write_json(out / "run.json", record)
        record["step_started"] = utcnow()
        step_started = parse_time(record["step_started"])
        view.armed = True
        status, code = sandbox.run_step(out / "logs" / f"{spec.name}.log", masker.data)
        record["step"].update(status=status, exit_code=code)
        if status == "timeout":
            record["step"]["reason"] = f"timed out after {config.limits.timeout:.0f} s"
        record["outputs"] = [_output_dict(o) for o in
                             sandbox.collect_outputs(out / "outputs" / spec.name)]
    except _Interrupted as exc:
        record["interrupted"] = True
        record["step"].update(status="interrupted", reason=f"interrupted by {exc}")
    except SbxError as exc:
        status = ("blocked" if isinstance(exc, SandboxFailure)
                  else "failed" if exc.exit_code == EXIT_FAILED else "error")
        record["step"].update(status=status, reason=masker.text(exc.diagnostics()))
        error = exc
    finally:
        # A second Ctrl-C must not stop the clean-up half-way.
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        try:
            if sandbox.network is not None:
                facts = sandbox.facts(engine_info.version) if "step" in sandbox.containers \
                    else None
                record["docker"] = {"network": sandbox.network.id,
                                    "egress_network": sandbox.egress_network,
                                    "network_name": sandbox.network.name,
                                    "subnet": sandbox.network.subnet,
                                    "internal": facts.internal if facts else None,
                                    "containers": dict(sandbox.containers)}
        except Exception:  # facts are best effort once things went wrong
            pass
        sandbox.close()
        events.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    record["faults"] = [masker.text(f) for f in sandbox.faults]
    record["flows"] = events.flow_counts(step_started)
    record["ended"] = utcnow()
    exit_code = _verdict(record, config.policy.mode)
    view.phase(spec.name, f"signing evidence ({signer.kind})")
    step_ev = StepEvidence(
        name=spec.name, command=config.command,
        materials=ev.workspace_materials(config.inputs),
        products=tuple(Artifact(f"outputs/{spec.name}/{o['path']}", o["sha256"])
                       for o in record["outputs"]),
        logs=ev.log_artifacts(out, spec.name), status=record["step"]["status"],
        exit_code=record["step"]["exit_code"], reason=record["step"]["reason"],
        image=spec.image, image_id=record["image"]["id"], started=record["step_started"],
        ended=record["ended"],
        isolation=ev.isolation_of(
            facts, policy=config.policy.to_dict(), probes=probes, flows=record["flows"],
            reached=ev.destinations(events.events, spec.name, record["step_started"]),
            events=events.digest(spec.name)) if facts is not None else None)
    binding = RunBinding(run_id, digest.removeprefix("sha256:"),
                         ev.git_commit(workspace, os.environ))
    signed = ev.sign_run(RunEvidence(
        binding=binding, spec_path=path.name, steps=(step_ev,), sbx_version=sbx.__version__,
        builder_id=ev.builder_id(os.environ), started=record["started"],
        ended=record["ended"], interrupted=record["interrupted"],
        ci=ev.ci_context(os.environ)), signer, out)
    record["evidence"] = {"signer": signed.signer, "error": signed.error,
                          "files": [p.relative_to(out).as_posix() for p in signed.files]}
    write_json(out / "run.json", record)
    view.summary(record)
    if error is not None and error.exit_code != EXIT_FAILED:
        raise error  # an environment failure: exit 3 after the records are written
    if signed.error is not None:
        raise SigningError(f"{signed.error} (the Statements are kept unsigned in {out})")
    return RunResult(run_id=run_id, out_dir=out, exit_code=exit_code, record=record)


def _verdict(record: dict[str, Any], mode: str) -> int:
    step = record["step"]
    if record["interrupted"]:
        return EXIT_INTERRUPTED
    if step["status"] != "succeeded":
        return EXIT_FAILED
    if record["faults"]:
        step["status"], step["reason"] = "failed", "; ".join(record["faults"])
        return EXIT_FAILED
    denied = record["flows"].get("denied", 0)
    if denied and mode == "enforce":
        step["reason"] = f"{denied} egress attempt(s) denied (enforce mode)"
        return EXIT_FAILED
    return EXIT_OK


def _probe_dict(p: ProbeResult) -> dict[str, Any]:
    return {"name": p.name, "kind": p.kind, "target": p.target, "blocked": p.blocked,
            "detail": p.detail}


def _output_dict(o: OutputFile) -> dict[str, Any]:
    return {"path": o.path, "sha256": o.sha256, "size": o.size}
