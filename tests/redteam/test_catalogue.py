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


def _readme_security() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Security testing (red team)")
    return text[start:text.index("\n## ", start + 1)]


def test_the_readme_reports_the_catalogue_counts() -> None:
    section = _readme_security()
    rows = [line.split("|")[1:-1] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| category")]
    totals = counts()
    assert len(rows) == len(CATEGORIES) + 1, "one row per category and a total"
    for (_, *cells), category in zip(rows, [*CATEGORIES, "total"], strict=True):
        tried, blocked, allowed, recorded = (int(c.strip(" *")) for c in cells)
        if category == "total":
            want = {k: sum(r[k] for r in totals.values()) for k in ("tried", "blocked",
                                                                     "allowed-host")}
        else:
            want = totals[category]
        assert (tried, blocked, allowed) == (want["tried"], want["blocked"],
                                             want["allowed-host"]), category
        assert recorded == tried, f"{category}: every attack tried is recorded"


def test_the_readme_reports_the_fault_bad_input_and_property_counts() -> None:
    from tests.redteam import test_bad_input, test_faults, test_properties

    section = _readme_security()
    assert f"**Faults: {len(test_faults.FAULTS)} injected" in section
    assert f"**Bad input: {test_bad_input.bad_input_count()} cases**" in section
    properties = sum(1 for name in dir(test_properties) if name.startswith("test_"))
    assert f"**{properties} property-based tests**" in section
