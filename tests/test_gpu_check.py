"""The GPU acceptance run's wiring, on CPU: the dry run and its time boxes, a run without CUDA and the files it leaves,
the worker-start probe, and each check's CPU-visible logic (what it compares, which commands it runs).

The checks themselves need a GPU; here only what decides which run, with which reason, and what the files say.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
sys.path.insert(0, str(ROOT / "bench"))

from gpu_checks import core, evidence, runner, seeds, worker_start  # noqa: E402
from gpu_checks.cli_checks import budget_command, gpu_slug, search_command  # noqa: E402
from gpu_checks.core import CHECKS, Check, Options, allot  # noqa: E402
from gpu_checks.knob_sweep import NOT_SWEPT, cases, run_case  # noqa: E402
from gpu_checks.memory import judge  # noqa: E402
from gpu_checks.nvml import UsedSampler  # noqa: E402
from gpu_checks.tables import cell, md_table, render_markdown  # noqa: E402

from autotune import knobs, pipelines  # noqa: E402

NAMES = [worker_start.NAME] + [check.name for check in CHECKS]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return {**env, **extra}


def _outputs(out: Path) -> tuple[dict, str]:
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def _files(out: Path) -> list[str]:
    return sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file())


def test_dry_run_lists_every_check_with_its_box_and_the_total_within_8_minutes(tmp_path):
    out = tmp_path / "dry"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], capture_output=True,
                          text=True, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    report, markdown = _outputs(out)
    assert [c["name"] for c in report["checks"]] == NAMES
    for check in report["checks"][1:]:
        assert check["status"] == "skipped"
        assert check["reason"].startswith("dry run: listed, not run (its time box would be ")
        assert f"| {check['title']} | skipped |" in markdown
        assert f"{check['allotted_s']:>7.0f}  {check['title']}" in done.stdout
    boxes = report["time_boxes"]
    assert boxes[0]["part"].startswith("start-up") and boxes[-2]["part"].startswith("finish")
    assert boxes[-1] == {"part": "total (--budget-s 480)", "box_s": 480.0}
    assert sum(row["box_s"] for row in boxes[:-1]) == pytest.approx(480, abs=0.5)
    assert "    480  total (--budget-s 480)" in done.stdout and "## Time boxes" in markdown
    assert report["dry_run"] is True
    assert _files(out) == ["evidence.tar.gz", "gpu_check.json", "gpu_check.md"]


def test_dry_run_imports_nothing_heavy(tmp_path):
    code = ("import sys; sys.path.insert(0, 'bench'); import gpu_check; "
            f"status = gpu_check.main(['--dry-run', '--out', {str(tmp_path)!r}]); "
            "heavy = [m for m in ('torch', 'diffusers', 'optuna', 'pydantic') if m in sys.modules]; "
            "assert not heavy, heavy; sys.exit(status)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_everything_is_skipped_and_the_evidence_is_one_archive(tmp_path):
    out = tmp_path / "cpu"
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                          env=_env(CUDA_VISIBLE_DEVICES=""), timeout=300)
    assert done.returncode == 0, done.stderr
    report, markdown = _outputs(out)
    assert [c["name"] for c in report["checks"]] == NAMES  # the worker-start probe first
    assert {(c["status"], c["reason"]) for c in report["checks"]} == {("skipped", "no CUDA device")}
    assert markdown.count("| skipped | 0 | - | no CUDA device |") == len(NAMES)
    assert done.stdout.index("skipped  0. a worker") < done.stdout.index("skipped  1. fingerprint")
    # At most 8 files, within two folders of DIR: the checks' files are in the archive, not loose.
    assert _files(out) == ["evidence.tar.gz", "gpu_check.json", "gpu_check.md"]
    with tarfile.open(out / evidence.ARCHIVE) as tar:
        assert sorted(tar.getnames()) == sorted(f"checks/{name}.json" for name in NAMES)
    assert sorted(report["evidence_files"]) == sorted(f"checks/{name}.json" for name in NAMES)


def test_the_evidence_archive_takes_what_the_run_wrote_and_leaves_the_rest(tmp_path):
    before = tmp_path / "notes.txt"
    before.write_text("the user's")
    os.utime(before, (time.time() - 3600, time.time() - 3600))
    since = time.time()
    for name in ("gpu_check.json", "gpu_check.md", "h100-80gb-hbm3-sd15-arch.yaml", "h100-80gb-hbm3-sd15-arch.db",
                 "search.log", "checks/knobs.log", "budget-6gb/budget.yaml"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(name)
    packed = evidence.pack(tmp_path, since)
    assert sorted(packed) == ["budget-6gb/budget.yaml", "checks/knobs.log", "h100-80gb-hbm3-sd15-arch.db",
                              "search.log"]
    assert _files(tmp_path) == ["evidence.tar.gz", "gpu_check.json", "gpu_check.md",
                                "h100-80gb-hbm3-sd15-arch.yaml", "notes.txt"]
    with tarfile.open(tmp_path / evidence.ARCHIVE) as tar:
        assert tar.extractfile("checks/knobs.log").read() == b"checks/knobs.log"


def test_a_check_that_raises_fails_with_its_reason_and_the_run_goes_on(tmp_path):
    # On a CPU machine the fingerprint check's first torch.cuda call raises: the child records the failure.
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the fingerprint check would pass")
    (tmp_path / "checks").mkdir()
    result = runner._run_child(CHECKS[0], tmp_path, seconds=120, options=Options())
    assert result.status == "fail"
    assert result.reason and "Error" in result.reason
    assert json.loads((tmp_path / "checks" / "fingerprint.json").read_text())["status"] == "fail"


def _pretend_gpu(monkeypatch) -> None:
    # The device answer and the worker probe are the hardware boundary: say there is a GPU that a worker can use.
    monkeypatch.setattr(runner, "cuda_device", lambda: {"cuda": "NVIDIA H100", "count": 1, "reason": None})
    monkeypatch.setattr(worker_start, "probe_worker",
                        lambda device: core.Result(worker_start.NAME, worker_start.TITLE, "pass"))


def test_a_budget_too_small_skips_each_check_with_the_time_box_reason(tmp_path, monkeypatch):
    _pretend_gpu(monkeypatch)
    results, device = runner.run_all(tmp_path, budget_s=1.0, dry_run=False)
    assert device["cuda"] == "NVIDIA H100"
    reasons = {result.name: result.reason for result in results}
    assert results[0].name == worker_start.NAME and results[0].status == "pass"
    assert all(result.status == "skipped" for result in results[1:])
    assert reasons["fingerprint"].startswith("time box: needs at least 10 s")
    assert reasons["verify"] == reasons["report"] == "no profile: the search check wrote none"


def test_sigterm_ends_the_run_with_the_checks_left_skipped(tmp_path, monkeypatch):
    _pretend_gpu(monkeypatch)

    def stopped(check, out, seconds, options):
        raise runner.Stopped("stopped by signal 15, before this check ended")

    monkeypatch.setattr(runner, "_run_child", stopped)
    results, _ = runner.run_all(tmp_path, budget_s=480, dry_run=False)
    assert [result.name for result in results] == NAMES
    assert {result.reason for result in results[1:]} == {"the run was stopped by signal 15, before this check ended"}


def test_the_boxes_and_the_start_up_fit_the_8_minutes():
    assert core.DEFAULT_BUDGET_S == core.TOTAL_S == 480
    shares = allot(core.checks_budget(core.DEFAULT_BUDGET_S), CHECKS)
    assert shares == {check.name: check.estimate_s for check in CHECKS}
    assert sum(shares.values()) + core.STARTUP_S + core.FINISH_S <= core.TOTAL_S
    assert all(shares[check.name] >= check.minimum_s for check in CHECKS)
    assert "gpu_tests" not in {check.name for check in CHECKS}  # no test is marked gpu


def test_allot_shares_the_budget_in_proportion():
    checks = [Check("a", "", "", 10, 5), Check("b", "", "", 30, 5)]
    assert allot(80, checks) == {"a": 20.0, "b": 60.0}
    assert sum(allot(450, CHECKS).values()) == pytest.approx(450, abs=1)


def test_allot_drops_a_check_under_its_minimum_and_gives_its_share_to_the_others():
    checks = [Check("small", "", "", 10, 2), Check("big", "", "", 90, 80)]
    assert allot(50, checks) == {"small": 50.0, "big": 0.0}
    assert allot(1, checks) == {"small": 0.0, "big": 0.0}


def test_md_table_renders_missing_numbers_as_dashes_and_escapes_pipes():
    table = md_table([{"a": 1.23456, "b": None}, {"a": "x|y", "c": True}])
    assert table.splitlines() == ["| a | b | c |", "|---|---|---|", "| 1.235 | - | - |", "| x\\|y | - | yes |"]
    assert cell({"precision": "fp16", "batch": 2}) == "precision=fp16, batch=2"


def test_markdown_gives_each_list_of_rows_its_own_table():
    result = core.Result("seeds", "5b. seeds", "pass", None,
                         {"steps": 20, "table": [{"configuration": "fp16", "images_per_s": 2.5}]}, 12.0, 60.0)
    markdown = render_markdown([result], {"gpu": "NVIDIA H200"})
    assert "| 5b. seeds | pass | 12 | 60 | - |" in markdown
    assert "| steps | 20 |" in markdown
    assert "### table\n\n| configuration | images_per_s |\n|---|---|\n| fp16 | 2.5 |" in markdown


def test_a_worker_started_as_for_cuda_is_spawned_and_its_failure_comes_back_in_one_line():
    # No CUDA here: the spawned worker imports autotune.worker.process as a real one does, then fails at its CUDA
    # tensor.
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the probe would pass")
    result = worker_start.probe_worker("cuda", timeout_s=120)
    assert result.figures["start_method"] == "spawn"
    assert result.figures["exit_code"] == 0  # it answered and exited on its own, not killed
    assert result.status == "fail" and "\n" not in result.reason
    assert "CUDA" in result.reason or "NVIDIA" in result.reason


def test_the_knob_sweep_covers_every_value_available_on_cuda(tiny_pipe, gpu_hardware):
    runnable, not_run = cases(gpu_hardware, tiny_pipe)
    seen = {(case["knob"], case["value"]) for case in runnable} | {(row["knob"], row["value"]) for row in not_run}
    assert seen == {(knob.name, value) for knob in knobs.in_order() for value in knob.choices()}
    assert all(row["reason"] for row in not_run)
    assert ("cpu_threads", 1) in {(row["knob"], row["value"]) for row in not_run}
    kinds = [case["kind"] for case in runnable]
    assert kinds == sorted(kinds, key=["state", "fresh", "compile", "compile-whole", "max-autotune"].index)
    sliced = next(case for case in runnable if case["knob"] == "attention_slice_size")
    assert sliced["settings"]["attention"] == "sliced"
    offload = next(case for case in runnable if case["settings"].get("offload") == "model")
    assert offload["kind"] == "fresh"


def test_a_kernel_restricted_attention_value_runs_in_half_precision(tiny_pipe, gpu_hardware):
    runnable, _ = cases(gpu_hardware, tiny_pipe)
    flash = next(case for case in runnable if case["knob"] == "attention" and case["value"] == "sdpa-flash")
    assert flash["settings"]["precision"] in ("fp16", "bf16")


def test_a_value_whose_requirement_cannot_be_met_is_listed_unavailable_with_the_rule(tiny_pipe, gpu_hardware,
                                                                                      monkeypatch):
    precision = type(knobs.get("precision"))
    monkeypatch.setattr(precision, "values", lambda self, hw, pipe=None: ["fp32", "tf32"])  # no half precision
    _, not_run = cases(gpu_hardware, tiny_pipe)
    flash = next(row for row in not_run if row["knob"] == "attention" and row["value"] == "sdpa-flash")
    assert flash["status"] == "unavailable"
    assert flash["reason"].startswith("what it requires cannot be met here: ") and "precision" in flash["reason"]


def test_max_autotune_modes_are_swept_only_when_asked(tiny_pipe, gpu_hardware, monkeypatch):
    compile_knob = type(knobs.get("compile"))
    monkeypatch.setattr(compile_knob, "unavailable", lambda self, value, hw, pipe=None: None)  # as with triton
    runnable, not_run = cases(gpu_hardware, tiny_pipe)
    modes = {case["value"]: case for case in runnable if case["knob"] == "compile" and case["value"] != "none"}
    assert set(modes) == {"default", "reduce-overhead"}
    assert all(case["settings"]["compile_scope"] == "regional" for case in modes.values())
    skipped = {row["value"]: row["reason"] for row in not_run if row["knob"] == "compile"}
    assert skipped == {"max-autotune": NOT_SWEPT, "max-autotune-no-cudagraphs": NOT_SWEPT}
    runnable, _ = cases(gpu_hardware, tiny_pipe, full_sweep=True)
    assert {"max-autotune", "max-autotune-no-cudagraphs"} <= {case["value"] for case in runnable}


@pytest.mark.parametrize("name, value", [("cpu_threads", None), ("scheduler", "default"),
                                         ("attention_slice_size", "auto"), ("attention_slice_size", "max")])
def test_the_sweep_reads_a_value_back_as_the_knob_declares_it(name, value, fingerprint):
    # Each of these reads back as something else than the value set (16 threads, pndm, a head count): the sweep
    # compares with reads_as, and AS_LOADED with what the unmodified template reads.
    template, pipe = pipelines.tiny_sd_random(), pipelines.tiny_sd_random()
    runnable, _ = cases(fingerprint.hardware, pipe)
    case = next(case for case in runnable if case["knob"] == name and case["value"] == value)
    row = run_case(pipe, case, fingerprint.hardware, template, size=64)
    assert row["status"] == "pass", row["reason"]


def test_flux_arch_is_swept_only_with_its_flag():
    from gpu_checks.gpu import models

    assert models(Options()) == [core.SD15]
    assert Options(with_flux=True, full_sweep=True).flags() == ["--with-flux", "--full-sweep"]
    import gpu_check

    args = gpu_check.parse_args(["--out", "x", "--with-flux"])
    assert args.with_flux and not args.full_sweep


def test_the_search_runs_8_steps_for_45_s_with_one_round(tmp_path):
    command = " ".join(search_command(tmp_path / "h100-sd15-arch.yaml", left_s=88))
    assert "--steps 8 --timeout 45 " in command and "--rounds 1 " in command and "--model builtin:sd15-arch" in command
    assert "--timeout 20 " in " ".join(search_command(tmp_path / "p.yaml", left_s=60))  # a shortened box


def test_the_budget_search_pins_offload_off_and_runs_3_trials(tmp_path):
    command = " ".join(budget_command(tmp_path))
    assert "--pin offload=none" in command and "--trials 3 " in command


def test_each_seeds_row_puts_its_own_process_flags_back_before_its_timed_call(gpu_hardware, monkeypatch):
    seen = {}
    monkeypatch.setattr(seeds, "_timed", lambda entry: seen.setdefault(entry["name"], (
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32)))
    settings = {"fp32 default": {}, "tf32 + cudnn benchmark": {"precision": "tf32", "cudnn_benchmark": True},
                "fp16": {"precision": "fp16"}}
    ready = {name: {"name": name} for name in settings}
    seeds.one_round(ready, settings, gpu_hardware)
    assert seen == {"fp32 default": (False, False), "tf32 + cudnn benchmark": (True, True), "fp16": (False, False)}
    assert seeds.STEPS == 20


def test_the_memory_baseline_is_read_before_diffusers_is_imported(tmp_path):
    code = ("import sys, time; sys.path.insert(0, 'bench'); from gpu_checks import core, nvml, memory; seen = []; "
            "nvml.used_bytes = lambda: seen.append('diffusers' in sys.modules) or 0\n"
            f"ctx = core.Context(out=__import__('pathlib').Path({str(tmp_path)!r}), deadline=time.monotonic() + 60)\n"
            "try:\n    memory.run(ctx)\nexcept Exception:\n    pass\n"
            "assert seen == [False], seen")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_memory_witness_samples_a_peak_the_block_gives_back_and_can_disagree():
    readings = iter([100, 100, 900, 950, 300] + [300] * 10_000)
    with UsedSampler(read=lambda: next(readings), every_s=0.001) as sampler:
        time.sleep(0.05)
    assert sampler.peak_bytes == 950 and sampler.samples >= 5
    assert judge(2**30, 2**30) is None
    assert "undercuts" in judge(int(0.9 * 2**30), 2**30)
    assert "exceeds" in judge(int(1.2 * 2**30), 2**30)
    assert judge(2**30, None) == "no figure to compare: NVML gave none"


def test_the_profile_is_named_after_the_gpu():
    assert gpu_slug("NVIDIA H200") == "h200"
    assert gpu_slug("NVIDIA GeForce RTX 3060") == "rtx-3060"
    assert gpu_slug(None) == "gpu"
    assert evidence.kept(Path(gpu_slug("NVIDIA H100 80GB HBM3") + core.PROFILE_SUFFIX))
