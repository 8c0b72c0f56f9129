"""Bad input: every broken step, pipeline and release-policy file gets one line on stderr
and exit 2, fast (a DoS bound: under a second of CPU each), never a traceback.

The static corpora live in tests/data/bad_{steps,pipelines,policies}/ (first line
`# expect: <text of the error>`); the cases that cannot be text files (sizes,
nesting, bytes, a directory) are generated here.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sbx.errors import EXIT_INPUT
from sbx.pipelines.cli import main
from sbx.pipelines.spec.loader import MAX_BYTES

DATA = Path(__file__).parents[1] / "data"
CORPUS = sorted(p for d in ("bad_steps", "bad_pipelines", "bad_policies")
                for p in (DATA / d).glob("*.yaml"))
# A guard against blow-ups (a 100k-item list once took 2 s, a deep nest far more), not a
# speed target: set well above normal (~0.3-1 s on a loaded 2-core machine) so load never
# fails it; speed belongs in bench/.
CPU_BOUND = 2.5  # seconds of CPU per file, parse and validate

STEP = "name: bad\nimage: sbx-step:bookworm\nrun: \"true\"\n"
PIPELINE = "name: p\nsteps:\n  a:\n    image: sbx-step:bookworm\n    run: \"true\"\n"
POLICY = "version: 1\nrequired_steps: [build]\n"
KINDS = {"step": STEP, "pipeline": PIPELINE, "policy": POLICY}


def _expect(path: Path) -> str:
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8", "replace")
    assert first.startswith("# expect:"), f"{path.name} needs a '# expect: ...' first line"
    return first.removeprefix("# expect:").strip()


def _lint(path: Path, capsys: pytest.CaptureFixture[str], command: str = "lint") -> str:
    """Run the CLI in-process; assert exit 2, one line, no traceback, CPU bound."""
    began = time.process_time()
    code = main([command, str(path)])
    cpu = time.process_time() - began
    err = capsys.readouterr().err
    assert code == EXIT_INPUT, err
    assert err.count("\n") == 1 and err.startswith("sbx: error: "), err[:2000]
    assert "Traceback" not in err
    assert path.name in err, err
    assert len(err) < 2000, f"a {len(err)}-character error line"
    assert cpu < CPU_BOUND, f"{path.name}: {cpu:.2f} s of CPU"
    return err


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_corpus_file_is_refused_in_one_line(path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    err = _lint(path, capsys)
    assert _expect(path) in err, err


@pytest.mark.parametrize("path", [p for p in CORPUS if p.parent.name != "bad_policies"],
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_run_refuses_before_docker(path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    err = _lint(path, capsys, command="run")
    assert _expect(path) in err


# -- generated cases ---------------------------------------------------------------------
def _deep_list(kind: str) -> bytes:
    doc = "[" * 5000 + "]" * 5000
    return _with(kind, f"x: {doc}\n").encode()


def _deep_map(kind: str) -> bytes:
    return _with(kind, "x: " + "{a: " * 5000 + "b" + "}" * 5000 + "\n").encode()


def _deep_block(kind: str) -> bytes:
    return _with(kind, "x:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(200))).encode()


def _with(kind: str, extra: str) -> str:
    return KINDS[kind] + extra


def _long_first_value(kind: str) -> str:
    # The first field (name, or a policy's version) given a 900 KB value: the error
    # quotes the value, and must still be one short line.
    key, _, rest = KINDS[kind].partition("\n")
    return f"{key.split(':')[0]}: {'a' * 900_000}\n{rest}"


def _junk(_: str) -> bytes:
    return bytes(random.Random(7).randrange(256) for _ in range(4096))


GENERATED: dict[str, tuple[Callable[[str], bytes], str]] = {
    # name: (content for a kind, text the error must contain)
    "empty": (lambda k: b"", "file is empty"),
    "only_whitespace": (lambda k: b"\n   \n\n", "file is empty"),
    "over_1MiB": (lambda k: _with(k, "# " + "x" * MAX_BYTES + "\n").encode(),
                  "file is larger than 1024 KiB"),
    "list_100k_items": (lambda k: _with(k, "x:\n" + "- a\n" * 100_000).encode(),
                        "more than 20000 values"),
    "flow_list_200k": (lambda k: _with(k, "x: [" + "1," * 200_000 + "1]\n").encode(),
                       "more than 20000 values"),
    "keys_10k": (lambda k: _with(k, "x:\n" + "".join(f"  k{i}: v\n" for i in range(10_000)))
                 .encode(), "more than 20000 values"),
    "long_string": (lambda k: _long_first_value(k).encode(), "characters cut"),
    "long_key": (lambda k: _with(k, "k" * 1000 + ": 1\n").encode(), "characters cut"),
    "deep_flow_list": (_deep_list, "nesting is deeper than 32 levels"),
    "deep_flow_map": (_deep_map, "nesting is deeper than 32 levels"),
    "deep_block_map": (_deep_block, "nesting is deeper than 32 levels"),
    "not_utf8": (lambda k: KINDS[k].encode() + b"x: \xff\xfe\n", "not valid UTF-8"),
    "utf16_bom": (lambda k: KINDS[k].encode("utf-16"), "not valid UTF-8"),
    "latin1": (lambda k: _with(k, "x: caf\xe9\n").encode("latin-1"), "not valid UTF-8"),
    "nul_byte": (lambda k: KINDS[k].encode() + b"x: \"a\x00b\"\n", "control character #x0000"),
    "binary_junk": (_junk, "not valid UTF-8"),
    "key_with_newline": (lambda k: _with(k, '"a\\nb": 1\n').encode(), "a\\nb: unknown field"),
    "several_documents": (lambda k: (KINDS[k] + "---\n" + KINDS[k]).encode(),
                          "more than one YAML document"),
    "python_object_tag": (lambda k: _with(k, "x: !!python/object/apply:os.system [id]\n")
                          .encode(), "remove the tag"),
    "alias_of_anchor_in_key": (lambda k: _with(k, "? &a [x]\n: *a\n").encode(),
                               "a mapping key is a list or mapping"),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", GENERATED)
def test_generated_bad_input(case: str, kind: str, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    make, expect = GENERATED[case]
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(make(kind))
    err = _lint(path, capsys)
    assert expect in err, err[:600]


def test_directory_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "dir.yaml"
    folder.mkdir()
    assert "is a directory" in _lint(folder, capsys)
    assert "file not found" in _lint(tmp_path / "missing.yaml", capsys)


@pytest.mark.parametrize("command", ["lint", "run"])
@pytest.mark.parametrize("path", [DATA / "bad_steps" / "privileged.yaml",
                                  DATA / "bad_steps" / "yaml_unclosed_quote.yaml",
                                  DATA / "bad_pipelines" / "cycle.yaml",
                                  DATA / "bad_policies" / "wrong_version.yaml"],
                         ids=lambda p: p.stem)
def test_real_process(path: Path, command: str) -> None:
    if command == "run" and path.parent.name == "bad_policies":
        pytest.skip("a release policy is not runnable; lint covers it")
    done = subprocess.run([sys.executable, "-m", "sbx", command, str(path)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock"})
    assert done.returncode == EXIT_INPUT, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert path.name in done.stderr and _expect(path) in done.stderr


def bad_input_count() -> int:
    """Bad inputs the suite feeds sbx (the README's security section quotes it)."""
    return len(CORPUS) + len(GENERATED) * len(KINDS) + 2  # + a directory, a missing file


def test_the_corpus_is_large() -> None:
    assert len(CORPUS) >= 100 and bad_input_count() >= 160
