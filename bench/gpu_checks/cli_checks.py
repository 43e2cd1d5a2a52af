"""Checks that drive the `autotune` command line as a user would: the 6 GB budget (3b), the short search (5a),
`autotune verify` (6), `autotune report` (7), and the tests marked `gpu`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from .core import FAIL, PASS, ROOT, SKIPPED, Context, child_env, last_line

SD15 = "builtin:sd15-arch"
BUDGET = "6GB"
BUDGET_BYTES = 6 * 10**9
# What a search started here may use of the box; the rest is for its final re-measurement, which --timeout does not
# cover.
REMEASURE_S = 70.0


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

    storages = sorted(folder.glob("*.db"))
    if not storages:
        return []
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{storages[0]}")
    rows = []
    for trial in study.trials:
        attrs = trial.user_attrs
        peak = attrs.get("peak_memory_bytes")
        rows.append({"trial": trial.number, "state": trial.state.name, "failure": attrs.get("failure"),
                     "reason": (attrs.get("reason") or "")[:120] or None,
                     "settings": {k: v for k, v in trial.params.items()},
                     "peak_gib": None if peak is None else round(peak / 2**30, 3),
                     "images_per_s": attrs.get("images_per_s")})
    return rows


def budget(ctx: Context) -> tuple[str, str | None]:
    """fp32 weights (4.3 GB) and classic attention's 4096x4096 score matrices at 512x512 need more than 6 GB: the
    first trial must fail as out of memory inside the worker's memory fraction, and a later trial must still run."""
    from .gpu import hardware

    memory = hardware().memory_bytes
    if memory < 2 * BUDGET_BYTES:
        return SKIPPED, f"the card has {memory / 1e9:.0f} GB: a {BUDGET} fraction of it proves little"
    folder = ctx.out / "budget-6gb"
    folder.mkdir(exist_ok=True)
    command = _autotune("search", "--model", SD15, "--budget", BUDGET, "--objective", "latency", "--trials", "2",
                        "--steps", "2", "--pin", "precision=fp32", "--pin", "attention=vanilla", "--pin",
                        "compile=none", "--top-k", "1", "--rounds", "1", "--trial-timeout", "90",
                        "--out", str(folder / "budget.yaml"))
    code = _run(command, ctx, folder / "search.log")
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


def search(ctx: Context) -> tuple[str, str | None]:
    from autotune.profile import load_profile

    from .gpu import hardware

    # The GPU's name from NVML: asking torch would hold a CUDA context on the card while the search runs.
    out = ctx.out / f"{gpu_slug(hardware().gpu)}-sd15-arch.yaml"
    trials = "3" if ctx.left() > 150 else "2"
    # compile is pinned off: one compiled trial takes most of this box (check 5b measures compile instead).
    command = _autotune("search", "--model", SD15, "--budget", BUDGET, "--trials", trials,
                        "--timeout", f"{max(10.0, ctx.left() - REMEASURE_S):.0f}", "--trial-timeout", "120",
                        "--max-batch", "4", "--top-k", "2", "--rounds", "2", "--pin", "compile=none",
                        "--out", str(out))
    log = ctx.out / "search.log"
    code = _run(command, ctx, log)
    ctx.figures |= {"command": " ".join(command[2:]), "search": _outcome(code), "log": str(log)}
    if code != 0 or not out.is_file():
        ctx.figures["output"] = _tail(log)
        return FAIL, f"autotune search: {_outcome(code)}: {last_line(log.read_text(errors='replace'))}"
    profile = load_profile(out)
    rate, peak = profile.metrics.images_per_s, profile.metrics.peak_memory_bytes
    ctx.figures |= {"profile": str(out), "settings": profile.settings_dict(),
                    "images_per_s": None if rate is None else rate.median,
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


def gpu_tests(ctx: Context) -> tuple[str, str | None]:
    log = ctx.out / "gpu_tests.log"
    code = _run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", str(ROOT / "tests")],
                ctx, log)
    ctx.figures |= {"pytest": _outcome(code), "output": _tail(log, 8)}
    text = log.read_text(errors="replace")
    if code == 5:
        return SKIPPED, "no test in tests/ is marked gpu"
    if code != 0 and "No module named pytest" in text:
        return SKIPPED, "pytest is not installed here"
    return (PASS, None) if code == 0 else (FAIL, f"pytest -m gpu: {_outcome(code)}: {last_line(text)}")
