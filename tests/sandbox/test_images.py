"""Images: the runtime tag follows the runtime code; the built image really runs it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sbx.errors import EnvironmentFailure
from sbx.sandbox import image_build, images

RUNTIME_TREE = {
    "sbx/__init__.py": b'__version__ = "0.1.0"\n',
    "sbx/sandbox/__init__.py": b"",
    "sbx/sandbox/policy/__init__.py": b"RULES = []\n",
    "sbx/sandbox/policy/actions.py": b"RULES = []\n",
    "sbx/sandbox/policy/addresses.py": b"RULES = []\n",
    "sbx/sandbox/policy/errors.py": b"RULES = []\n",
    "sbx/sandbox/policy/model.py": b"RULES = []\n",
    "sbx/sandbox/policy/names.py": b"RULES = []\n",
    "sbx/sandbox/policy/rules.py": b"RULES = []\n",
    "sbx/sandbox/runtime/__init__.py": b"",
    "sbx/sandbox/runtime/gateway.py": b"print('gateway')\n",
    "sbx/sandbox/runtime/agent.py": b"print('agent')\n",
    # not runtime code: never copied into the image, never part of the tag
    "sbx/pipelines/cli.py": b"print('cli')\n",
    "sbx/sandbox/images.py": b"# host side\n",
    "sbx/sandbox/runtime/README.txt": b"notes\n",
}


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for rel, data in RUNTIME_TREE.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    monkeypatch.setattr(images, "_PACKAGE_ROOT", tmp_path / "sbx")
    monkeypatch.delenv(images.BASE_ENV, raising=False)
    return tmp_path


def test_runtime_files_are_the_runtime_code_only(tree: Path) -> None:
    assert [rel for rel, _ in images.runtime_files()] == [
        "sbx/__init__.py",
        "sbx/sandbox/__init__.py",
        "sbx/sandbox/policy/__init__.py",
        "sbx/sandbox/policy/actions.py",
        "sbx/sandbox/policy/addresses.py",
        "sbx/sandbox/policy/errors.py",
        "sbx/sandbox/policy/model.py",
        "sbx/sandbox/policy/names.py",
        "sbx/sandbox/policy/rules.py",
        "sbx/sandbox/runtime/__init__.py",
        "sbx/sandbox/runtime/agent.py",
        "sbx/sandbox/runtime/gateway.py",
    ]


def test_runtime_files_name_every_policy_module() -> None:
    """The gateway imports the whole policy package: a module left out breaks it at start."""
    package = Path(images.__file__).resolve().parent / "policy"
    listed = {rel for rel, _ in images.runtime_files() if rel.startswith("sbx/sandbox/policy/")}
    assert listed == {f"sbx/sandbox/policy/{p.name}" for p in package.glob("*.py")}


def test_runtime_tag_is_stable_for_an_unchanged_tree(tree: Path) -> None:
    tag = images.runtime_image_tag()
    assert tag.startswith("sbx-runtime:")
    assert len(tag.split(":", 1)[1]) == 12
    assert images.runtime_image_tag() == tag
    # touching a file without changing its bytes, or editing non-runtime code, keeps the tag
    (tree / "sbx/sandbox/runtime/gateway.py").write_bytes(b"print('gateway')\n")
    (tree / "sbx/pipelines/cli.py").write_bytes(b"print('changed cli')\n")
    (tree / "sbx/sandbox/images.py").write_bytes(b"# changed\n")
    assert images.runtime_image_tag() == tag


@pytest.mark.parametrize(
    "rel",
    [
        "sbx/__init__.py",
        "sbx/sandbox/__init__.py",
        "sbx/sandbox/policy/__init__.py",
        "sbx/sandbox/policy/actions.py",
        "sbx/sandbox/policy/addresses.py",
        "sbx/sandbox/policy/errors.py",
        "sbx/sandbox/policy/model.py",
        "sbx/sandbox/policy/names.py",
        "sbx/sandbox/policy/rules.py",
        "sbx/sandbox/runtime/__init__.py",
        "sbx/sandbox/runtime/gateway.py",
    ],
)
def test_runtime_tag_changes_when_a_runtime_file_changes(tree: Path, rel: str) -> None:
    before = images.runtime_image_tag()
    path = tree / rel
    path.write_bytes(path.read_bytes() + b"# one more byte\n")
    assert images.runtime_image_tag() != before


def test_runtime_tag_changes_when_a_runtime_module_is_added(tree: Path) -> None:
    before = images.runtime_image_tag()
    (tree / "sbx/sandbox/runtime/probe.py").write_bytes(b"")
    assert images.runtime_image_tag() != before


def test_runtime_tag_changes_with_the_base(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = images.runtime_image_tag()
    packages = (*images.RUNTIME_PACKAGES, "strace")
    recipe = images._DebianRecipe(images.BASE_RUNTIME_REPO, packages, ("python3",))
    monkeypatch.setattr(images, "_RUNTIME_BASE", recipe)
    assert images.runtime_image_tag() != before


def test_missing_runtime_file_is_an_environment_failure(tree: Path) -> None:
    (tree / "sbx/sandbox/policy/rules.py").unlink()
    with pytest.raises(EnvironmentFailure, match=r"policy/rules\.py"):
        images.runtime_image_tag()


def test_missing_mmdebstrap_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(EnvironmentFailure, match="apt-get install mmdebstrap") as info:
        image_build._mmdebstrap()
    assert "\n" not in info.value.diagnostics()


# --------------------------------------------------------------------------- with Docker


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    docker = pytest.importorskip("docker")
    try:
        engine = docker.from_env(timeout=10)
        engine.ping()
    except Exception as exc:  # any failure to reach the engine means "skip", not "fail"
        pytest.skip(f"no Docker engine answers ({exc}); start dockerd to run this test")
    yield engine
    engine.close()


@pytest.mark.docker
@pytest.mark.timeout(900)
def test_runtime_image_runs_the_runtime_code(client: Any) -> None:
    tag = images.ensure_runtime_image(client)
    assert tag == images.runtime_image_tag()

    image = client.images.get(tag)
    assert image.labels.get(images.MANAGED_LABEL) == "1"

    out = client.containers.run(
        tag,
        [
            "python3",
            "-c",
            # Every entry point, so every third-party module they import (dnslib, h11,
            # idna) must be in the image.
            "import sbx.sandbox.runtime.gateway, sbx.sandbox.runtime.agent, "
            "sbx.sandbox.runtime.probe, sbx.sandbox.policy; print('ok')",
        ],
        remove=True,
        network_disabled=True,
        labels={"sbx.test": "1"},
    )
    assert out.strip() == b"ok"

    # a second call reuses the image instead of building again
    messages: list[str] = []
    assert images.ensure_runtime_image(client, build=False, log=messages.append) == tag
    assert messages == []


# Runs in the image: imports every runtime module with the compiler watched, and reads each
# module's .pyc header. Prints what was compiled from source and what is wrong with each pyc.
_BYTECODE_CHECK = """
import importlib, importlib.util, json, sys
import _frozen_importlib_external as external

