"""The checks, their time boxes, and the child process's side of running one.

Each check runs in a child process (`gpu_check.py --one NAME`, see `runner`): a crash, a CUDA error or a hang ends
that check alone, and every check starts with a clean CUDA context, so its memory figures are its own. The child
writes its result to `DIR/checks/NAME.json`; the parent kills it at the end of its time box.
"""

from __future__ import annotations

import importlib
import json
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"
PASS, FAIL, SKIPPED = "pass", "fail", "skipped"
NO_CUDA = "no CUDA device"
DRY_RUN = "dry run: listed, not run"
SD15 = "builtin:sd15-arch"
DIT = "builtin:flux-arch"
# The search check's profile, `<gpu>-sd15-arch.yaml`: it stays beside gpu_check.json, out of the evidence archive.
PROFILE_SUFFIX = "-sd15-arch.yaml"

# The whole run, imports included, must end within the 8 minutes on an H100.
TOTAL_S = 480.0
# The parent's own work before the first check: the CUDA probe child (imports torch: ~4 s) and the worker-start
# probe (a spawned worker imports torch, diffusers, transformers and torchao and creates a CUDA context: ~12 s).
STARTUP_S = 17.0
# After the last check: tar the evidence (a ~5 MB report at most) and write gpu_check.json/.md.
FINISH_S = 3.0
DEFAULT_BUDGET_S = TOTAL_S
# A child stops this long before its box ends, so it writes its result before the parent kills it at the end.
WRAP_UP_S = 5.0


@dataclass(frozen=True)
class Check:
    """One check: `target` is `module:function` inside this package, imported only when the check runs."""

    name: str
    title: str
    target: str
    estimate_s: float  # its time box on an H100 at the default budget, the child's imports included (a guess)
    minimum_s: float  # below this it cannot say anything, so it is skipped instead
    needs: str | None = None  # a check whose output (the search's profile) this one reads
    requires: str | None = None  # a module it cannot run without; looked up (not imported) before it starts
    without: str = ""  # what to do where `requires` is missing


# H100 boxes, from the review's (fingerprint 30, knobs 120, memory 50, budget 55, fp16_vae 20, search 100, seeds 100,
# verify 45) trimmed where they were loose, so that they and the parent's start-up and finish fit TOTAL_S:
# - fingerprint 20: the review counted bytecode compiling at first import (bench/gpu_run.sh precompiles), and
#   `autotune probe` now runs while the check imports torch, not after.
# - knobs 100: max-autotune modes are skipped unless --full-sweep; the compile cases run last, each only when its
#   cost is left, so a shorter box drops compile cases, not values.
# - memory 45: sequential offload (the slowest) runs last and is skipped, with that reason, if its cost is not left.
# - search 95: --timeout 45 for the trials at 8 steps, the rest for the driver's imports and the 1-round re-measure.
# - seeds 80: at 20 steps an fp32 call is ~1 s on an H100, so a round of 6 is ~5 s; the regional compile ~30 s.
# - verify 40: two workers at the profile's 8 steps, one round.
# - report 5: reads files only; skipped where plotly was not carried.
CHECKS: list[Check] = [
    Check("fingerprint", "1. fingerprint: autotune probe vs torch", "fingerprint:run", 20, 10),
    Check("knobs", "2. every knob value on CUDA, applied and read back", "knob_sweep:run", 100, 30),
    Check("memory", "3a. memory truth: peaks vs NVML sampled, offload vs none", "memory:run", 45, 20),
    Check("budget", "3b. a worker held to 6 GB: out of memory is infeasible, the search goes on",
          "cli_checks:budget", 55, 35),
    Check("fp16_vae", "4. fp16 on SD 1.x: the VAE guard", "vae_fp16:run", 20, 12),
    Check("search", "5a. a short autotune search --budget 6GB", "cli_checks:search", 95, 70),
    Check("seeds", "5b. the seeds' table, interleaved rounds", "seeds:run", 80, 45),
    Check("verify", "6. autotune verify of the search's profile", "cli_checks:verify", 40, 25, needs="search"),
    Check("report", "7. autotune report of the search's profile", "cli_checks:report", 5, 3, needs="search",
          requires="plotly", without="`autotune report` reads only files: run it on a CPU from the returned profile "
                                     "and the study in evidence.tar.gz"),
]


@dataclass(frozen=True)
class Options:
    """What the command line asks beyond the default run; passed to every check's child."""

    with_flux: bool = False  # the knob sweep also covers builtin:flux-arch (62.8 GiB in fp32: not by default)
    full_sweep: bool = False  # the knob sweep also runs the max-autotune compile modes (minutes each)

    def flags(self) -> list[str]:
        return (["--with-flux"] if self.with_flux else []) + (["--full-sweep"] if self.full_sweep else [])


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
    """What a check gets in its child process: where to write, when to stop, and the run's options."""

    out: Path
    deadline: float  # time.monotonic() by which the check must be done
    figures: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    options: Options = field(default_factory=Options)

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


def checks_budget(budget_s: float) -> float:
    """What the checks share of a run of `budget_s`: the parent's start-up and finish are reserved first."""
    return max(0.0, budget_s - STARTUP_S - FINISH_S)


def plan(budget_s: float, checks: list[Check]) -> list[dict[str, Any]]:
    """The run's time boxes as rows (start-up, each check, finish, total): what the dry run prints and writes."""
    shares = allot(checks_budget(budget_s), checks)
    rows = [{"part": "start-up: CUDA probe, worker-start probe", "box_s": STARTUP_S}]
    rows += [{"part": check.title, "box_s": shares[check.name]} for check in checks]
    rows.append({"part": "finish: tar the evidence, write gpu_check.json/.md", "box_s": FINISH_S})
    rows.append({"part": f"total (--budget-s {budget_s:.0f})", "box_s": round(sum(r["box_s"] for r in rows), 1)})
    return rows


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The checkout's autotune, whether or not it is pip-installed here.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return env


def run_one(name: str, out: Path, seconds: float, options: Options) -> int:
    """The child's side: run one check and write its result; a check that raises fails with the error's last line."""
    check = next(check for check in CHECKS if check.name == name)
    context = Context(out=out, deadline=time.monotonic() + max(1.0, seconds - WRAP_UP_S), name=name, options=options)
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
