"""bench/cpu_account.py: the CPU a command used, by process name, from /proc."""

from __future__ import annotations

import sys

import pytest

from bench import cpu_account


def test_the_cpu_a_child_burns_is_counted_under_its_name(
        capsys: pytest.CaptureFixture[str]) -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    assert cpu_account.main([sys.executable, "-c", burn]) == 0
    out = capsys.readouterr().out
    assert out.startswith("exit 0; wall ")
    # This test's own process reaped the child, so at least its 0.3 s shows up there.
    reaped = [float(line.split("reaped children")[1].split()[0])
              for line in out.splitlines()[1:] if "reaped children" in line]
    assert max(reaped) >= 0.25, out
