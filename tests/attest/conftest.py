"""Fixtures for the attest tests: a session key and signed synthetic runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakes.signed_run import SyntheticRun, build_run

from sbx.attest.signing.local import KeyPair, keygen


@pytest.fixture(scope="session")
def attest_key(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return keygen(tmp_path_factory.mktemp("attest-key"))


@pytest.fixture
def make_run(tmp_path: Path, attest_key: KeyPair) -> Callable[..., SyntheticRun]:
    """`make_run(steps, key=..., **build_run options)`: a fresh signed run directory."""
    counter = [0]

    def make(steps: tuple[str, ...] = ("build",), *, key: KeyPair | None = None,
             **options: Any) -> SyntheticRun:
        counter[0] += 1
        return build_run(tmp_path / f"run{counter[0]}", key or attest_key, steps, **options)

    return make
