"""The README's quickstart is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quickstart_commands() -> list[str]:
    section = ROOT.joinpath("README.md").read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.+?)\n```", section)


def test_the_quickstart_has_two_commands_and_ci_runs_the_test_one():
    run_main, run_tests = quickstart_commands()
    assert "autotune search" in run_main and "pytest" in run_tests
    ci_lines = [line for line in ROOT.joinpath(".ci/run").read_text().splitlines() if not line.startswith("#")]
    assert run_tests in ci_lines
