"""`sbx run FILE`: a step or a pipeline, end to end, with its records and evidence.

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
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
from rich.markup import escape

import sbx
from sbx.attest.errors import SigningError
from sbx.attest.model import Artifact, RunBinding, RunEvidence, StepEvidence
from sbx.attest.signing.interface import Signer
from sbx.attest.statements import run_payloads
from sbx.attest.store import write_unsigned
from sbx.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    SpecError,
    is_disk_failure,
    run_dir_failure,
)
from sbx.pipelines.report.alerts import WebhookAlerter, WebhookOptions
from sbx.pipelines.report.ci import write_codequality, write_junit
from sbx.pipelines.report.live import LiveView
from sbx.pipelines.run import evidence as ev
from sbx.pipelines.run.entries import step_record
from sbx.pipelines.run.executor import Executor, StepState
from sbx.pipelines.run.host import RunEgress, host_addresses, run_egress_name
from sbx.pipelines.run.pulls import resolve_step_images
from sbx.pipelines.run.records import EventListener, EventLog, Masker, read_events, write_record
from sbx.pipelines.run.step_job import (
    JobOptions,
    fresh_pipeline_id,
    gitlab_pipeline_id,
    input_trust,
    select_step,
    stage,
    verify_producers,
)
from sbx.pipelines.spec.loader import LoadedDoc, load_yaml
from sbx.pipelines.spec.pipeline import Pipeline, PlannedStep, is_pipeline, validate_pipeline
from sbx.pipelines.spec.step import StepSpec, read_upstream_ca, spec_digest, validate_step
from sbx.sandbox import engine, images, labels
from sbx.sandbox.config import Limits, SandboxOptions, StepConfig
from sbx.sandbox.engine import ENGINE_ERRORS, is_unreachable
from sbx.sandbox.pull import PullPolicy
from sbx.sandbox.sandbox import Sandbox, remove_by_label, utcnow


@dataclass(frozen=True)
class RunOptions:
    """How to run: where records go and which network is the outside world."""

    out_dir: Path | None = None
    workspace: Path | None = None
    egress_network: str | None = None
    build_images: bool = True
    pull: PullPolicy | None = None  # overrides every step's `pull`
    base: str | None = None  # registry base for the gateway image (default $SBX_IMAGE_BASE)
    signing: ev.SigningOptions = field(default_factory=ev.SigningOptions)
    listeners: tuple[EventListener, ...] = ()
    alert_webhook: str | None = None
    junit: Path | None = None
    codequality: Path | None = None
    job: JobOptions | None = None  # one step of a pipeline as one CI job, or a pipeline id


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
                      timeout=float(res.timeout), disk=res.disk_bytes),
        proxy_env=spec.egress.proxy_env, inputs=resolve_inputs(spec, spec_path, workspace),
        outputs=tuple(spec.outputs),
        upstream_ca=(read_upstream_ca(spec.egress.upstream_ca, spec_path)
                     if spec.egress.upstream_ca else ""))


class _Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM; before the run's records exist the CLI reports it as Ctrl-C."""


def _on_signal(signum: int, _frame: Any) -> None:
    raise _Interrupted(signal.Signals(signum).name)


