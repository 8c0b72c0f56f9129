"""Running the steps of a run: one worker thread per step, each in its own sandbox.

Every step's sandbox is prepared as soon as one of PREPARE_SLOTS is free and the steps
it needs are being prepared (see `sbx.pipelines.run.peers`), so later steps' networks,
gateways and agents come up while earlier steps run. Each step then probes from inside
its own namespace, including its live neighbours' addresses (peer probes), then waits for
the steps it needs. Its container is created, with its inputs, ahead of its start: while
it probes, or once the steps it needs have stored their outputs. A step whose need did
not succeed is skipped, and what was created for it is removed unstarted. Hand-offs come
from the run's content-addressed store, re-hashed on the way in.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sbx.attest.model import Artifact
from sbx.errors import EXIT_FAILED, SbxError, is_disk_failure, run_dir_failure
from sbx.pipelines.report.alerts import WebhookAlerter
from sbx.pipelines.report.live import LiveView
from sbx.pipelines.run.entries import input_dict, output_dict, probe_dict
from sbx.pipelines.run.evidence import workspace_materials
from sbx.pipelines.run.handoff import STORE, hand_off, store_outputs
from sbx.pipelines.run.peers import (
    OrderedSlots,
    neighbours,
    preparation_order,
    wait_to_prepare,
)
from sbx.pipelines.run.records import FLOW_VERDICTS, EventLog, Masker, parse_time
from sbx.pipelines.spec.pipeline import PlannedStep
from sbx.sandbox.config import ProbeResult, SandboxFacts, StepConfig
from sbx.sandbox.engine import is_unreachable, lost
from sbx.sandbox.sandbox import Sandbox, SandboxFailure, utcnow

# Sandboxes prepared at once (shallowest first, then in run order: see
# `peers.preparation_order`): two containers and a network each, through one engine.
# More only queue inside the engine and slow every step alike.
PREPARE_SLOTS = 4
FINAL = frozenset({"succeeded", "failed", "timeout", "blocked", "skipped", "error"})


@dataclass
class StepState:
    """One step while the run goes: its sandbox, what it saw, whether it succeeded."""

    plan: PlannedStep
    config: StepConfig
    sandbox: Sandbox
    record: dict[str, Any]
    admitted: threading.Event = field(default_factory=threading.Event)  # preparing, or never
    prepared: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    exited: threading.Event = field(default_factory=threading.Event)  # the worker returned
    ok: bool = False
    probes: tuple[ProbeResult, ...] = ()
    peer_probes: tuple[ProbeResult, ...] = ()
    facts: SandboxFacts | None = None
    step_started: datetime | None = None
    materials: tuple[Artifact, ...] = ()  # what the step was given: workspace, then hand-offs
    # Hand-offs verified from other jobs' run directories (`sbx run --step`): files
    # already in this run's store, and their materials.
    imported: tuple[tuple[tuple[Path, str], ...], tuple[Artifact, ...]] = ((), ())
    error: SbxError | None = None
    # What creating its container ahead of time raised (see Executor._create_ahead):
    # raised when the step would have created it itself, so not for a skipped step.
    deferred: SbxError | None = None
    stored: threading.Event = field(default_factory=threading.Event)  # its outputs are in
    phase: str = "pending"  # what it was doing, for the reason of an interruption

    @property
    def name(self) -> str:
        """The step's name."""
        return self.config.name


