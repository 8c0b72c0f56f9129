"""The pipeline file: named steps (the step file's fields), `needs`, and hand-offs.

    name: wheel
    steps:
      fetch:  {image: ..., run: ..., outputs: [deps/], egress: {allow: [...]}}
      build:
        needs: [fetch]
        inputs: [src/, {from: fetch, path: deps/}]
        outputs: [dist/]

Everything is checked before anything runs: unknown names in `needs` or `from`,
cycles, and hand-offs of paths the producing step does not declare as outputs.
An input `from` a step implies `needs` on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import ConfigDict, Discriminator, Field, Tag, ValidationError

from sbx.errors import SpecError
from sbx.pipelines.spec.errors import to_spec_error
from sbx.pipelines.spec.loader import LoadedDoc
from sbx.pipelines.spec.step import (
    _NAME_RE,
    InputPath,
    OutputPath,
    StepSpec,
    _Model,
    read_upstream_ca,
)

MAX_STEPS = 64


class InputFrom(_Model):
    """An input handed over from an earlier step's declared outputs."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: str = Field(alias="from", strict=True, pattern=_NAME_RE.pattern)
    path: OutputPath


def _input_kind(value: Any) -> str:
    # A mapping is a hand-off, anything else a workspace path: errors then name one kind.
    return "<from>" if isinstance(value, dict | InputFrom) else "<workspace>"


PipelineInput = Annotated[Annotated[InputPath, Tag("<workspace>")]
                          | Annotated[InputFrom, Tag("<from>")], Discriminator(_input_kind)]


class PipelineStep(StepSpec):
    """A step inside a pipeline: its name is its key; it may need and take from others."""

    name: str = Field(default="", strict=True)
    needs: tuple[str, ...] = ()
    inputs: tuple[PipelineInput, ...] = ()  # type: ignore[assignment]


class PipelineSpec(_Model):
    """A pipeline file."""

    name: str = Field(strict=True, pattern=_NAME_RE.pattern)
    steps: dict[str, PipelineStep] = Field(min_length=1, max_length=MAX_STEPS)


@dataclass(frozen=True)
class PlannedStep:
    """One step, resolved: its spec (name set), dependencies and hand-offs."""

    spec: StepSpec
    needs: tuple[str, ...]
    handoffs: tuple[InputFrom, ...]
    allow_lines: tuple[int | None, ...]


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline in topological order."""

    name: str
    steps: tuple[PlannedStep, ...]

    def step(self, name: str) -> PlannedStep:
        """The planned step of that name."""
        return next(s for s in self.steps if s.spec.name == name)


def is_pipeline(loaded: LoadedDoc) -> bool:
    """A pipeline file has `steps:`; a step file never does."""
    return isinstance(loaded.data, dict) and "steps" in loaded.data


def _covers(output: str, path: str) -> bool:
    """Whether a declared output (file or dir/) contains the handed-over path."""
    out = output.rstrip("/")
    want = path.rstrip("/")
    return want == out or want.startswith(out + "/")


def validate_pipeline(loaded: LoadedDoc) -> Pipeline:
    """Validate a pipeline document; every refusal is one `SpecError` with file and line."""
    data = loaded.data
    if isinstance(data, dict) and isinstance(data.get("steps"), dict):
        for key in data["steps"]:
            if not isinstance(key, str) or not _NAME_RE.fullmatch(key):
                raise SpecError(str(loaded.path), f"steps.{key}",
                                f"{key!r} is not a valid step name; use lowercase letters, "
                                "digits, '_', '.', '-'", loaded.line_of(("steps", str(key))))
            step = data["steps"][key]
            if isinstance(step, dict) and "name" in step:
                raise SpecError(str(loaded.path), f"steps.{key}.name",
                                "a pipeline step is named by its key; remove 'name:'",
                                loaded.line_of(("steps", key, "name")))
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise to_spec_error(loaded, PipelineSpec, exc) from None
    file = str(loaded.path)

    def fail(loc: tuple[str | int, ...], reason: str) -> SpecError:
        return SpecError(file, ".".join(str(p) if isinstance(p, str) else f"[{p}]"
                                        for p in loc).replace(".[", "["),
                         reason, loaded.line_of(loc))

    needs: dict[str, tuple[str, ...]] = {}
    for name, step in spec.steps.items():
        found = list(step.needs)
        for i, need in enumerate(step.needs):
            if need not in spec.steps:
                raise fail(("steps", name, "needs", i),
                           f"no step named {need!r}; use one of {', '.join(spec.steps)}")
            if need == name:
                raise fail(("steps", name, "needs", i), "a step cannot need itself")
        for i, item in enumerate(step.inputs):
            if not isinstance(item, InputFrom):
                continue
            producer = spec.steps.get(item.from_)
            if producer is None or item.from_ == name:
                raise fail(("steps", name, "inputs", i, "from"),
                           f"no other step named {item.from_!r}; take inputs from one of "
                           f"{', '.join(n for n in spec.steps if n != name) or 'no step'}")
            if not any(_covers(o, item.path) for o in producer.outputs):
                declared = ", ".join(producer.outputs) or "nothing"
                raise fail(("steps", name, "inputs", i, "path"),
                           f"{item.from_} does not produce {item.path!r} (its outputs: "
                           f"{declared}); take a declared output")
            if item.from_ not in found:
                found.append(item.from_)
        needs[name] = tuple(found)
    order = _topological(needs, fail)
    planned = []
    for name in order:
        step = spec.steps[name]
        workspace_inputs = tuple(i for i in step.inputs if isinstance(i, str))
        plain = StepSpec.model_validate(
            {**step.model_dump(by_alias=True, exclude={"needs", "inputs"}, exclude_unset=True),
             "name": name, "inputs": workspace_inputs})
        lines = tuple(loaded.line_of(("steps", name, "egress", "allow", i))
                      for i in range(len(step.egress.allow)))
        plain._source_file = file
        plain._allow_lines = lines
        if plain.egress.upstream_ca is not None:
            read_upstream_ca(plain.egress.upstream_ca, loaded.path, loaded.line_of(
                ("steps", name, "egress", "upstream_ca")), f"steps.{name}.egress.upstream_ca")
        planned.append(PlannedStep(plain, needs[name],
                                   tuple(i for i in step.inputs if isinstance(i, InputFrom)),
                                   lines))
    return Pipeline(spec.name, tuple(planned))


def _topological(needs: dict[str, tuple[str, ...]], fail: Any) -> list[str]:
    """Kahn's order, stable by file order; a cycle is named step by step."""
    order: list[str] = []
    done: set[str] = set()
    pending = list(needs)
    while pending:
        ready = [n for n in pending if all(d in done for d in needs[n])]
        if not ready:
            cycle = _cycle(needs, pending)
            raise fail(("steps", cycle[0], "needs"),
                       f"steps form a cycle: {' -> '.join(cycle)}; remove one of these needs")
        for n in ready:
            order.append(n)
            done.add(n)
            pending.remove(n)
    return order


def _cycle(needs: dict[str, tuple[str, ...]], pending: list[str]) -> list[str]:
    path: list[str] = []
    node = pending[0]
    while node not in path:
        path.append(node)
        node = next(d for d in needs[node] if d in pending)
    return [*path[path.index(node):], node]


def pipeline_json_schema() -> dict[str, Any]:
    """JSON Schema of a pipeline file."""
    return PipelineSpec.model_json_schema(by_alias=True)
