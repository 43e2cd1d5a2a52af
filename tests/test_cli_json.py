"""`--json` on every command that prints a table: the same result as data on stdout, alone, for scripts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import autotune_cli

from autotune.options import EXIT_CHECK_FAILED

ROOT = Path(__file__).resolve().parent.parent
EAGER = ROOT / "examples" / "tiny_app" / "profiles" / "tiny-sd-cpu-eager.yaml"


def _json(*args: str, code: int = 0) -> object:
    result = autotune_cli(*args)
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def test_profiles_list_json_holds_each_profile_found():
    found = _json("profiles", "list", "--json", "--search-path", str(EAGER.parent))
    by_name = {entry["name"]: entry for entry in found}
    assert by_name["tiny-sd-cpu-eager"]["origin"] == "app"
    assert by_name["tiny-sd-cpu-eager"]["profile"]["settings"]["compile"] == "none"
    assert by_name["tiny-sd-cpu"]["origin"] == "shipped"


def test_profiles_select_json_ranks_and_rejects_with_reasons(tmp_path):
    chosen = _json("profiles", "select", "--json", "--model", "builtin:tiny-sd")
    assert set(chosen) >= {"chosen", "ranking", "rejected", "hardware", "free_memory_bytes"}
    nothing = _json("profiles", "select", "--json", "--model", "builtin:tiny-flux-random", code=EXIT_CHECK_FAILED)
    assert nothing["chosen"] is None and all(item["reasons"] for item in nothing["rejected"])


def test_recommend_json_gives_settings_and_reasons():
    told = _json("recommend", "--json", "--model", "builtin:tiny-sd-random", "--budget", "4GB")
    assert told["measured"] is False and told["memory_budget_bytes"] == 4 * 10**9
    assert set(told["reasons"]) <= set(told["settings"]) and told["predicted_peak_bytes"] > 0


@pytest.mark.slow
def test_verify_json_gives_each_check_and_exits_as_the_table_does(tmp_path):
    # The example's profile at fp32 and 4 steps: its bf16 took 7.5 minutes on a CPU without avx512-bf16 (0.11
    # images/s against the 20 it recorded), and this test is about the JSON, not the machine.
    profile = yaml.safe_load(EAGER.read_text())
    profile["settings"].update(precision="fp32", attention="sdpa", steps=4, batch_size=2)
    (tmp_path / "fp32.yaml").write_text(yaml.safe_dump(profile))
    result = autotune_cli("verify", tmp_path / "fp32.yaml", "--json", "--workers", "1", "--rounds", "1")
    told = json.loads(result.stdout)  # the progress lines went to stderr
    assert [check["metric"] for check in told["checks"]][:2] == ["images/s", "peak memory"]
    assert {check["status"] for check in told["checks"]} <= {"pass", "fail", "skip"}
    assert result.exit_code == (0 if told["passed"] else EXIT_CHECK_FAILED) and told["worker_images_per_s"]


@pytest.mark.slow
def test_search_json_holds_the_profile_the_comparison_and_every_candidate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = autotune_cli("search", "--json", "--model", "builtin:tiny-sd-random", "--trials", "1", "--steps", "2",
                          "--max-batch", "1", "--top-k", "1", "--rounds", "1", "--pin", "compile=none",
                          "--out", "s.yaml")
    assert result.exit_code == 0, result.output
    told = json.loads(result.stdout)
    assert told["profile"].endswith("s.yaml") and told["trials"] == 1 and told["default"]["images_per_s"]["n"] >= 1
    assert set(told["vs_default"]) >= {"median", "low", "high", "verdict"} and told["candidates"]