def load_run_file(path: Path) -> tuple[LoadedDoc, Pipeline, str]:
    """A step or pipeline file as a pipeline (a step file is a pipeline of one step)."""
    loaded = load_yaml(path)
    if is_pipeline(loaded):
        return loaded, validate_pipeline(loaded), "pipeline"
    spec = validate_step(loaded)
    return loaded, Pipeline(spec.name, (PlannedStep(spec, (), (), ()),)), "step"


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_file(path: Path, options: RunOptions, view: LiveView) -> RunResult:
    """Run a step or pipeline file; always leaves run.json and removes every Docker object.

    SIGINT and SIGTERM are handled from the first line: before any Docker object or
    record exists they end the run at once (exit 130); later, `_run_file` cleans up,
    records the phase each step was in, and still signs what it saw.
    """
    previous = {s: signal.signal(s, _on_signal) for s in _SIGNALS}
    try:
        return _run_file(path, options, view)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _run_file(path: Path, options: RunOptions, view: LiveView) -> RunResult:
    loaded, pipeline, kind = load_run_file(path)
    digest = spec_digest(loaded)
    job = options.job or JobOptions()
    all_steps = tuple(s.spec.name for s in pipeline.steps)
    chosen: PlannedStep | None = None
    if job.step is not None:
        pipeline, chosen = select_step(path, pipeline, kind, job.step)
    workspace = options.workspace or path.parent
    configs = {s.spec.name: step_config(s.spec, path, workspace, dict(os.environ))
               for s in pipeline.steps}
    # The signer first: a bad key or a missing token stops the run before anything runs.
    signer = ev.make_signer(options.signing, os.environ,
                            lambda m: view.phase(pipeline.name, m))
    # Producers from other jobs are verified before anything runs or is created.
    pipeline_id = job.pipeline_id or gitlab_pipeline_id(os.environ)
    producers = None
    if chosen is not None:
        producers = verify_producers(
            chosen, digest.removeprefix("sha256:"), job.inputs_from,
            input_trust(job, signer, options.signing.trust_config), pipeline_id)
        pipeline_id = producers.pipeline_id
    pipeline_id = pipeline_id or fresh_pipeline_id()
    client = engine.connect()

    def log(message: str) -> None:
        view.phase(pipeline.name, escape(message))

    runtime_image = images.ensure_runtime_image(client, build=options.build_images, log=log,
                                                base=options.base)
    if any(c.image == images.STEP_IMAGE for c in configs.values()):
        images.ensure_step_image(client, build=options.build_images, log=log)
    run_id = new_run_id()
    out = (options.out_dir or Path(".sbx/runs") / run_id).resolve()
    try:
        (out / "logs").mkdir(parents=True, exist_ok=True)
        for name in configs:
            (out / "outputs" / name).mkdir(parents=True, exist_ok=True)
            # Every step's Statements need a subject: a step stopped before it ran
            # (interrupted, the engine gone) is still about its (empty) log.
            (out / "logs" / f"{name}.log").touch()
        (out / "events.jsonl").touch()
        imported = stage(producers, out, chosen.spec.name) \
            if producers is not None and chosen is not None else ((), ())
    except OSError as exc:
        if not is_disk_failure(exc):
            raise
        raise run_dir_failure(out, exc, "creating it") from None
    masker = Masker(v for c in configs.values() for _, v in c.secrets)
    alerter = WebhookAlerter(WebhookOptions(options.alert_webhook), run_id) \
        if options.alert_webhook else None
    events = EventLog(out / "events.jsonl", masker,
                      listeners=[view.event, *options.listeners, *([alerter] if alerter else [])])
    engine_info = engine.info(client)
    record: dict[str, Any] = {
        "schema": "https://sbx.dev/run/v1", "kind": kind, "name": pipeline.name,
        "run_id": run_id, "sbx_version": sbx.__version__,
        "spec": {"path": str(path), "digest": digest}, "out_dir": str(out),
        "started": utcnow(), "ended": None, "interrupted": False, "status": "running",
        "reason": None, "engine": {"version": engine_info.version},
        "order": [s.spec.name for s in pipeline.steps],
        "pipeline": {"id": pipeline_id, "steps": list(all_steps), "step": job.step,
                     "needs": list(chosen.needs) if chosen else [],
                     "inputs_from": [str(d) for d in job.inputs_from],
                     "producers": list(producers.jobs) if producers else []},
        "steps": {s.spec.name: step_record(s, configs[s.spec.name]) for s in pipeline.steps},
        "evidence": None,
    }
    save = write_record(out / "run.json", record)
    host_ips = host_addresses(client)
    egress = options.egress_network or run_egress_name(run_id)
    run_egress = RunEgress(client, run_id) if options.egress_network is None else None
    states = {
        s.spec.name: StepState(s, configs[s.spec.name], Sandbox(
            client, run_id, configs[s.spec.name],
            SandboxOptions(runtime_image=runtime_image, egress_network=egress,
                           host_ips=host_ips, egress_ready=run_egress.wait if run_egress else None),
            events.add, out / "logs"), record["steps"][s.spec.name])
        for s in pipeline.steps}
    for st in states.values():
        st.imported = imported
    executor = Executor(states, out, events, masker, view, engine_info.version, save, alerter,
                        containers_gone=run_egress.remove if run_egress else None)
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    threads: list[threading.Thread] = []
    try:
        save()
        if save.error is not None:  # not even run.json fits: start nothing
            raise run_dir_failure(out, save.error, "writing run.json")
        # Every step image, pulled under its policy on the host side before any sandbox
        # exists (and before the live table, so a large pull can show its own bar).
        _pull_images(client, states, options.pull, path, view, log)
        if run_egress is not None:  # removed by label with the run's objects
            run_egress.start()
        view.start({s.spec.name: s.needs for s in pipeline.steps})
        # Held back while the workers start: a signal in between would leave `threads`
        # unset, and the clean-up below would not wait for workers already creating.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            threads = executor.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        executor.wait()
    except _Interrupted as exc:
        record["interrupted"] = True
        record["reason"] = f"interrupted by {exc} while " + (", ".join(
            f"{name} {phase}" for name, phase in executor.phases().items()) or "starting")
        # A second Ctrl-C must not stop the clean-up half-way.
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        executor.cancel()
        if threads:
            executor.wait(timeout=30)
    finally:
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        # Whatever a worker created while being cancelled goes too.
        try:
            if run_egress is not None:
                run_egress.join()
            remove_by_label(client, {labels.RUN: run_id})
        except ENGINE_ERRORS as exc:
            if not is_unreachable(exc):
                raise
            record["leftovers"] = (f"the Docker engine did not answer at clean-up: run "
                                   f"`sbx gc --run {run_id}` once it is back")
        events.close()
        view.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    record["ended"] = utcnow()
    exit_code = _verdict(record)
    errors = [st.error for st in states.values()
              if st.error is not None and st.error.exit_code not in (EXIT_FAILED,)]
    for failure in (save.error, events.error):
        if failure is not None:
            errors.append(run_dir_failure(out, failure, "writing its records"))
    if errors and not record["interrupted"]:
        # The environment failed (the engine, the disk): the run is an error, not a failure.
        record["status"], record["reason"] = "error", masker.text(errors[0].diagnostics())
    view.phase(pipeline.name, f"signing evidence ({signer.kind})")
    run_evidence = RunEvidence(
        binding=RunBinding(run_id, digest.removeprefix("sha256:"),
                           ev.git_commit(workspace, os.environ), pipeline_id),
        spec_path=path.name, steps=tuple(_evidence(st, out, events) for st in states.values()),
        sbx_version=sbx.__version__, builder_id=ev.builder_id(os.environ),
        started=record["started"], ended=record["ended"], interrupted=record["interrupted"],
        ci=ev.ci_context(os.environ), pipeline_steps=all_steps if chosen else ())
    signed = _sign(run_evidence, signer, out, record)
    if record["interrupted"]:
        exit_code = EXIT_INTERRUPTED
    # The evidence is written: the run is complete, and a late signal must not cut
    # run.json's last update or the reports.
    for s in _SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    record["evidence"] = {"signer": signed.signer, "error": signed.error,
                          "files": [p.relative_to(out).as_posix() for p in signed.files]}
    if alerter is not None:
        stats = alerter.close()  # bounded: a dead webhook costs at most its close budget
        record["alerts"] = {"sent": stats.sent, "failed": stats.failed,
                            "dropped": stats.dropped, "last_error": stats.last_error}
    # A display that failed is on record; the events it missed are not (they are in
    # events.jsonl all the same).
    record["faults"] = [masker.text(f) for f in events.faults]
    save()
    if options.junit is not None or options.codequality is not None:
        itemized = list(read_events(out / "events.jsonl"))  # bounded by ITEMIZED_LIMIT
        if options.junit is not None:
            write_junit(record, itemized, options.junit)
        if options.codequality is not None:
            write_codequality(record, itemized, options.codequality, str(path))
    view.summary(record)
    if save.error is not None and not errors:  # run.json's last update did not fit
        errors.append(run_dir_failure(out, save.error, "writing run.json"))
    if errors and not record["interrupted"]:
        raise errors[0]  # an environment failure: exit 3 after the records are written
    if signed.error is not None and not record["interrupted"]:
        raise SigningError(f"{signed.error} (the Statements are kept unsigned in {out})")
    return RunResult(run_id=run_id, out_dir=out, exit_code=exit_code, record=record)



