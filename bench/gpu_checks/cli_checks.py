"""Checks that drive the `autotune` command line as a user would: the 6 GB budget (3b), the short search (5a),
`autotune verify` (6) and `autotune report` (7), all on builtin:sd15-arch."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from .core import FAIL, PASS, PROFILE_SUFFIX, ROOT, SD15, SKIPPED, Context, child_env, last_line

BUDGET = "6GB"
BUDGET_BYTES = 6 * 10**9
# The search's trials stop after this many seconds (--timeout); at 8 steps a trial takes seconds on an H100, so three
# fit beside the first worker's start. What --timeout does not cover: the driver's imports before it (~8 s) and the
# 1-round re-measure of the top 2 after it (~25 s: a spawned worker each, which imports and builds).
SEARCH_TIMEOUT_S, AFTER_TRIALS_S = 45.0, 40.0


def _run(command: list[str], ctx: Context, log: Path, reserve_s: float = 3.0) -> int | None:
    """Run `command` to its end or to the check's deadline (then it and its workers are killed: None)."""
    with open(log, "w") as sink:
        child = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT,
                                 start_new_session=True)
        try:
            return child.wait(timeout=max(1.0, ctx.left() - reserve_s))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            return None


def _autotune(*args: str) -> list[str]:
    return [sys.executable, "-m", "autotune.cli", *args]


def _tail(log: Path, lines: int = 12) -> list[dict[str, str]]:
    text = log.read_text(errors="replace") if log.is_file() else ""
    return [{"output": line.rstrip()} for line in text.strip().splitlines()[-lines:] if line.strip()]


def _outcome(code: int | None) -> str:
    return "killed at the time box" if code is None else f"exit {code}"


def gpu_slug(name: str | None) -> str:
    """The GPU's name as a file name: `NVIDIA H200` -> `h200`.

    >>> gpu_slug("NVIDIA GeForce RTX 3060")
    'rtx-3060'
    """
    name = (name or "").lower().replace("nvidia", "").replace("geforce", "")
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "gpu"


def _trials(folder: Path) -> list[dict[str, Any]]:
    import optuna

    from autotune.compare.records import TrialRecord

    storages = sorted(folder.glob("*.db"))
    if not storages:
        return []
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{storages[0]}")
    rows = []
    for trial in study.trials:
        record = TrialRecord.of(trial)
        peak = record.peak_memory_bytes
        rows.append({"trial": trial.number, "state": trial.state.name, "failure": record.failure,
                     "reason": (record.reason or "")[:120] or None,
                     "settings": dict(trial.params),
                     "peak_gib": None if peak is None else round(peak / 2**30, 3),
                     "images_per_s": record.images_per_s})
    return rows


def budget_command(folder: Path) -> list[str]:
    """fp32, classic attention, no compile and no offload are pinned: the first trial (the recommendation, which
    would otherwise add offload=model while its prediction exceeds 6 GB) runs out of memory for sure. Three trials:
    the search must go on past it."""
    pins = ("precision=fp32", "attention=vanilla", "compile=none", "offload=none")
    return _autotune("search", "--model", SD15, "--budget", BUDGET, "--objective", "latency", "--trials", "3",
                     "--steps", "2", *(arg for pin in pins for arg in ("--pin", pin)), "--top-k", "1", "--rounds",
                     "1", "--trial-timeout", "90", "--out", str(folder / "budget.yaml"))


def budget(ctx: Context) -> tuple[str, str | None]:
    """fp32 weights (4.3 GB) and classic attention's 4096x4096 score matrices at 512x512 need more than 6 GB: the
    first trial must fail as out of memory inside the worker's memory fraction, and a later trial must still run."""
    from .nvml import total_bytes

    memory = total_bytes()  # NVML, not autotune's probe: its imports (diffusers, seconds) would take from the box
    if memory is None:
        return FAIL, "NVML cannot read the GPU's memory"
    if memory < 2 * BUDGET_BYTES:
        return SKIPPED, f"the card has {memory / 1e9:.0f} GB: a {BUDGET} fraction of it proves little"
    folder = ctx.out / "budget-6gb"
    folder.mkdir(exist_ok=True)
    code = _run(budget_command(folder), ctx, folder / "search.log")
    rows = _trials(folder)
    ctx.figures |= {"fraction": round(BUDGET_BYTES / memory, 4), "search": _outcome(code), "trials": rows,
                    "log": str(folder / "search.log")}
    oom = [row for row in rows if row["failure"] == "oom" and row["state"] == "COMPLETE"]
    if not oom:
        return FAIL, "no trial was recorded out of memory (as a COMPLETE, infeasible trial)"
    later = [row for row in rows if row["trial"] > oom[0]["trial"] and row["state"] == "COMPLETE"]
    if not later:
        return FAIL, f"trial {oom[0]['trial']} ran out of memory, and no later trial completed"
    return PASS, f"trial {oom[0]['trial']} out of memory and infeasible; trial {later[0]['trial']} ran after it"


