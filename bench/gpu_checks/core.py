"""The checks, their time boxes, and running each in its own process.

Each check runs in a child process (`gpu_check.py --one NAME`): a crash, a CUDA error or a hang ends that check
alone, and every check starts with a clean CUDA context, so its memory figures are its own. The child writes its
result to `DIR/checks/NAME.json`; the parent kills it when it runs past its time box.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"
PASS, FAIL, SKIPPED = "pass", "fail", "skipped"
NO_CUDA = "no CUDA device"
DRY_RUN = "dry run: listed, not run"
# A killed child gets this long past its box to write what it has; the child itself stops this much early.
GRACE_S = 15.0


@dataclass(frozen=True)
class Check:
    """One check: `target` is `module:function` inside this package, imported only when the check runs."""

    name: str
    title: str
    target: str
    estimate_s: float  # what it needs on an H200 (a guess until the run has been made)
    minimum_s: float  # below this it cannot say anything, so it is skipped instead
    needs: str | None = None  # a check whose output (the search's profile) this one reads


CHECKS: list[Check] = [
    Check("fingerprint", "1. fingerprint: autotune probe vs torch", "fingerprint:run", 15, 8),
    Check("knobs", "2. every knob value on CUDA, applied and read back", "knob_sweep:run", 95, 30),
    Check("memory", "3a. memory truth: peaks vs NVML, offload vs none", "memory:run", 45, 20),
    Check("budget", "3b. a worker held to 6 GB: out of memory is infeasible, the search goes on",
          "cli_checks:budget", 55, 35),
    Check("fp16_vae", "4. fp16 on SD 1.x: the VAE guard", "vae_fp16:run", 20, 10),
    Check("search", "5a. a short autotune search --budget 6GB", "cli_checks:search", 85, 50),
    Check("seeds", "5b. the seeds' table, interleaved rounds", "seeds:run", 75, 35),
    Check("verify", "6. autotune verify of the search's profile", "cli_checks:verify", 35, 20, needs="search"),
    Check("report", "7. autotune report of the search's profile", "cli_checks:report", 10, 5, needs="search"),
    Check("gpu_tests", "tests marked gpu (pytest -m gpu)", "cli_checks:gpu_tests", 15, 5),
]
DEFAULT_BUDGET_S = 420.0


@dataclass
class Result:
    name: str
    title: str
    status: str
    reason: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    allotted_s: float | None = None


@dataclass
class Context:
    """What a check gets in its child process: where to write, and when to stop."""

    out: Path
    deadline: float  # time.monotonic() by which the check must be done
    figures: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        """Write the figures so far, so a check killed at its box still leaves them."""
        partial = self.out / "checks" / f"{self.name}.partial.json"
        partial.write_text(json.dumps(self.figures, indent=2, default=str))


def allot(budget_s: float, checks: list[Check]) -> dict[str, float]:
    """Share `budget_s` among `checks` in proportion to their estimates; a check whose share falls under its minimum
    gets 0 (it is skipped) and its share goes to the others.

    >>> allot(100, [Check("a", "", "", 30, 10), Check("b", "", "", 70, 10)])
    {'a': 30.0, 'b': 70.0}
    """
    shares = {check.name: 0.0 for check in checks}
    running = list(checks)
    while running:
        total = sum(check.estimate_s for check in running)
        scaled = {check.name: budget_s * check.estimate_s / total for check in running}
        too_small = [check for check in running if scaled[check.name] < check.minimum_s]
        if not too_small:
            shares.update({name: round(seconds, 1) for name, seconds in scaled.items()})
            return shares
        # Drop the largest need first: it frees the most time for the rest.
        running.remove(max(too_small, key=lambda check: check.minimum_s))
    return shares


def run_all(out: Path, budget_s: float, dry_run: bool, only: list[str] | None = None,
            on_result: Callable[[Result], None] | None = None) -> tuple[list[Result], dict[str, Any]]:
    """Run every check (or list it, skipped, with its reason); return the results and what was found of the device."""
    (out / "checks").mkdir(parents=True, exist_ok=True)
    checks = [check for check in CHECKS if not only or check.name in only]
    device = {"cuda": None, "reason": DRY_RUN} if dry_run else cuda_device()
    planned = allot(budget_s, checks)
    started = time.monotonic()
    results: list[Result] = []
    for index, check in enumerate(checks):
        skip = _planned(planned[check.name]) if dry_run else (None if device["cuda"] else device["reason"])
        if skip is None and check.needs:
            needed = next((r for r in results if r.name == check.needs), None)
            if needed is None or not needed.figures.get("profile"):
                skip = f"no profile: the {check.needs} check wrote none"
        share = 0.0
        if skip is None:
            left = budget_s - (time.monotonic() - started)
            share = allot(left, checks[index:]).get(check.name, 0.0)
            if share <= 0:
                skip = f"time box: needs at least {check.minimum_s:.0f} s, {max(0.0, left):.0f} s of the budget left"
        result = Result(check.name, check.title, SKIPPED, skip) if skip else _run_child(check, out, share)
        result.allotted_s = share or None
        results.append(result)
        (out / "checks" / f"{check.name}.json").write_text(json.dumps(asdict(result), indent=2, default=str))
        if on_result:
            on_result(result)
    return results, device


def _planned(share: float) -> str:
    return f"{DRY_RUN} (its time box would be {share:.0f} s)" if share else f"{DRY_RUN} (no time box would be left)"


def cuda_device() -> dict[str, Any]:
    """Whether torch sees a GPU, asked in a child so that this process never creates a CUDA context."""
    probe = ("import torch; print(torch.cuda.device_count(), "
             "torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')")
    try:
        answer = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                                env=child_env())
    except subprocess.TimeoutExpired:
        return {"cuda": None, "reason": "asking torch for a CUDA device hung for 120 s"}
    if answer.returncode != 0:
        return {"cuda": None, "reason": f"torch cannot be imported: {last_line(answer.stderr)}"}
    count, _, name = answer.stdout.strip().partition(" ")
    if not count.isdigit() or int(count) == 0:
        return {"cuda": None, "reason": NO_CUDA}
    return {"cuda": name, "count": int(count), "reason": None}


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The checkout's autotune, whether or not it is pip-installed here.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return env


def _run_child(check: Check, out: Path, seconds: float) -> Result:
    command = [sys.executable, str(SCRIPT), "--one", check.name, "--out", str(out), "--budget-s", str(seconds)]
    started = time.monotonic()
    log = out / "checks" / f"{check.name}.log"
    final = out / "checks" / f"{check.name}.json"
    final.unlink(missing_ok=True)
    with open(log, "w") as sink:
        child = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=child_env(),
                                 start_new_session=True, cwd=ROOT)
        try:
            child.wait(timeout=seconds + GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # its own session: the CLI runs it started go too
            child.wait()
    elapsed = round(time.monotonic() - started, 1)
    if final.is_file():
        result = Result(**json.loads(final.read_text()))
        result.seconds = elapsed
        return result
    partial = out / "checks" / f"{check.name}.partial.json"
    figures = json.loads(partial.read_text()) if partial.is_file() else {}
    if child.returncode == -signal.SIGKILL:
        reason = f"killed after its time box of {seconds:.0f} s (+{GRACE_S:.0f} s grace)"
    else:
        reason = f"the check process exited with {child.returncode}: {last_line(log.read_text())}"
    return Result(check.name, check.title, FAIL, reason, figures, elapsed)


def run_one(name: str, out: Path, seconds: float) -> int:
    """The child's side: run one check and write its result; a check that raises fails with the error's last line."""
    check = next(check for check in CHECKS if check.name == name)
    context = Context(out=out, deadline=time.monotonic() + max(1.0, seconds - GRACE_S / 3), name=name)
    module_name, function = check.target.split(":")
    started = time.monotonic()
    try:
        module = importlib.import_module(f"gpu_checks.{module_name}")
        status, reason = getattr(module, function)(context)
    except Exception as error:  # a failing check is data: the run goes on
        traceback.print_exc()
        status, reason = FAIL, f"{type(error).__name__}: {last_line(str(error)) or 'no message'}"
    result = Result(name, check.title, status, reason, context.figures, round(time.monotonic() - started, 1))
    (out / "checks" / f"{name}.json").write_text(json.dumps(asdict(result), indent=2, default=str))
    return 0


def last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
