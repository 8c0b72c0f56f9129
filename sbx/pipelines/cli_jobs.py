"""The command line of scaling out: `sbx run --step`, `sbx verify DIR DIR ...`, `sbx gitlab`.

Kept apart from `cli` so that module stays a table of sub-commands; each function
here is one sub-command's (or flag group's) thin layer over the library.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sbx.errors import EXIT_FAILED, EXIT_OK, InputError
from sbx.pipelines.run.step_job import JobOptions

_STYLE = {"pass": "green", "fail": "bold red", "skip": "dim"}


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    """`sbx run`'s flags for running one step of a pipeline as one CI job."""
    group = run.add_argument_group(
        "one step of a pipeline per job",
        "Run one step of a pipeline file; its hand-offs come from the producers' run "
        "directories, verified before anything is copied in (refused: exit 1; missing: "
        "exit 2).")
    group.add_argument("--step", metavar="NAME", help="run only this step of the pipeline")
    group.add_argument("--inputs-from", type=Path, action="append", default=[], metavar="DIR",
                       help="a producer's run directory, or a folder of them (repeatable)")
    group.add_argument("--pipeline-id",
                       help="binds the jobs of one pipeline (default: GitLab's "
                            "CI_PIPELINE_ID with the project, else the inputs', else new)")
    group.add_argument("--inputs-key", type=Path, action="append", default=[], metavar="PUB",
                       help="trust producers signed by this public key (repeatable; default:"
                            " the key this job signs with)")
    group.add_argument("--inputs-cert-identity", metavar="SAN",
                       help="trust producers signed by this Sigstore identity (default: "
                            "this job's own identity)")
    group.add_argument("--inputs-cert-oidc-issuer", metavar="URL",
                       help="the OIDC issuer of --inputs-cert-identity")
    group.add_argument("--inputs-trusted-root", type=Path, metavar="FILE",
                       help="Sigstore trusted root for the producers (default: --trust-config)")


def job_options(args: argparse.Namespace) -> JobOptions | None:
    """The job flags, or None for a whole run; flags without --step are refused."""
    given = [flag for flag, value in (
        ("--inputs-from", args.inputs_from), ("--inputs-key", args.inputs_key),
        ("--inputs-cert-identity", args.inputs_cert_identity),
        ("--inputs-cert-oidc-issuer", args.inputs_cert_oidc_issuer),
        ("--inputs-trusted-root", args.inputs_trusted_root)) if value]
    if args.step is None:
        if given:
            raise InputError(f"{given[0]} needs --step: it names the inputs of one step "
                             "run as one job")
        return JobOptions(pipeline_id=args.pipeline_id) if args.pipeline_id else None
    return JobOptions(step=args.step, inputs_from=tuple(args.inputs_from),
                      pipeline_id=args.pipeline_id, trust_keys=tuple(args.inputs_key),
                      trust_identity=args.inputs_cert_identity,
                      trust_issuer=args.inputs_cert_oidc_issuer,
                      trusted_root=args.inputs_trusted_root)


def add_gitlab_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`sbx gitlab`."""
    from sbx.pipelines.gitlab import DEFAULT_IMAGE, DEFAULT_INSTALL

    gitlab = sub.add_parser("gitlab", help="write a GitLab child pipeline: one job per step")
    gitlab.add_argument("file", type=Path, help="the pipeline file")
    gitlab.add_argument("--out", type=Path, help="write here instead of standard output")
    gitlab.add_argument("--image", default=DEFAULT_IMAGE, help="image of the jobs")
    gitlab.add_argument("--install", default=DEFAULT_INSTALL,
                        help="the command that installs sbx in each job")
    gitlab.add_argument("--signer", choices=["sigstore", "local"], default="sigstore",
                        help="sigstore (id_tokens, default) or local (SBX_SIGNING_KEY and "
                             "SBX_PUBLIC_KEY as CI/CD variables)")
    gitlab.add_argument("--cert-identity", default="",
                        help="identity the verify job requires (default: this project's CI "
                             "config at the ref being built)")
    gitlab.add_argument("--cert-oidc-issuer", default="",
                        help="issuer the verify job requires (default: $CI_SERVER_URL)")
    gitlab.add_argument("--policy", help="release policy file for the verify job")
    gitlab.add_argument("--no-dind", action="store_true",
                        help="no docker:dind service: the runners provide an engine")


def gitlab(args: argparse.Namespace) -> int:
    """Write the child pipeline of a pipeline file."""
    from sbx.pipelines.gitlab import GitlabOptions, child_pipeline, render
    from sbx.pipelines.run.runner import load_run_file

    _, pipeline, kind = load_run_file(args.file)
    if kind != "pipeline":
        raise InputError(f"{args.file}: a step file, not a pipeline file (no `steps:`): "
                         "run it with `sbx run` in one job")
    options = GitlabOptions(image=args.image, install=args.install, signer=args.signer,
                            cert_identity=args.cert_identity, cert_issuer=args.cert_oidc_issuer,
                            policy=args.policy, dind=not args.no_dind)
    text = render(child_pipeline(pipeline, args.file.as_posix(), options), args.file.as_posix())
    if args.out is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        args.out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{args.out}: cannot write the child pipeline ({exc.strerror}): "
                         "pass a writable --out") from None
    print(f"{args.out}: {len(pipeline.steps)} step job(s) and sbx:verify "
          f"(trigger it with `trigger: include: - artifact: {args.out}`)", file=sys.stderr)
    return EXIT_OK


def verify_many(args: argparse.Namespace, console: Console) -> int:
    """`sbx verify DIR DIR ...` (or a folder of run directories): one pipeline of jobs."""
    from sbx.attest.verify.jobs import expand_run_dirs, verify_pipeline
    from sbx.attest.verify.policy import DEFAULT_POLICY
    from sbx.pipelines.spec.release import load_release_policy
    from sbx.pipelines.verify import VerifyOptions, choose_trust

    policy = load_release_policy(args.policy) if args.policy else DEFAULT_POLICY
    trust = choose_trust(VerifyOptions(
        run_dir=args.run_dirs[0], policy=args.policy, keys=tuple(args.key),
        identity=args.cert_identity, issuer=args.cert_oidc_issuer,
        trusted_root=args.trusted_root), policy)
    report = verify_pipeline(expand_run_dirs(args.run_dirs), trust, policy,
                             tuple(args.artifact))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return EXIT_OK if report.passed else EXIT_FAILED
    table = Table(title=f"sbx verify: {len(report.jobs)} job(s) as one pipeline",
                  caption=f"trusting {escape(report.trust)}")
    for column in ("job", "check", "result", "reason"):
        table.add_column(column, overflow="fold")
    for job in report.jobs:
        for r in job.results:
            table.add_row(escape(job.label), r.check.value,
                          f"[{_STYLE[r.status.value]}]{r.status.value}[/]", escape(r.reason))
    for s in report.results:
        table.add_row("pipeline", s.check.value,
                      f"[{_STYLE[s.status.value]}]{s.status.value}[/]", escape(s.reason))
    console.print(table)
    failures = report.failures()
    if failures:
        console.print("verification [bold red]FAILED[/] (" + escape(", ".join(
            f"{job}: {check}" for job, check, _ in failures)) + ")")
        return EXIT_FAILED
    console.print("verification [bold green]PASSED[/]")
    return EXIT_OK
