"""The parent's side of the run: ask for a CUDA device, probe a worker's start, then run each check in its own child
process within its time box, and stop cleanly on SIGTERM (bench/gpu_run.sh's wall-clock limit).

The time boxes are shared out of what is left of `--budget-s`, counted from the parent's start: a check or probe
that overran shrinks the boxes after it, so the run as a whole ends within the budget.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import worker_start
from .core import (
    CHECKS,
    DRY_RUN,
    FAIL,
    FINISH_S,
    NO_CUDA,
    SCRIPT,
    SKIPPED,
    STARTUP_S,
    Check,
    Options,
    Result,
    allot,
    checks_budget,
    child_env,
    last_line,
)

CUDA_PROBE_TIMEOUT_S = 60.0


class Stopped(Exception):
    """The run was told to stop (SIGTERM): it records the checks left as skipped and still writes its files."""


def stop_on_sigterm() -> None:
    def stop(signum, frame):
        raise Stopped(f"stopped by signal {signum}, before this check ended")

    signal.signal(signal.SIGTERM, stop)


def run_all(out: Path, budget_s: float, dry_run: bool, only: list[str] | None = None,
            on_result: Callable[[Result], None] | None = None, options: Options | None = None,
            started: float | None = None) -> tuple[list[Result], dict[str, Any]]:
    """Run every check (or list it, skipped, with its reason); return the results, the worker-start probe first, and
    what was found of the device. `started` is when the run began (time.monotonic()), so the parent's own start-up
    counts against the budget."""
    started = time.monotonic() if started is None else started
    options = options or Options()
    (out / "checks").mkdir(parents=True, exist_ok=True)
    checks = [check for check in CHECKS if not only or check.name in only]
    planned = allot(checks_budget(budget_s), checks)
    results: list[Result] = []

    def record(result: Result) -> None:
        results.append(result)
        (out / "checks" / f"{result.name}.json").write_text(json.dumps(asdict(result), indent=2, default=str))
        if on_result:
            on_result(result)

    device: dict[str, Any] = {"cuda": None, "reason": DRY_RUN}
    try:
        if not dry_run:
            device = cuda_device()
        record(worker_start.entry(device, dry_run, f"{DRY_RUN} (part of the start-up's {STARTUP_S:.0f} s)"))
        for index, check in enumerate(checks):
            if dry_run:
                record(_listed(check, planned[check.name]))
                continue
            skip = _why_not(check, device, results)
            share = 0.0
            if skip is None:
                left = budget_s - FINISH_S - (time.monotonic() - started)
                share = allot(left, checks[index:]).get(check.name, 0.0)
                if share <= 0:
                    skip = (f"time box: needs at least {check.minimum_s:.0f} s, {max(0.0, left):.0f} s of the "
                            "budget left")
            result = Result(check.name, check.title, SKIPPED, skip) if skip else _run_child(check, out, share, options)
            result.allotted_s = share or None
            record(result)
    except Stopped as stop:
        done = {result.name for result in results}
        for check in checks:
            if check.name not in done:
                record(Result(check.name, check.title, SKIPPED, f"the run was {stop}"))
    return results, device


def _listed(check: Check, share: float) -> Result:
    reason = f"{DRY_RUN} (its time box would be {share:.0f} s)" if share else f"{DRY_RUN} (no time box would be left)"
    return Result(check.name, check.title, SKIPPED, reason, allotted_s=share or None)


def _why_not(check: Check, device: dict[str, Any], results: list[Result]) -> str | None:
    """Why `check` cannot run here (no CUDA, no profile from the check it needs, a missing module), or None."""
    if not device["cuda"]:
        return device["reason"]
    if check.needs:
        needed = next((r for r in results if r.name == check.needs), None)
        if needed is None or not needed.figures.get("profile"):
            return f"no profile: the {check.needs} check wrote none"
    if check.requires and importlib.util.find_spec(check.requires) is None:
        return f"{check.requires} is not installed here" + (f": {check.without}" if check.without else "")
    return None


def cuda_device() -> dict[str, Any]:
    """Whether torch sees a GPU, asked in a child so that this process never creates a CUDA context."""
    probe = ("import torch; print(torch.cuda.device_count(), "
             "torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')")
    try:
        answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                timeout=CUDA_PROBE_TIMEOUT_S, env=child_env())
    except subprocess.TimeoutExpired:
        return {"cuda": None, "reason": f"asking torch for a CUDA device hung for {CUDA_PROBE_TIMEOUT_S:.0f} s"}
    if answer.returncode != 0:
        return {"cuda": None, "reason": f"torch cannot be imported: {last_line(answer.stderr)}"}
    count, _, name = answer.stdout.strip().partition(" ")
    if not count.isdigit() or int(count) == 0:
        return {"cuda": None, "reason": NO_CUDA}
    return {"cuda": name, "count": int(count), "reason": None}


def _run_child(check: Check, out: Path, seconds: float, options: Options) -> Result:
    command = [sys.executable, str(SCRIPT), "--one", check.name, "--out", str(out), "--budget-s", str(seconds),
               *options.flags()]
    started = time.monotonic()
    log = out / "checks" / f"{check.name}.log"
    final = out / "checks" / f"{check.name}.json"
    final.unlink(missing_ok=True)
    killed = False
    with open(log, "w") as sink:
        child = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=child_env(),
                                 start_new_session=True, cwd=SCRIPT.parents[1])
        try:
            child.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            killed = True
        finally:
            _kill_session(child)  # its own session: the CLI runs and workers it started go too
    elapsed = round(time.monotonic() - started, 1)
    if final.is_file():
        result = Result(**json.loads(final.read_text()))
        result.seconds = elapsed
        return result
    partial = out / "checks" / f"{check.name}.partial.json"
    figures = json.loads(partial.read_text()) if partial.is_file() else {}
    if killed:
        reason = f"killed at the end of its time box of {seconds:.0f} s"
    else:
        reason = f"the check process exited with {child.returncode}: {last_line(log.read_text())}"
    return Result(check.name, check.title, FAIL, reason, figures, elapsed)


def _kill_session(child: subprocess.Popen) -> None:
    """Kill what is left of the child's session (a worker that outlived its driver would hold the GPU)."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    child.wait()
