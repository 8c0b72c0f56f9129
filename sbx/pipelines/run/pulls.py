"""Step images before a run: resolved, and pulled when the policy says so, on the host side.

Nothing of the run exists yet when this runs: a missing image, a refused login or an
unreachable registry stops the run in one line, before any sandbox is made. Large pulls show
a rich progress bar on a terminal; every pull ends with one line naming the digest it got.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

import docker
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from sbx.errors import SbxError, SpecError
from sbx.sandbox.pull import (
    ImageError,
    ImageReferenceError,
    PullPolicy,
    PullProgress,
    ResolvedImage,
    resolve_image,
)

# Below this a pull is over before a bar would help: one line says what was pulled.
LARGE_PULL = 16 * 1024 * 1024

Log = Callable[[str], None]


class PullDisplay:
    """A progress bar for one pull, shown once the pull is known to be large."""

    def __init__(self, console: Console, ref: str, *, quiet: bool = False) -> None:
        self.console = console
        self.ref = ref
        self.quiet = quiet
        self.last: PullProgress | None = None
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def update(self, progress: PullProgress) -> None:
        """Take the pull's progress so far (sbx.sandbox.pull calls this)."""
        self.last = progress
        if self._progress is None:
            if self.quiet or progress.total < LARGE_PULL or not self.console.is_terminal:
                return
            self._progress = Progress(
                TextColumn("pulling {task.description}"), BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[layers]}"),
                console=self.console, transient=True)
            self._task = self._progress.add_task(escape(self.ref), total=progress.total,
                                                 layers="")
            self._progress.start()
        assert self._task is not None
        self._progress.update(self._task, completed=progress.current, total=progress.total,
                              layers=f"{progress.layers_done}/{progress.layers} layers")

    def __enter__(self) -> PullDisplay:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _summary(image: ResolvedImage, display: PullDisplay, seconds: float) -> str:
    size = ""
    if display.last is not None and display.last.layers:
        size = (f", {display.last.layers} layer(s), "
                f"{display.last.total / 1e6:.1f} MB")
    return (f"pulled {image.ref} in {seconds:.1f} s{size}: "
            f"{image.repo_digest or image.id} ({image.platform})")


def resolve_step_images(
        client: docker.DockerClient, images: Mapping[str, tuple[str, PullPolicy]],
        spec_path: Path, console: Console, log: Log, *, quiet: bool = False,
) -> tuple[dict[str, ResolvedImage], dict[str, SbxError]]:
    """Resolve every step's image (step name -> (reference, policy)); each distinct
    reference and policy is pulled at most once. Returns what was resolved and, per step,
    the one-line error (naming the file and the step) of an image that could not be had."""
    done: dict[tuple[str, PullPolicy], ResolvedImage | SbxError] = {}
    found: dict[str, ResolvedImage] = {}
    failed: dict[str, SbxError] = {}
    for step, (ref, policy) in images.items():
        key = (ref, policy)
        if key not in done:
            began = time.monotonic()
            try:
                with PullDisplay(console, ref, quiet=quiet) as display:
                    image = resolve_image(client, ref, policy, on_progress=display.update)
            except ImageReferenceError as exc:
                done[key] = SpecError(str(spec_path), f"steps.{step}.image" if len(images) > 1
                                      else "image", exc.diagnostics())
            except ImageError as exc:
                done[key] = type(exc)(f"{spec_path}: step {step}: {exc.diagnostics()}")
            else:
                done[key] = image
                if image.pulled:
                    log(_summary(image, display, time.monotonic() - began))
        result = done[key]
        if isinstance(result, ResolvedImage):
            found[step] = result
        else:
            failed[step] = result
    return found, failed