def _pull_images(client: docker.DockerClient, states: dict[str, StepState],
                 override: PullPolicy | None, path: Path, view: LiveView,
                 log: Callable[[str], None]) -> None:
    """Resolve each step's image; the step runs the id resolved here. A step whose image
    cannot be had keeps the error, and its worker records it instead of running."""
    resolved, failed = resolve_step_images(
        client, {name: (st.plan.spec.image, override or st.plan.spec.pull)
                 for name, st in states.items()}, path, view.console, log, quiet=view.quiet)
    for name, image in resolved.items():
        st = states[name]
        st.config = replace(st.config, image_id=image.id)
        st.sandbox.step = st.config
        st.record["image"].update(repo_digest=image.repo_digest, platform=image.platform,
                                  pulled=image.pulled)
    for name, error in failed.items():
        states[name].error = error


def _sign(run: RunEvidence, signer: Signer, out: Path,
          record: dict[str, Any]) -> ev.SignedEvidence:
    """Sign the run's Statements; a signal or a full disk leaves them unsigned, said why."""
    try:
        return ev.sign_run(run, signer, out)
    except _Interrupted as exc:
        for s in _SIGNALS:  # writing the unsigned Statements must not be cut in turn
            signal.signal(s, signal.SIG_IGN)
        record.update(interrupted=True, status="interrupted",
                      reason=f"interrupted by {exc} while signing the evidence")
        error = "interrupted before the evidence was signed; the Statements are kept unsigned"
    except OSError as exc:
        if not is_disk_failure(exc):
            raise
        error = f"the signed evidence could not be written: {exc.strerror or exc}"
    try:
        files = tuple(write_unsigned(out, run_payloads(run)))
    except OSError:
        files = ()
    return ev.SignedEvidence(files, signer.describe(), error)