def search_command(out: Path, left_s: float) -> list[str]:
    """At 8 steps (the built-in's own 50 would not finish one trial in the box), trials for 45 s or what the box
    leaves after the re-measure, one re-measure round. compile is pinned off: one compiled trial takes most of this
    box (check 5b measures compile instead)."""
    timeout = max(10.0, min(SEARCH_TIMEOUT_S, left_s - AFTER_TRIALS_S))
    return _autotune("search", "--model", SD15, "--budget", BUDGET, "--trials", "3", "--steps", "8",
                     "--timeout", f"{timeout:.0f}", "--trial-timeout", "120", "--max-batch", "4", "--top-k", "2",
                     "--rounds", "1", "--pin", "compile=none", "--out", str(out))


def search(ctx: Context) -> tuple[str, str | None]:
    import yaml

    from .nvml import gpu_name

    # The GPU's name from NVML: asking torch would hold a CUDA context on the card while the search runs, and
    # importing autotune here (diffusers, seconds) would take from the search's box; the profile is read as YAML.
    out = ctx.out / f"{gpu_slug(gpu_name())}{PROFILE_SUFFIX}"
    command = search_command(out, ctx.left())
    log = ctx.out / "search.log"
    code = _run(command, ctx, log)
    ctx.figures |= {"command": " ".join(command[2:]), "search": _outcome(code), "log": str(log)}
    if code != 0 or not out.is_file():
        ctx.figures["output"] = _tail(log)
        return FAIL, f"autotune search: {_outcome(code)}: {last_line(log.read_text(errors='replace'))}"
    profile = yaml.safe_load(out.read_text())
    metrics = profile.get("metrics") or {}
    rate, peak = metrics.get("images_per_s") or {}, metrics.get("peak_memory_bytes")
    ctx.figures |= {"profile": str(out), "settings": profile.get("settings"), "images_per_s": rate.get("median"),
                    "peak_gib": None if peak is None else round(peak / 2**30, 3)}
    return PASS, None


def _profile(ctx: Context) -> str | None:
    found = ctx.out / "checks" / "search.json"
    return json.loads(found.read_text()).get("figures", {}).get("profile") if found.is_file() else None


def verify(ctx: Context) -> tuple[str, str | None]:
    profile = _profile(ctx)
    if not profile:
        return SKIPPED, "no profile: the search check wrote none"
    log = ctx.out / "verify.log"
    code = _run(_autotune("verify", profile, "--workers", "2", "--rounds", "1"), ctx, log)
    ctx.figures |= {"verify": _outcome(code), "output": _tail(log, 20)}
    if code == 0:
        return PASS, None
    return FAIL, "a metric failed (see the output)" if code == 1 else f"autotune verify: {_outcome(code)}"


def report(ctx: Context) -> tuple[str, str | None]:
    profile = _profile(ctx)
    if not profile:
        return SKIPPED, "no profile: the search check wrote none"
    page, log = ctx.out / "report.html", ctx.out / "report.log"
    code = _run(_autotune("report", profile, "-o", str(page)), ctx, log)
    ctx.figures |= {"report": _outcome(code), "page": str(page),
                    "page_bytes": page.stat().st_size if page.is_file() else None}
    if code == 0 and page.is_file() and page.stat().st_size > 0:
        return PASS, None
    return FAIL, f"autotune report: {_outcome(code)}: {last_line(log.read_text(errors='replace'))}"
