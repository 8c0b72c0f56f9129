"""`sbx verify`: choose whom to trust, verify a run directory, show every check."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sbx.attest.errors import EvidenceInputError
from sbx.attest.signing.local import PUBLIC_NAME, load_public_key
from sbx.attest.verify.model import Status
from sbx.attest.verify.policy import DEFAULT_POLICY, ReleasePolicy
from sbx.attest.verify.trust import IdentityTrust, KeyTrust, Trust, TrustFlags
from sbx.attest.verify.verifier import Report, verify_run
from sbx.pipelines.run.evidence import DEFAULT_KEY_DIR
from sbx.pipelines.spec.release import load_release_policy
from sbx.shown import markup, shown


@dataclass(frozen=True)
class VerifyOptions:
    """The command line of `sbx verify`."""

    run_dir: Path
    policy: Path | None = None
    keys: tuple[Path, ...] = ()
    identity: str | None = None
    issuer: str | None = None
    trusted_root: Path | None = None
    artifacts: tuple[Path, ...] = ()


def choose_trust(options: VerifyOptions, policy: ReleasePolicy) -> Trust:
    """Flags first, then the policy's signer, then this project's own key."""
    flags = TrustFlags(options.keys, options.identity, options.issuer, options.trusted_root)
    chosen = flags.trust(_policy_root(policy))
    if chosen is not None:
        return chosen
    signer = policy.signer
    if signer is not None and signer.key:
        return KeyTrust([load_public_key(Path(signer.key))])
    if signer is not None and signer.identity and signer.issuer:
        root = options.trusted_root or _policy_root(policy)
        return IdentityTrust(signer.identity, signer.issuer, root)
    project_key = DEFAULT_KEY_DIR / PUBLIC_NAME
    if project_key.is_file():
        return KeyTrust([load_public_key(project_key)])
    raise EvidenceInputError("no signer to trust: pass --key sbx.pub, or --cert-identity and "
                             "--cert-oidc-issuer, or set signer: in the --policy file")


def _policy_root(policy: ReleasePolicy) -> Path | None:
    root = policy.signer.trusted_root if policy.signer else None
    return Path(root) if root else None


def verify(options: VerifyOptions) -> Report:
    """Load the policy, choose the trust, run every check."""
    policy = load_release_policy(options.policy) if options.policy else DEFAULT_POLICY
    trust = choose_trust(options, policy)
    return verify_run(options.run_dir, trust, policy, options.artifacts)


_STYLE = {Status.PASS: "green", Status.FAIL: "bold red", Status.SKIP: "dim"}


def render(report: Report, console: Console) -> None:
    """The report as a table, one row per check, with its reason."""
    table = Table(title=markup(f"sbx verify {shown(report.run_dir)}"),
                  caption=markup(f"trusting {shown(report.trust)}"),
                  show_lines=False)
    table.add_column("check")
    table.add_column("result")
    table.add_column("reason", overflow="fold")
    for r in report.results:
        # Reasons quote names from the Statements and the run directory: data, not markup.
        table.add_row(*map(markup, (r.check.value, f"[{_STYLE[r.status]}]{r.status.value}[/]",
                                    shown(r.reason, limit=4096))))
    console.print(table)
    verdict = "[bold green]PASSED[/]" if report.passed else \
        f"[bold red]FAILED[/] ({', '.join(r.check.value for r in report.failed())})"
    console.print(markup(f"verification {verdict}"))


def render_json(report: Report) -> str:
    """The `--json` form."""
    return json.dumps(report.to_dict(), indent=2)
