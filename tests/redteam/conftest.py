"""Everything under tests/redteam is part of the red-team suite (`make redteam`)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/redteam/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.redteam)