def _evidence(st: StepState, out: Path, events: EventLog) -> StepEvidence:
    rec = st.record
    return StepEvidence(
        name=st.name, command=st.config.command,
        # A step that never started was given nothing: list what it would have taken.
        materials=st.materials or (ev.workspace_materials(st.config.inputs)
                                   + st.imported[1]),
        products=tuple(Artifact(f"outputs/{st.name}/{o['path']}", o["sha256"])
                       for o in rec["outputs"]),
        logs=ev.log_artifacts(out, st.name), status=rec["status"],
        exit_code=rec["exit_code"], reason=rec["reason"], image=st.config.image,
        image_id=rec["image"]["id"], image_repo_digest=rec["image"].get("repo_digest"),
        image_platform=rec["image"].get("platform"),
        started=rec["step_started"], ended=rec["ended"],
        isolation=ev.isolation_of(
            st.facts, policy=st.config.policy.to_dict(), probes=st.probes,
            peer_probes=list(st.peer_probes), flows=rec["flows"],
            reached=events.destinations(st.name), events=events.digest(st.name),
            recording=ev.signed_recording(rec.get("recording")), actions=rec.get("requests"))
        if st.facts is not None else None)


def _verdict(record: dict[str, Any]) -> int:
    steps = record["steps"].values()
    if record["interrupted"]:
        record["status"] = "interrupted"
        return EXIT_INTERRUPTED
    bad = [s for s in steps if s["status"] != "succeeded"]
    if bad:
        record["status"] = "failed"
        record["reason"] = "; ".join(f"{s['name']} {s['status']}" for s in bad)
        return EXIT_FAILED
    record["status"] = "succeeded"
    return EXIT_OK
