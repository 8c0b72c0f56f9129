"""Loading a release policy file with the same guarded YAML and one-line errors as steps."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from sbx.attest.verify.policy import ReleasePolicy
from sbx.pipelines.spec.errors import to_spec_error
from sbx.pipelines.spec.loader import LoadedDoc, load_yaml


def is_release_policy(loaded: LoadedDoc) -> bool:
    """A document with any field only release policies have (`version:`, `isolation:`...)."""
    from sbx.pipelines.spec.step import StepSpec

    only_policy = set(ReleasePolicy.model_fields) - set(StepSpec.model_fields)
    return isinstance(loaded.data, dict) and bool(only_policy & set(loaded.data))


def validate_release_policy(loaded: LoadedDoc) -> ReleasePolicy:
    """Validate; relative `signer.key` and `signer.trusted_root` are taken from the file's
    folder, so the policy means the same wherever verify runs."""
    try:
        policy = ReleasePolicy.model_validate(loaded.data)
    except ValidationError as exc:
        raise to_spec_error(loaded, ReleasePolicy, exc) from None
    signer = policy.signer
    if signer is not None:
        base = loaded.path.parent
        updates = {k: str(base / v) for k, v in (("key", signer.key),
                                                 ("trusted_root", signer.trusted_root))
                   if v is not None and not Path(v).is_absolute()}
        if updates:
            policy = policy.model_copy(update={"signer": signer.model_copy(update=updates)})
    return policy


def load_release_policy(path: Path) -> ReleasePolicy:
    """Load and validate a release policy; errors name the file, line, field and fix."""
    return validate_release_policy(load_yaml(path))
