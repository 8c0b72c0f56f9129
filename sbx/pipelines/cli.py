"""The `sbx` command line: a thin layer over the library.

Every user-facing failure is an `SbxError`: one line on stderr and its exit code
(2 bad input, 3 environment, 1 failed step). Tracebacks only with -v.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

import sbx
import sbx.pipelines.fast_start  # first: see its docstring
from sbx.attest.signing.interface import SignerKind
from sbx.errors import (
    EXIT_ENVIRONMENT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    InputError,
    SbxError,
    one_line,
)
from sbx.pipelines import cli_jobs
from sbx.pipelines.report.live import LiveView
from sbx.pipelines.spec.loader import load_yaml
from sbx.pipelines.spec.pipeline import is_pipeline, validate_pipeline
from sbx.pipelines.spec.release import is_release_policy, validate_release_policy
from sbx.pipelines.spec.step import step_json_schema, validate_step
from sbx.sandbox.pull import PullPolicy
from sbx.shown import plain


class Command(enum.StrEnum):
    """The sub-commands."""

    RUN = "run"
    LINT = "lint"
    SCHEMA = "schema"
    GC = "gc"
    IMAGE = "image"
    VERSION = "version"
    KEYGEN = "keygen"
    VERIFY = "verify"
    REPORT = "report"
    PLAN = "plan"
    LEARN = "learn"
    GITLAB = "gitlab"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sbx", description="Run build steps in isolated sandboxes.")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser(Command.RUN.value, help="run a step file in its own sandbox")
    run.add_argument("file", type=Path)
    run.add_argument("--out", type=Path, help="records directory (default .sbx/runs/<run-id>)")
    run.add_argument("--workspace", type=Path,
                     help="where inputs are read (default: the file's folder)")
    run.add_argument("--egress-network", default=os.environ.get("SBX_EGRESS_NETWORK") or None,
                     help="existing Docker network the gateway reaches the outside through "
                          "(default: $SBX_EGRESS_NETWORK, else a fresh network per step)")
    run.add_argument("--no-build", action="store_true",
                     help="fail instead of building missing sbx images")
    run.add_argument("--pull", type=PullPolicy, choices=list(PullPolicy),
                     help="pull policy for every step's image, overriding the steps' `pull` "
                          "(always, if-not-present, never)")
    run.add_argument("--base", metavar="IMAGE", default=None,
                     help="build the gateway image FROM this registry image when it is "
                          "missing (default: $SBX_IMAGE_BASE, else mmdebstrap)")
    run.add_argument("-q", "--quiet", action="store_true", help="print only the result line")
    run.add_argument("--signer", type=SignerKind, choices=list(SignerKind),
                     help="local (default: Ed25519 key) or sigstore (keyless)")
    run.add_argument("--key", type=Path,
                     help="Ed25519 private key for --signer local (default: $SBX_SIGNING_KEY, "
                          "else a per-project key in .sbx/keys/)")
    run.add_argument("--identity-token",
                     help="OIDC token for --signer sigstore (default: $SIGSTORE_IDENTITY_TOKEN,"
                          " $SIGSTORE_ID_TOKEN, or ambient CI credentials)")
    run.add_argument("--trust-config", type=Path,
                     help="Sigstore client trust config JSON of a self-hosted instance")
    run.add_argument("--alert-webhook", metavar="URL",
                     help="POST every violation as JSON (Slack-compatible `text`) to URL")
    run.add_argument("--junit", type=Path, metavar="FILE",
                     help="write step results and violations as a JUnit report")
    run.add_argument("--codequality", type=Path, metavar="FILE",
                     help="write violations as a GitLab Code Quality report")
    cli_jobs.add_run_arguments(run)
    lint = sub.add_parser(Command.LINT.value,
                          help="validate step and release-policy files without running them")
    lint.add_argument("files", type=Path, nargs="+")
    schema = sub.add_parser(Command.SCHEMA.value, help="print a file format's JSON Schema")
    kind = schema.add_mutually_exclusive_group()
    kind.add_argument("--release-policy", action="store_true",
                      help="the release policy's schema instead of the step file's")
    kind.add_argument("--pipeline", action="store_true",
                      help="the pipeline file's schema instead of the step file's")
    keygen = sub.add_parser(Command.KEYGEN.value, help="make an Ed25519 signing key pair")
    keygen.add_argument("--out", type=Path, default=Path("."),
                        help="folder for sbx.key and sbx.pub (default: .)")
    verify = sub.add_parser(Command.VERIFY.value,
                            help="verify a run's signed evidence against a release policy")
    verify.add_argument("run_dirs", type=Path, nargs="+", metavar="run_dir",
                        help="a run directory; several (or a folder of them): the jobs of "
                             "one pipeline, verified as one")
    verify.add_argument("--policy", type=Path, help="release policy YAML")
    verify.add_argument("--key", type=Path, action="append", default=[],
                        help="trusted Ed25519 public key (repeatable)")
    verify.add_argument("--cert-identity", help="Sigstore certificate identity (SAN)")
    verify.add_argument("--cert-oidc-issuer", help="Sigstore certificate OIDC issuer")
    verify.add_argument("--trusted-root", type=Path,
                        help="Sigstore trusted root (or client trust config) JSON")
    verify.add_argument("--artifact", type=Path, action="append", default=[],
                        help="a release artifact that must be a provenance subject "
                             "(repeatable)")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    report = sub.add_parser(Command.REPORT.value,
                            help="write a self-contained HTML report of a run")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--html", type=Path, required=True, metavar="FILE")
    report.add_argument("--policy", type=Path, help="release policy for the verdict")
    report.add_argument("--key", type=Path, action="append", default=[],
                        help="trusted public key for the verdict (repeatable)")
    report.add_argument("--cert-identity", help="Sigstore certificate identity")
    report.add_argument("--cert-oidc-issuer", help="Sigstore certificate OIDC issuer")
    report.add_argument("--trusted-root", type=Path, help="Sigstore trusted root JSON")
    plan = sub.add_parser(Command.PLAN.value,
                          help="dry-run a changed policy against a recorded run's flows")
    plan.add_argument("file", type=Path, help="the changed step or pipeline file")
    plan.add_argument("--against", type=Path, required=True, metavar="RUN_DIR")
    learn = sub.add_parser(Command.LEARN.value,
                           help="propose the smallest allowlist per step from a run's flows")
    learn.add_argument("run_dir", type=Path)
    gc = sub.add_parser(Command.GC.value, help="remove Docker objects left by crashed runs")
    gc.add_argument("--run", help="only this run id")
    gc.add_argument("--force", action="store_true",
                    help="also remove runs whose sbx process is still running")
    image = sub.add_parser(Command.IMAGE.value, help="build sbx's images")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    build = image_sub.add_parser("build", help="build the runtime and step images offline")
    build.add_argument("--force", action="store_true", help="rebuild even when present")
    build.add_argument("--base", help="build FROM this registry image instead of mmdebstrap")
    cli_jobs.add_gitlab_parser(sub)
    sub.add_parser(Command.VERSION.value, help="print the version")
    return p


def _run(args: argparse.Namespace, console: Console) -> int:
    from sbx.pipelines.report.alerts import check_webhook_url
    from sbx.pipelines.run.evidence import SigningOptions
    from sbx.pipelines.run.runner import RunOptions, run_file

    signing = SigningOptions(signer=args.signer, key=args.key,
                             identity_token=args.identity_token,
                             trust_config=args.trust_config)
    webhook = check_webhook_url(args.alert_webhook) if args.alert_webhook else None
    result = run_file(args.file, RunOptions(out_dir=args.out, workspace=args.workspace,
                                            egress_network=args.egress_network,
                                            build_images=not args.no_build, signing=signing,
                                            pull=args.pull, base=args.base,
                                            alert_webhook=webhook, junit=args.junit,
                                            codequality=args.codequality,
                                            job=cli_jobs.job_options(args)),
                      LiveView(console, quiet=args.quiet))
    record = result.record
    reason = f": {plain(record['reason'], 4096)}" if record.get("reason") else ""
    step = (record.get("pipeline") or {}).get("step")
    what = f"step {step} of pipeline" if step else record["kind"]
    print(f"sbx: {what} {record['name']} {record['status']}{reason} "
          f"(records in {result.out_dir})", file=sys.stderr)
    return result.exit_code


def _report(args: argparse.Namespace) -> int:
    from sbx.attest.errors import EvidenceInputError
    from sbx.pipelines.report.html import write_html
    from sbx.pipelines.verify import VerifyOptions, verify

    if not args.run_dir.is_dir():
        raise InputError(f"{args.run_dir}: not a directory: pass the run directory that "
                         "sbx run printed")
    options = VerifyOptions(run_dir=args.run_dir, policy=args.policy, keys=tuple(args.key),
                            identity=args.cert_identity, issuer=args.cert_oidc_issuer,
                            trusted_root=args.trusted_root)
    try:
        verification = verify(options).to_dict()
    except EvidenceInputError as exc:
        if args.key or args.cert_identity or args.policy:
            raise  # the user asked for a verdict and it cannot be had: say why
        print(f"sbx: report without a verdict: {exc.diagnostics()}", file=sys.stderr)
        verification = None
    write_html(args.run_dir, args.html, verification)
    print(f"{args.html}: report of {args.run_dir}"
          + ("" if verification is None else
             f" (verification {'passed' if verification['passed'] else 'FAILED'})"))
    return EXIT_OK


def _plan(args: argparse.Namespace) -> int:
    from sbx.pipelines.policy_tools import plan, recorded_flows, render_plan
    from sbx.pipelines.run.runner import load_run_file

    _, pipeline, _ = load_run_file(args.file)
    from sbx.pipelines.policy_tools.actions import (
        plan_requests,
        recorded_requests,
        render_request_plan,
    )

    policies = {s.spec.name: s.spec.policy() for s in pipeline.steps}
    print(render_plan(plan(policies, recorded_flows(args.against))), end="")
    print(render_request_plan(*plan_requests(policies, recorded_requests(args.against))),
          end="")
    return EXIT_OK


def _learn(args: argparse.Namespace) -> int:
    from sbx.pipelines.policy_tools import learn, recorded_flows, render_learn, unlearnable
    from sbx.pipelines.policy_tools.actions import (
        learn_actions,
        recorded_requests,
        render_learned_actions,
    )

    flows = recorded_flows(args.run_dir)
    print(render_learn(learn(flows), unlearnable(flows)), end="")
    print(render_learned_actions(learn_actions(recorded_requests(args.run_dir))), end="")
    return EXIT_OK


def _lint(args: argparse.Namespace) -> int:
    for path in args.files:
        loaded = load_yaml(path)
        if is_release_policy(loaded):
            policy = validate_release_policy(loaded)
            print(f"{path}: ok (release policy, {len(policy.required_steps)} required steps)")
            continue
        if is_pipeline(loaded):
            pipeline = validate_pipeline(loaded)
            print(f"{path}: ok (pipeline {pipeline.name}, {len(pipeline.steps)} steps: "
                  f"{' -> '.join(s.spec.name for s in pipeline.steps)})")
            continue
        spec = validate_step(loaded)
        print(f"{path}: ok (step {spec.name}, {len(spec.egress.allow)} allow entries)")
    return EXIT_OK


def _keygen(args: argparse.Namespace) -> int:
    from sbx.attest.signing.local import keygen

    pair = keygen(args.out)
    print(f"private key {pair.private} (keep it secret; sbx run --key {pair.private})")
    print(f"public key  {pair.public} (sbx verify --key {pair.public})")
    print(f"key id      {pair.keyid}")
    return EXIT_OK


def _verify(args: argparse.Namespace, console: Console) -> int:
    from sbx.attest.verify.jobs import is_run_dir
    from sbx.pipelines.verify import VerifyOptions, render, render_json, verify

    if len(args.run_dirs) > 1 or not is_run_dir(args.run_dirs[0]):
        return cli_jobs.verify_many(args, console)
    report = verify(VerifyOptions(
        run_dir=args.run_dirs[0], policy=args.policy, keys=tuple(args.key),
        identity=args.cert_identity, issuer=args.cert_oidc_issuer,
        trusted_root=args.trusted_root, artifacts=tuple(args.artifact)))
    if args.json:
        print(render_json(report))
    else:
        render(report, console)
    return EXIT_OK if report.passed else EXIT_FAILED


def _gc(args: argparse.Namespace) -> int:
    from sbx.sandbox import engine
    from sbx.sandbox.gc import collect

    result = collect(engine.connect(), args.run, force=args.force)
    for what in result.removed:
        print(f"removed {what}")
    for run in result.live_runs:
        print(f"kept run {run}: the sbx process that started it is still running "
              "(stop it, or use --force)")
    print(f"sbx gc: {len(result.removed)} object(s) removed")
    return EXIT_OK


def _image(args: argparse.Namespace) -> int:
    from sbx.sandbox import engine, images

    client = engine.connect()
    for tag in images.build_images(client, force=args.force, base=args.base):
        print(tag)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sbx` console script."""
    args = _parser().parse_args(argv)
    console = Console(stderr=False, highlight=False)
    try:
        match Command(args.command):
            case Command.RUN:
                return _run(args, console)
            case Command.LINT:
                return _lint(args)
            case Command.SCHEMA:
                from sbx.attest.verify.policy import release_policy_schema
                from sbx.pipelines.spec.pipeline import pipeline_json_schema

                schema = (release_policy_schema() if args.release_policy
                          else pipeline_json_schema() if args.pipeline else step_json_schema())
                print(json.dumps(schema, indent=2))
                return EXIT_OK
            case Command.KEYGEN:
                return _keygen(args)
            case Command.VERIFY:
                return _verify(args, console)
            case Command.REPORT:
                return _report(args)
            case Command.PLAN:
                return _plan(args)
            case Command.LEARN:
                return _learn(args)
            case Command.GITLAB:
                return cli_jobs.gitlab(args)
            case Command.GC:
                return _gc(args)
            case Command.IMAGE:
                return _image(args)
            case Command.VERSION:
                print(f"sbx {sbx.__version__}")
                return EXIT_OK
    except SbxError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"sbx: error: {one_line(exc.diagnostics(), 1000)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("sbx: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: say so in one line, trace with -v
        if args.verbose:
            traceback.print_exc()
        print(f"sbx: internal error: {type(exc).__name__}: {exc} (run with -v for details)",
              file=sys.stderr)
        return EXIT_ENVIRONMENT


if __name__ == "__main__":
    sys.exit(main())