compiled = []
original = external.SourceLoader.source_to_code

def source_to_code(self, data, path, *args, **kwargs):
    compiled.append(path)
    return original(self, data, path, *args, **kwargs)

external.SourceLoader.source_to_code = source_to_code
problems = {}
for name in sys.argv[1:]:
    module = importlib.import_module(name)
    try:
        with open(module.__cached__, "rb") as handle:
            header = handle.read(16)
    except OSError as exc:
        problems[name] = f"no pyc: {exc}"
        continue
    with open(module.__file__, "rb") as handle:
        source = handle.read()
    if header[:4] != importlib.util.MAGIC_NUMBER:
        problems[name] = "pyc of another python"
    elif int.from_bytes(header[4:8], "little") != 0b11:
        problems[name] = "not a checked hash-based pyc"
    elif header[8:16] != importlib.util.source_hash(source):
        problems[name] = "pyc of other source bytes"
print(json.dumps({"compiled": [p for p in compiled if p.startswith("/opt/sbx/")],
                  "problems": problems, "dont_write": sys.flags.dont_write_bytecode}))
"""


@pytest.mark.docker
@pytest.mark.timeout(900)
def test_runtime_image_imports_its_code_precompiled(client: Any) -> None:
    """Every runtime module has a valid .pyc in the image and python loads it instead of
    compiling the source: a gateway, agent or probe start compiles none of sbx's code."""
    tag = images.ensure_runtime_image(client)
    modules = [rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
               for rel, _ in images.runtime_files()]
    assert "sbx.sandbox.runtime.gateway" in modules and "sbx.sandbox.runtime.agent" in modules
    out = client.containers.run(
        tag, ["python3", "-c", _BYTECODE_CHECK, *modules],
        remove=True, network_disabled=True, labels={"sbx.test": "1"})
    report = json.loads(out)
    assert report == {"compiled": [], "problems": {}, "dont_write": 1}


@pytest.mark.docker
@pytest.mark.timeout(900)
def test_step_image_has_the_tools_of_a_build_step(client: Any) -> None:
    tag = images.ensure_step_image(client)
    assert tag == images.STEP_IMAGE
    assert client.images.get(tag).labels.get(images.MANAGED_LABEL) == "1"
    out = client.containers.run(
        tag,
        ["sh", "-c", "python3 -c 'print(1)' && git --version && curl --version && openssl version"],
        remove=True,
        network_disabled=True,
        labels={"sbx.test": "1"},
    )
    assert b"git version" in out