@dataclass
class Executor:
    """Runs every step of a run; `cancel()` from another thread stops them all."""

    steps: dict[str, StepState]
    out: Path
    events: EventLog
    masker: Masker
    view: LiveView
    engine_version: str
    save: Callable[[], None]
    alerter: WebhookAlerter | None = None
    # Called once no step has a container left (the run's egress network can go then).
    containers_gone: Callable[[], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    _gone: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _prepare_slots: OrderedSlots = field(default_factory=lambda: OrderedSlots(PREPARE_SLOTS))
    _tickets: dict[str, int] = field(default_factory=dict)  # see `preparation_order`

    def __post_init__(self) -> None:
        self._tickets = preparation_order({n: st.plan.needs for n, st in self.steps.items()})

    def start(self) -> list[threading.Thread]:
        """One worker per step, started at once."""
        threads = [threading.Thread(target=self._worker, args=(st,), name=f"sbx-{st.name}",
                                    daemon=True) for st in self.steps.values()]
        for t in threads:
            t.start()
        return threads

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every worker has returned; False if `timeout` ran out first.

        The main thread waits here, not in Thread.join: a signal handler that raises
        inside join() makes CPython (3.11) mark a live thread as stopped, and the
        clean-up would then not wait for a worker still creating objects.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        for st in self.steps.values():
            while not st.exited.wait(0.2):
                if deadline is not None and time.monotonic() > deadline:
                    return False
        return True

    def _worker(self, st: StepState) -> None:
        try:
            self._work(st)
        finally:
            st.exited.set()

    def cancel(self) -> None:
        """Stop every step: removing the sandboxes ends whatever each worker waits on."""
        self.cancelled.set()
        for st in self.steps.values():
            st.prepared.set()
            st.done.set()
        for st in self.steps.values():
            try:
                st.sandbox.close()
            except Exception:  # clean-up of a half-built sandbox is best effort here
                pass

    # -- one step ----------------------------------------------------------------------
    def phases(self) -> dict[str, str]:
        """What each step is doing right now (its status, or `copying outputs`)."""
        return {st.name: st.phase for st in self.steps.values()}

    def _set(self, st: StepState, **fields: Any) -> None:
        if "status" in fields:
            st.phase = str(fields["status"])
        with self._lock:
            st.record.update(fields)
            self.save()
        if "status" in fields:
            self.view.status(st.name, str(fields["status"]))

    def _work(self, st: StepState) -> None:
        try:
            self._prepare(st)
            creating = None
            if not st.plan.needs:  # nothing to wait for: create it while the probes run
                creating = threading.Thread(target=self._create_ahead, args=(st,), daemon=True)
                creating.start()
            try:
                self._probe(st)
            finally:  # never leaves a creation running past close()
                if creating is not None:
                    creating.join()
            if self._wait_for_needs(st):
                self._run(st)
        except SbxError as exc:
            if not self.cancelled.is_set():
                status = ("blocked" if isinstance(exc, SandboxFailure)
                          else "failed" if exc.exit_code == EXIT_FAILED else "error")
                st.error = exc
                self._set(st, status=status, reason=self.masker.text(exc.diagnostics()))
        except Exception as exc:  # a Docker call failing under a cancelled run lands here
            if not self.cancelled.is_set():
                st.error = self._failure(st, exc)
                self._set(st, status="error", reason=self.masker.text(st.error.diagnostics()))
        finally:
            st.prepared.set()
            if self.cancelled.is_set() and st.record["status"] not in FINAL | {"interrupted"}:
                self._set(st, status="interrupted", reason=f"interrupted while {st.phase}")
            self._finish(st)

    def _failure(self, st: StepState, exc: Exception) -> SbxError:
        # The engine or the disk going away is the environment's failure (exit 3),
        # anything else is this sandbox's.
        return (lost(exc) if is_unreachable(exc)
                else run_dir_failure(self.out, exc, f"running step {st.name}")
                if isinstance(exc, OSError) and is_disk_failure(exc)
                else SandboxFailure(f"{type(exc).__name__}: {exc}"))

    def _prepare(self, st: StepState) -> None:
        ticket = self._tickets[st.name]
        admitted = False
        try:
            if st.error is not None:  # its image could not be had (runner._pull_images)
                raise st.error
            self._set(st, status="preparing", started=utcnow())
            with st.sandbox.timed("image"):
                st.record["image"]["id"] = st.sandbox.image_digest()
            self.view.phase(st.name, "preparing the sandbox (network, gateway, agent)")
            with st.sandbox.timed("prepare_wait"):
                self._wait_to_prepare(st)
                admitted = self._prepare_slots.acquire(ticket, self.cancelled)
                st.admitted.set()
            if not admitted:
                raise SandboxFailure("cancelled")
            try:
                st.sandbox.prepare()
            finally:
                self._prepare_slots.release()
        finally:
            if not admitted:  # this step will never prepare: the next in order may
                self._prepare_slots.skip(ticket)
            st.admitted.set()
            st.prepared.set()

    def _wait_to_prepare(self, st: StepState) -> None:
        needs = [self.steps[n] for n in st.plan.needs]
        if not wait_to_prepare([n.admitted for n in needs],
                               [self.steps[g].prepared for n in needs for g in n.plan.needs],
                               self.cancelled):
            raise SandboxFailure("cancelled")

    def _live(self, other: StepState) -> bool:
        """Has a sandbox now and has not ended. Never waits: a neighbour still being
        prepared probes this step itself once its own sandbox is up."""
        return (other.prepared.is_set() and other.sandbox.network is not None
                and not other.done.is_set())

    def _peer_ips(self, st: StepState) -> list[str]:
        peers = []
        for other in neighbours(list(self.steps.values()), st, self._live):
            net = other.sandbox.network
            if net is not None and not other.done.is_set():
                peers += [net.gateway_ip, net.agent_ip]
        return peers

    def _probe(self, st: StepState) -> None:
        with st.sandbox.timed("peers_wait"):
            peers = self._peer_ips(st)
        if self.cancelled.is_set():
            raise SandboxFailure("cancelled")
        self._set(st, status="probing")
        if self.alerter is not None:
            self.alerter.step_probing(st.name)  # the probes' own denials are expected
        self.view.phase(st.name, "probing from inside the step's namespace"
                        + (f" and at {len(peers) // 2} other step(s)" if peers else ""))
        with st.sandbox.timed("probes"):
            results = st.sandbox.probe(peers)
        st.probes = tuple(p for p in results if not p.name.startswith("peer-"))
        st.peer_probes = tuple(p for p in results if p.name.startswith("peer-"))
        with self._lock:
            st.record["probes"] = [probe_dict(p) for p in st.probes]
            st.record["peer_probes"] = [probe_dict(p) for p in st.peer_probes]
        leaks = [p for p in results if not p.blocked]
        if leaks:
            raise SandboxFailure("fail closed: probes got through: " + "; ".join(
                f"{p.name} {p.target} ({p.detail})" for p in leaks))
        self.view.phase(st.name, f"{len(results)} probes blocked")
        with st.sandbox.timed("settle"):
            if not st.sandbox.fenced:  # the fence did not come back: wait for quiet instead
                self.events.wait_for_quiet(st.name)

    def _containers_gone(self) -> None:
        with self._lock:
            self._gone += 1
            last = self._gone == len(self.steps)
        if last and self.containers_gone is not None:
            self.containers_gone()

    def _wait_for_needs(self, st: StepState) -> bool:
        if st.plan.needs:
            self._set(st, status="waiting")
            self.view.phase(st.name, f"waiting for {', '.join(st.plan.needs)}")
        with st.sandbox.timed("needs_wait"):
            needs = [self.steps[need] for need in st.plan.needs]
            if needs:  # its inputs are read once they ran, as when it starts after them
                for need in needs:
                    need.stored.wait()
                # Their verdicts are still to come (they stop first): a step that then
                # does not succeed leaves this container unstarted, removed with the rest.
                if all(n.record["status"] == "succeeded" for n in needs):
                    self._create_ahead(st)
            for need in needs:
                need.done.wait()
        if self.cancelled.is_set():
            return False
        failed = [n for n in st.plan.needs if not self.steps[n].ok]
        if failed:
            self._set(st, status="skipped",
                      reason=f"not run: {', '.join(failed)} did not succeed")
            return False
        return True

    def _give_inputs(self, st: StepState) -> None:
        staged, handed = hand_off(self.out, st.plan, {n: o.record for n, o in self.steps.items()})
        staged, handed = st.imported[0] + staged, st.imported[1] + handed
        # Hashed once, here, just before they are packed: run.json's inputs and the link
        # Statement's materials.
        st.materials = workspace_materials(st.config.inputs) + handed
        st.sandbox.step = replace(st.config, inputs=st.config.inputs + staged)

    def _create_ahead(self, st: StepState) -> None:
        """Create the step's container and copy its inputs in before it may start (see
        `Sandbox.create_step`): while its probes run, or once the steps it needs have
        stored their outputs, while they stop. Nothing in it runs before `_run`."""
        if self.cancelled.is_set():
            return
        try:
            self._give_inputs(st)
            st.sandbox.create_step()
        except SbxError as exc:
            st.deferred = exc
        except Exception as exc:
            st.deferred = self._failure(st, exc)

    def _run(self, st: StepState) -> None:
        if st.deferred is not None:
            raise st.deferred
        if "step" not in st.sandbox.containers:
            self._give_inputs(st)
        self._set(st, status="running", step_started=utcnow(),
                  inputs=[input_dict(a) for a in st.materials])
        st.step_started = parse_time(st.record["step_started"])
        self.events.arm(st.name, st.step_started)
        self.view.arm(st.name)
        if self.alerter is not None:
            self.alerter.arm(st.name)
        self.view.phase(st.name, "running")
        status, code = st.sandbox.run_step(self.out / "logs" / f"{st.name}.log",
                                           self.masker.data)
        if self.cancelled.is_set():  # the container was killed under it: not its failure
            self._set(st, status="interrupted", exit_code=code, reason="interrupted while running")
            return
        reason = f"timed out after {st.config.limits.timeout:.0f} s" \
            if status == "timeout" else None
        if st.sandbox.storage.get("exceeded"):
            status, reason = "failed", (f"killed: wrote more than "
                                        f"{st.sandbox.storage['limit_bytes']} bytes to its "
                                        "writable layer (resources.disk)")
        elif code not in (0, None):
            status, reason = "failed", reason or f"exited {code}"
        # The status stays `running` until the outputs are out: an interruption while
        # copying must not leave a `succeeded` step without its outputs.
        st.phase = "copying outputs"
        self._set(st, exit_code=code, reason=reason)
        with st.sandbox.timed("copy_out"):
            try:
                outputs = st.sandbox.collect_outputs(self.out / "outputs" / st.name)
                store_outputs(self.out, outputs, self.out / "outputs" / st.name)
            except OSError as exc:
                if is_unreachable(exc) or not is_disk_failure(exc):
                    raise
                # Nothing of them is recorded or signed yet: free the space for the records.
                shutil.rmtree(self.out / "outputs" / st.name, ignore_errors=True)
                for tmp in (self.out / STORE).glob("*.tmp"):
                    tmp.unlink(missing_ok=True)
                raise run_dir_failure(self.out, exc, f"copying the outputs of {st.name} "
                                      "(its partial outputs were removed)") from None
        if self.cancelled.is_set():  # complete, so recorded, but the run was stopped
            status, reason = "interrupted", "interrupted while copying outputs"
        self._set(st, status=status, reason=reason, outputs=[output_dict(o) for o in outputs])
        st.stored.set()

    def _finish(self, st: StepState) -> None:
        """Facts, flows and the verdict, release the dependants, then remove the sandbox."""
        sandbox = st.sandbox
        try:
            if sandbox.network is not None and "step" in sandbox.containers:
                with sandbox.timed("facts"):
                    st.facts = sandbox.facts(self.engine_version)
        except Exception:  # facts are best effort once things went wrong
            pass
        net = sandbox.network
        if net is not None:
            st.record["docker"] = {
                "network": net.id, "egress_network": sandbox.egress_network,
                "network_name": net.name, "subnet": net.subnet,
                "internal": st.facts.internal if st.facts else None,
                "containers": dict(sandbox.containers)}
        # Stopping the gateway and agent brings in their last events: the verdict needs
        # them. Removing the objects does not, so dependants go on while that happens.
        try:
            with sandbox.timed("stop"):
                sandbox.stop()
            self._verdict(st)
        finally:
            st.done.set()  # st.ok is still False if the verdict could not be given
            st.stored.set()  # whatever it stored, a dependant waits no longer
            self._remove_sandbox(st)

    def _verdict(self, st: StepState) -> None:
        """The step's flows, faults and final status, from everything it recorded."""
        sandbox = st.sandbox
        rec = st.record
        rec["log"] = dict(sandbox.log_stats)
        if sandbox.storage:
            rec["storage"] = dict(sandbox.storage)
        rec["faults"] = [self.masker.text(f) for f in sandbox.faults]
        # A step that never ran its command has no traffic of its own, only its probes'.
        rec["flows"] = (self.events.flow_counts(st.name)
                        if st.step_started else dict.fromkeys(FLOW_VERDICTS, 0))
        rec["recording"] = sandbox.recorder_counts().summary(
            sum(rec["flows"].values()), self.events.itemized(st.name))
        requests = self.events.requests(st.name) if st.step_started else None
        if requests is not None:
            rec["requests"] = requests
        rec["ended"] = utcnow()
        if rec["status"] == "succeeded":
            denied = rec["flows"].get("denied", 0)
            refused = requests["deniedCount"] if requests else 0
            if rec["faults"]:
                rec.update(status="failed", reason="; ".join(rec["faults"]))
            elif denied and st.config.policy.mode == "enforce":
                rec.update(status="failed",
                           reason=f"{denied} egress attempt(s) denied (enforce mode)")
            elif refused and st.config.policy.mode == "enforce":
                rec.update(status="failed",
                           reason=f"{refused} HTTP request(s) denied (enforce mode)")
        if sandbox.recorder_fault is not None and rec["status"] != "interrupted":
            # Whatever else went wrong after it, the run's record has a gap: say so first.
            rec.update(status="failed", reason=self.masker.text(sandbox.recorder_fault))
        st.ok = rec["status"] == "succeeded" and not self.cancelled.is_set()
        with self._lock:
            self.save()
        self.view.status(st.name, rec["status"])
        self.view.phase(st.name, rec["status"] + (f": {rec['reason']}" if rec["reason"] else ""))

    def _remove_sandbox(self, st: StepState) -> None:
        """Remove the step's Docker objects; a removal that fails is recorded as a fault,
        but the verdict was given before (nothing the step did can happen any more)."""
        sandbox, rec = st.sandbox, st.record
        with sandbox.timed("cleanup"):
            try:
                sandbox.close(self._containers_gone)
            finally:
                with self._lock:
                    rec["faults"] = [self.masker.text(f) for f in sandbox.faults]
                    rec["log"] = dict(sandbox.log_stats)
        with self._lock:
            rec["timings"] = dict(sandbox.timings)
            self.save()
