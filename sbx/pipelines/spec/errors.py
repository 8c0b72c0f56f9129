"""One-line errors for spec files: a pydantic error turned into what is wrong, where (file,
line, dotted field) and the fix, with the dangerous fields a user may try refused by name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from pydantic import (
    BaseModel,
    ValidationError,
)
from pydantic_core import ErrorDetails

from sbx.errors import SpecError
from sbx.pipelines.spec.loader import FieldPath, LoadedDoc

DANGEROUS_FIELDS: Final[Mapping[str, str]] = {
    "privileged": "sbx never runs privileged containers; remove the field",
    "cap_add": "sbx drops all capabilities and never adds any; remove the field",
    "capabilities": "sbx drops all capabilities and never adds any; remove the field",
    "network_mode": "sbx puts every step on its own isolated network; remove the field "
    "and list destinations under egress.allow",
    "network": "sbx puts every step on its own isolated network; remove the field "
    "and list destinations under egress.allow",
    "networks": "sbx puts every step on its own isolated network; remove the field "
    "and list destinations under egress.allow",
    "host_network": "sbx never shares the host network; remove the field "
    "and list destinations under egress.allow",
    "pid": "sbx never shares host namespaces; remove the field",
    "ipc": "sbx never shares host namespaces; remove the field",
    "uts": "sbx never shares host namespaces; remove the field",
    "userns_mode": "sbx never shares host namespaces; remove the field",
    "devices": "sbx never passes host devices into a step; remove the field",
    "volumes": "sbx never mounts host paths; list workspace paths under inputs/outputs instead",
    "mounts": "sbx never mounts host paths; list workspace paths under inputs/outputs instead",
    "binds": "sbx never mounts host paths; list workspace paths under inputs/outputs instead",
    "security_opt": "sbx sets the security options itself; remove the field",
    "docker_socket": "sbx never gives a step the Docker socket; remove the field",
    "sysctls": "sbx never changes kernel parameters for a step; remove the field",
}
"""Fields a user may try from docker/compose habits; each gets its own refusal."""


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", type(None): "empty"}
    for typ, label in names.items():
        if type(value) is typ:
            return label
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


# --------------------------------------------------------------------------- errors


def format_field(loc: FieldPath) -> str:
    """``("egress", "allow", 0)`` -> ``egress.allow[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class that owns the last element of `loc`, for listing allowed fields."""
    model = root
    for part in loc[:-1]:
        info = model.model_fields.get(str(part))
        annotation = info.annotation if info is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _reason(root: type[BaseModel], error: ErrorDetails) -> str:
    """Our wording for one pydantic error: what is wrong and the fix, no boilerplate."""
    kind = error["type"]
    loc = error["loc"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    last = loc[-1] if loc else ""
    if kind == "extra_forbidden":
        if isinstance(last, str) and last in DANGEROUS_FIELDS:
            return DANGEROUS_FIELDS[last]
        model = _model_at(root, loc)
        allowed = f" (known fields: {', '.join(model.model_fields)})" if model else ""
        return f"unknown field; remove it or fix its spelling{allowed}"
    if kind == "missing":
        return f"required field is missing; add '{last}:' to the file"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "string_pattern_mismatch":
        hints = {
            "name": "use lowercase letters, digits, '_', '.', '-' (up to 63, starting "
            "with a letter or digit)",
            "image": "write an image reference such as sbx-step:bookworm",
            "user": "write a user name or uid, optionally ':group' (e.g. 1000:1000)",
        }
        hint = hints.get(str(last), "fix the value")
        return f"{value!r} is not valid; {hint}"
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        word = "at least" if kind == "too_short" else "at most"
        return f"needs {word} {bound} entr{'y' if bound == 1 else 'ies'}; fix the list"
    if kind == "literal_error":
        return f"{value!r} is not allowed; write {ctx.get('expected', 'a valid value')}"
    if kind == "enum":
        return f"{value!r} is not one of {ctx.get('expected', '')}; pick one of them"
    if kind in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}:
        bound = next(iter(ctx.values()), "")
        word = "at least" if kind.startswith("greater") else "at most"
        return f"{value!r} is out of range; use a value {word} {bound}"
    expected = {
        "string_type": "a string (quote it)",
        "int_type": "a whole number",
        "float_type": "a number",
        "bool_type": "true or false",
        "dict_type": "a mapping (key: value)",
        "tuple_type": "a list",
        "list_type": "a list",
        "model_type": "a mapping (key: value)",
        "model_attributes_type": "a mapping (key: value)",
    }.get(kind)
    if expected is not None:
        return f"expected {expected}, got {_kind(value)} {_short(value)}; fix the value"
    return f"{error['msg']}; fix the value"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _error_loc(error: ErrorDetails) -> FieldPath:
    # Dict-key errors end with the marker '[key]'; the key itself is the field. Union
    # branches show up as '<tag>' parts, which are not fields either.
    return tuple(p for p in error["loc"]
                 if p != "[key]" and not (isinstance(p, str) and p.startswith("<")))


def to_spec_error(loaded: LoadedDoc, root: type[BaseModel], exc: ValidationError) -> SpecError:
    """Pick the error a user should fix first and render it as one SpecError line."""
    errors = exc.errors(include_url=False)

    def rank(error: ErrorDetails) -> tuple[int, int]:
        loc = error["loc"]
        dangerous = (
            error["type"] == "extra_forbidden"
            and bool(loc)
            and isinstance(loc[-1], str)
            and loc[-1] in DANGEROUS_FIELDS
        )
        line = loaded.line_of(_error_loc(error)) or 0
        # A dangerous field beats anything else; otherwise top-to-bottom in the file.
        return (0 if dangerous else 1, line)

    first = min(errors, key=rank)
    loc = _error_loc(first)
    reason = " ".join(_reason(root, first).split())  # one line, whatever a message contained
    return SpecError(str(loaded.path), format_field(loc), reason, loaded.line_of(loc))

