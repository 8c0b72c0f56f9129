"""From a run's records to signed evidence: the glue between sandbox facts and attest.

The sandbox layer reports facts; the attest layer turns facts into signed
Statements. This module maps one onto the other, picks the signer the user
asked for, and writes the result next to the run's records.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbx.attest.digests import sha256_file
from sbx.attest.errors import SigningError
from sbx.attest.model import Artifact, Isolation, Probe, RunEvidence
from sbx.attest.signing.interface import Signer, SignerKind
from sbx.attest.signing.keyless import SigstoreSigner, find_token
from sbx.attest.signing.local import PRIVATE_NAME, LocalSigner, keygen
from sbx.attest.statements import run_payloads
from sbx.attest.store import write_signed, write_unsigned
from sbx.sandbox.config import ProbeResult, SandboxFacts

DEFAULT_KEY_DIR = Path(".sbx/keys")
CI_VARIABLES = ("CI_SERVER_URL", "CI_PROJECT_PATH", "CI_PIPELINE_ID", "CI_JOB_ID",
                "CI_JOB_URL", "CI_COMMIT_REF_NAME", "CI_COMMIT_SHA")


@dataclass(frozen=True)
class SigningOptions:
    """`--signer`, `--key`, `--identity-token`, `--trust-config`."""

    signer: SignerKind | None = None
    key: Path | None = None
    identity_token: str | None = None
    trust_config: Path | None = None
    key_dir: Path = DEFAULT_KEY_DIR


def make_signer(options: SigningOptions, environ: Mapping[str, str],
                notice: Callable[[str], None]) -> Signer:
    """The signer to use, set up before the run so a bad key or token stops it early.

    Local is the default. With no --key and no SBX_SIGNING_KEY, sbx keeps a
    per-project key under .sbx/keys/ and says where it is.
    """
    kind = options.signer or SignerKind.LOCAL
    if kind is SignerKind.SIGSTORE:
        token = find_token(options.identity_token, environ)
        return SigstoreSigner(token, options.trust_config)
    key = options.key or (Path(environ["SBX_SIGNING_KEY"])
                          if environ.get("SBX_SIGNING_KEY") else None)
    if key is None:
        key = options.key_dir / PRIVATE_NAME
        if not key.exists():
            pair = keygen(options.key_dir)
            notice(f"made a signing key for this project: {pair.private} (verify with "
                   f"--key {pair.public}; keep it, or pass --key)")
    return LocalSigner(key)


def git_commit(workspace: Path, environ: Mapping[str, str]) -> str | None:
    """The commit being built: CI_COMMIT_SHA in GitLab, else git's HEAD, else None."""
    if environ.get("CI_COMMIT_SHA"):
        return environ["CI_COMMIT_SHA"]
    try:
        done = subprocess.run(["git", "-C", str(workspace), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) in (40, 64) else None


def ci_context(environ: Mapping[str, str]) -> dict[str, str]:
    """GitLab CI's job coordinates, when sbx runs inside a job."""
    return {k: environ[k] for k in CI_VARIABLES if environ.get(k)}


def builder_id(environ: Mapping[str, str]) -> str:
    """Who ran the build: the GitLab instance and project, or this machine's sbx."""
    if environ.get("CI_SERVER_URL") and environ.get("CI_PROJECT_PATH"):
        return f"{environ['CI_SERVER_URL']}/{environ['CI_PROJECT_PATH']}/-/sbx"
    return "https://sbx.dev/builders/local"


def workspace_materials(inputs: tuple[tuple[Path, str], ...]) -> tuple[Artifact, ...]:
    """The files a step was given from the workspace, by digest."""
    return tuple(Artifact(rel, sha256_file(path), "workspace")
                 for path, rel in inputs if path.is_file() and not path.is_symlink())


def log_artifacts(run_dir: Path, step: str) -> tuple[Artifact, ...]:
    """The step's log files in the run directory (its output, then sbx's diagnostics)."""
    names = [f"{step}.log", *(f"{step}.{role}.log" for role in ("gateway", "agent", "probe"))]
    found = [run_dir / "logs" / n for n in names]
    return tuple(Artifact(p.relative_to(run_dir).as_posix(), sha256_file(p))
                 for p in found if p.is_file() and not p.is_symlink())


def signed_recording(recording: Mapping[str, Any] | None) -> dict[str, int] | None:
    """run.json's `recording` as the isolation Statement states it (counts only)."""
    if not recording:
        return None
    keys = {"attempts": "attempts", "itemized": "itemized",
            "decisions_not_itemized": "decisionsNotItemized",
            "firewall_dropped": "firewallDropped", "firewall_unlogged": "firewallUnlogged",
            "dns_socket_drops": "dnsSocketDrops", "refused": "refused"}
    return {out: int(recording[key]) for key, out in keys.items()
            if isinstance(recording.get(key), int)}


def _probe(p: ProbeResult) -> Probe:
    return Probe(p.name, p.kind, p.target, p.blocked, p.detail, p.reached_if)


def isolation_of(facts: SandboxFacts, *, policy: Mapping[str, Any],
                 probes: tuple[ProbeResult, ...] | list[ProbeResult], flows: Mapping[str, int],
                 reached: tuple[str, ...], events: tuple[str, int],
                 peer_probes: list[ProbeResult] | None = None,
                 recording: Mapping[str, int] | None = None,
                 actions: Mapping[str, Any] | None = None) -> Isolation:
    """The sandbox facts as the isolation predicate states them."""
    return Isolation(
        network_id=facts.network_id, network_name=facts.network_name, subnet=facts.subnet,
        internal=facts.internal, egress_network=facts.egress_network,
        attached=facts.attached, containers=dict(facts.containers),
        cap_drop=facts.step_cap_drop, cap_add=facts.step_cap_add,
        security_opt=facts.step_security_opt, privileged=facts.step_privileged,
        agent_caps=dict(facts.agent_caps), engine_version=facts.engine_version,
        policy=dict(policy), policy_digest=facts.policy_digest.removeprefix("sha256:"),
        probes=tuple(_probe(p) for p in probes),
        peer_probes=tuple(_probe(p) for p in peer_probes or []),
        flows=dict(flows), destinations=reached, events_sha256=events[0],
        events_count=events[1], recording=recording, actions=actions)


@dataclass(frozen=True)
class SignedEvidence:
    """What signing left in the run directory."""

    files: tuple[Path, ...]
    signer: str
    error: str | None = None


def sign_run(run: RunEvidence, signer: Signer, run_dir: Path) -> SignedEvidence:
    """Sign every Statement of the run; on failure keep them unsigned and say why."""
    payloads = run_payloads(run)
    try:
        signed = [signer.sign(p) for p in payloads]
    except SigningError as exc:
        files = write_unsigned(run_dir, payloads)
        return SignedEvidence(tuple(files), signer.describe(), exc.diagnostics())
    return SignedEvidence(tuple(write_signed(run_dir, signed)), signer.describe())
