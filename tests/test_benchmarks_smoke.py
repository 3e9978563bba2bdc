"""`python benchmarks/run.py --quick` runs and prints one well-formed line per benchmark.

It checks the output's shape only, never a timing: the machine's load decides
the numbers.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

BENCHMARKS = ("loop_overhead", "fit_overhead", "dispatch_ceiling", "auto_spe", "checkpoint_stall", "recovery",
              "recovery_vs_torchrun", "architecture", "scaling")
LINE = re.compile(
    r"^(?P<name>[a-z_]+): (ratio=(?P<ratio>[0-9.]+) \(kit [0-9.e+-]+, baseline [0-9.e+-]+, [^)]+\)"
    r"|skipped \([^)]+\))$")
# The quick pass takes about 3 minutes on 2 cores; the limit leaves room for a loaded machine.
TIMEOUT_SECONDS = 900


@pytest.mark.slow
def test_quick_run_prints_every_line(tmp_path):
    results = tmp_path / "RESULTS.md"
    completed = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", "--results", str(results)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_SECONDS)

    lines = [line for line in completed.stdout.splitlines() if LINE.match(line)]
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert [LINE.match(line)["name"] for line in lines] == list(BENCHMARKS)
    for line in lines:
        match = LINE.match(line)
        if match["ratio"] is not None:
            assert float(match["ratio"]) > 0, line
    assert results.exists()
    assert (tmp_path / "results.png").exists()
    assert "| loop_overhead |" in results.read_text(encoding="utf-8")
