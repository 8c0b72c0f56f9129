"""The catalogue and the tests agree: every catalogued attack has a test, every test's
attack is catalogued, and the attacks counted from older tests still exist there."""

from __future__ import annotations

import importlib
from pathlib import Path

from tests.redteam.catalogue import ALLOWED, ATTACKS, CATEGORIES, EXISTING, REDIRECTED, counts

MODULES = ("test_egress", "test_dns", "test_reach", "test_side_channels", "test_privilege",
           "test_evidence_tampering")
ROOT = Path(__file__).parents[2]


def _covered() -> dict[str, str]:
    found: dict[str, str] = {}
    for module in MODULES:
        for name in importlib.import_module(f"tests.redteam.{module}").COVERS:
            assert name not in found, f"{name} is claimed by {found[name]} and {module}"
            found[name] = module
    return found


def test_every_attack_has_a_test_and_every_test_is_catalogued() -> None:
    keys = [a.key for a in ATTACKS]
    assert len(keys) == len(set(keys)), "duplicate catalogue names"
    covered = set(_covered()) | set(EXISTING)
    assert set(keys) - covered == set(), "catalogued but never tried"
    assert covered - set(keys) == set(), "tried but not catalogued"
    assert {a.category for a in ATTACKS} == set(CATEGORIES)


def test_counted_older_tests_still_exist() -> None:
    for key, ref in EXISTING.items():
        path, _, func = ref.partition("::")
        assert f"def {func}(" in (ROOT / path).read_text(), f"{key}: {ref} is gone"


def test_outcome_lists_name_catalogued_attacks() -> None:
    keys = {a.key for a in ATTACKS}
    assert keys >= ALLOWED | REDIRECTED
    totals = counts()
    assert sum(r["tried"] for r in totals.values()) == len(ATTACKS)
    assert all(r["blocked"] + r["allowed-host"] == r["tried"] for r in totals.values())
