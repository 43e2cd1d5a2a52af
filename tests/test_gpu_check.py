"""The GPU acceptance run's wiring, on CPU: the dry run, a run without CUDA, the time boxes and the tables.

The checks themselves need a GPU; here only what decides which run, with which reason, and what the files say.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
sys.path.insert(0, str(ROOT / "bench"))

from gpu_checks import core  # noqa: E402
from gpu_checks.core import CHECKS, Check, allot  # noqa: E402
from gpu_checks.knob_sweep import cases  # noqa: E402
from gpu_checks.tables import cell, md_table, render_markdown  # noqa: E402

from autotune import knobs  # noqa: E402


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return {**env, **extra}


def _outputs(out: Path) -> tuple[dict, str]:
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_dry_run_lists_every_check_with_its_skip_reason_in_both_files(tmp_path):
    out = tmp_path / "dry"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], capture_output=True,
                          text=True, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    report, markdown = _outputs(out)
    assert [c["name"] for c in report["checks"]] == [check.name for check in CHECKS]
    for check in report["checks"]:
        assert check["status"] == "skipped"
        assert check["reason"].startswith("dry run: listed, not run (its time box would be ")
        assert f"| {check['title']} | skipped |" in markdown
    assert report["dry_run"] is True


def test_dry_run_imports_nothing_heavy(tmp_path):
    code = ("import sys; sys.path.insert(0, 'bench'); import gpu_check; "
            f"status = gpu_check.main(['--dry-run', '--out', {str(tmp_path)!r}]); "
            "heavy = [m for m in ('torch', 'diffusers', 'optuna', 'pydantic') if m in sys.modules]; "
            "assert not heavy, heavy; sys.exit(status)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_every_check_is_skipped_for_no_cuda_device_and_the_run_exits_0(tmp_path):
    out = tmp_path / "cpu"
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                          env=_env(CUDA_VISIBLE_DEVICES=""), timeout=300)
    assert done.returncode == 0, done.stderr
    report, markdown = _outputs(out)
    assert len(report["checks"]) == len(CHECKS)
    assert {(c["status"], c["reason"]) for c in report["checks"]} == {("skipped", "no CUDA device")}
    assert markdown.count("| skipped | 0 | - | no CUDA device |") == len(CHECKS)


def test_a_check_that_raises_fails_with_its_reason_and_the_run_goes_on(tmp_path):
    # On a CPU machine the fingerprint check's first torch.cuda call raises: the child records the failure.
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the fingerprint check would pass")
    (tmp_path / "checks").mkdir()
    result = core._run_child(CHECKS[0], tmp_path, seconds=120)
    assert result.status == "fail"
    assert result.reason and "Error" in result.reason
    assert json.loads((tmp_path / "checks" / "fingerprint.json").read_text())["status"] == "fail"


def test_a_budget_too_small_skips_each_check_with_the_time_box_reason(tmp_path, monkeypatch):
    # The device answer is the hardware boundary: say there is a GPU, and give the run one second.
    monkeypatch.setattr(core, "cuda_device", lambda: {"cuda": "NVIDIA H200", "count": 1, "reason": None})
    results, device = core.run_all(tmp_path, budget_s=1.0, dry_run=False)
    assert device["cuda"] == "NVIDIA H200"
    reasons = {result.name: result.reason for result in results}
    assert all(result.status == "skipped" for result in results)
    assert reasons["fingerprint"].startswith("time box: needs at least 8 s")
    assert reasons["verify"] == reasons["report"] == "no profile: the search check wrote none"


def test_allot_shares_the_budget_in_proportion():
    checks = [Check("a", "", "", 10, 5), Check("b", "", "", 30, 5)]
    assert allot(80, checks) == {"a": 20.0, "b": 60.0}
    assert sum(allot(450, CHECKS).values()) == pytest.approx(450, abs=1)


def test_allot_drops_a_check_under_its_minimum_and_gives_its_share_to_the_others():
    checks = [Check("small", "", "", 10, 2), Check("big", "", "", 90, 80)]
    assert allot(50, checks) == {"small": 50.0, "big": 0.0}
    assert allot(1, checks) == {"small": 0.0, "big": 0.0}


def test_the_default_budget_runs_every_check():
    shares = allot(core.DEFAULT_BUDGET_S, CHECKS)
    assert all(shares[check.name] >= check.minimum_s for check in CHECKS)


def test_md_table_renders_missing_numbers_as_dashes_and_escapes_pipes():
    table = md_table([{"a": 1.23456, "b": None}, {"a": "x|y", "c": True}])
    assert table.splitlines() == ["| a | b | c |", "|---|---|---|", "| 1.235 | - | - |", "| x\\|y | - | yes |"]
    assert cell({"precision": "fp16", "batch": 2}) == "precision=fp16, batch=2"


def test_markdown_gives_each_list_of_rows_its_own_table():
    result = core.Result("seeds", "5b. seeds", "pass", None,
                         {"steps": 50, "table": [{"configuration": "fp16", "images_per_s": 2.5}]}, 12.0, 60.0)
    markdown = render_markdown([result], {"gpu": "NVIDIA H200"})
    assert "| 5b. seeds | pass | 12 | 60 | - |" in markdown
    assert "| steps | 50 |" in markdown
    assert "### table\n\n| configuration | images_per_s |\n|---|---|\n| fp16 | 2.5 |" in markdown


def test_the_knob_sweep_covers_every_value_available_on_cuda(tiny_pipe, gpu_hardware):
    runnable, unavailable = cases(gpu_hardware, tiny_pipe)
    seen = {(case["knob"], case["value"]) for case in runnable} | {(row["knob"], row["value"]) for row in unavailable}
    assert seen == {(knob.name, value) for knob in knobs.in_order() for value in knob.choices()}
    assert all(row["reason"] for row in unavailable)
    assert ("cpu_threads", 1) in {(row["knob"], row["value"]) for row in unavailable}
    kinds = [case["kind"] for case in runnable]
    assert kinds == sorted(kinds, key=["state", "fresh", "compile", "compile-whole"].index)
    sliced = next(case for case in runnable if case["knob"] == "attention_slice_size")
    assert sliced["settings"]["attention"] == "sliced"
    offload = next(case for case in runnable if case["settings"].get("offload") == "model")
    assert offload["kind"] == "fresh"
    modes = [case for case in runnable if case["knob"] == "compile" and case["value"] != "none"]
    assert all(case["settings"]["compile_scope"] == "regional" for case in modes)
    if not modes:  # no triton here: compile and its options are listed as unavailable, with the reason
        reasons = {row["knob"]: row["reason"] for row in unavailable if row["value"] != "none"}
        assert "triton" in reasons["compile"] and "an option of compile" in reasons["compile_fullgraph"]


def test_the_profile_is_named_after_the_gpu():
    from gpu_checks.cli_checks import gpu_slug

    assert gpu_slug("NVIDIA H200") == "h200"
    assert gpu_slug("NVIDIA GeForce RTX 3060") == "rtx-3060"
    assert gpu_slug(None) == "gpu"
