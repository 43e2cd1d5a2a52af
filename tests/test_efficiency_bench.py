"""bench/efficiency.py's wiring on the smallest space it takes: its numbers are the benchmark's, run alone; here only
that one run reaches its table and its plot, and how an incumbent is valued against the oracle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from efficiency import checkpoints, first_reaching, median_or_none  # noqa: E402


def test_the_first_trial_that_reaches_the_target_is_counted_and_a_miss_is_missing():
    points = [(3.0, 10.0), (7.5, 18.0), (9.0, 19.5), (12.0, 20.0)]
    assert first_reaching(points, 0.95 * 20.0) == (3, 9.0)
    assert first_reaching(points, 21.0) == (None, None)
    assert median_or_none([3, None, 5]) is None  # a seed that never reached it: no median made up without it
    assert median_or_none([3, 4, 5]) == 4
    assert checkpoints(12) == [5, 10, 12] and checkpoints(20) == [5, 10, 20]


@pytest.mark.slow
def test_one_tiny_run_under_a_floor_prints_every_search_against_the_oracle_and_writes_the_plot(tmp_path):
    # The floor's own space (the speed-only one runs the same code with no floor): steps narrowed with --only as a
    # search narrows them, the reference's 4 steps meeting psnr=40 and 2 steps missing it.
    plot = tmp_path / "efficiency.html"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "efficiency.py"), "--floor", "psnr=40", "--free", "steps",
         "--only", "steps=2,4", "--steps", "4", "--seeds", "1", "--trials", "2", "--max-batch", "1", "--rounds", "1",
         "--oracle-rounds", "1", "--plot", str(plot)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    table = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in table] == ["| search", "| random", "| tpe", "| autotune"], run.stdout
    assert "2 configurations of steps" in run.stdout and "oracle (best re-measured, 1 rounds)" in run.stdout
    assert "{'steps': 2}: no value (missed psnr=40" in run.stdout and "{'steps': 4}: " in run.stdout
    assert "builtin:tiny-flux, under psnr=40 against a 4-step reference, on every prompt; 1 of 2" in run.stdout
    assert "chosen/oracle" in table[0] and "recommendation alone (as recommended" in run.stdout
    assert "images/s," in run.stdout.split("recommendation alone")[1].splitlines()[0]  # it was measured
    assert "best so far" in plot.read_text() and "against seconds" in plot.read_text()
