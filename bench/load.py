"""Benchmark: the README's main search on a quiet machine and with a CPU-heavy process beside it, from one script.

Both searches run the same command (same seed, a study each). A busy search must not ship a worse configuration
without saying so: afterwards, on the quiet machine, both chosen configurations and the default one are re-measured
interleaved, and the script prints
- the busy search's choice against the quiet one's (within 10%, or the busy search said it could not tell), and
- each search's printed claim (speed-up and its interval) against the quiet re-measurement of the same ratio.

    python bench/load.py --trials 30            # the README's main search, twice; --trials 10 for a shorter run
    python bench/load.py --pin compile=none     # without compile: on two CPU cores compile is most of a search

The busy process is `--burners` pure-Python spinning processes (one per core by default). This is a benchmark, not a
test: run it alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before diffusers loads transformers

from autotune.quiet import quiet_library_noise  # noqa: E402

quiet_library_noise()

from rich.console import Console  # noqa: E402

from autotune import knobs  # noqa: E402
from autotune.cli.flags import parse_pins  # noqa: E402
from autotune.compare.candidates import Candidate  # noqa: E402
from autotune.compare.remeasure import remeasure  # noqa: E402
from autotune.hardware import probe  # noqa: E402
from autotune.options import SearchOptions  # noqa: E402
from autotune.tuner.run import run_search  # noqa: E402
from autotune.worker.process import WorkerConfig  # noqa: E402

_SPAWN_BURNERS = """
import subprocess, sys
for _ in range(int(sys.argv[1])):
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(spinner.pid)
"""


def start_burners(count: int) -> list[int]:
    """`count` spinning processes that are not this process's children (an intermediate one starts them and exits):
    a search counts its own children's CPU as its own work, and another user's job is no child of it."""
    started = subprocess.run([sys.executable, "-c", _SPAWN_BURNERS, str(count)], capture_output=True, text=True,
                             check=True)
    return [int(pid) for pid in started.stdout.split()]


def stop_burners(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def search(args, folder: Path, name: str, burners: int) -> tuple:
    """One search; with `burners`, that many spinning processes run beside it until it ends."""
    pids = start_burners(burners)
    started = time.perf_counter()
    try:
        outcome = run_search(args.model, SearchOptions(budget=args.budget, n_trials=args.trials, seed=args.seed,
                                                       out=folder / f"{name}.yaml", study_name=name,
                                                       pinned=parse_pins(args.pin)))
    finally:
        stop_burners(pids)
    return outcome, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-sd")
    parser.add_argument("--budget", default="4GB")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pin", action="append", default=[], help="KNOB=VALUE, as `autotune search --pin`")
    args = parser.parse_args()
    console = Console(width=200)
    hw = probe().hardware

    with tempfile.TemporaryDirectory(prefix="autotune-load-") as folder:
        console.print(f"quiet search: {args.trials} trials ...")
        quiet, quiet_s = search(args, Path(folder), "quiet", 0)
        console.print(f"busy search: {args.trials} trials beside {args.burners} spinning processes ...")
        busy, busy_s = search(args, Path(folder), "busy", args.burners)
        console.print(f"re-measuring both choices and the default on the quiet machine, {args.rounds} rounds ...")
        default = Candidate("default", {**knobs.defaults(), "steps": quiet.baseline.settings.get("steps")})
        chosen = {"quiet": Candidate("quiet search's choice", quiet.best.settings),
                  "busy": Candidate("busy search's choice", busy.best.settings)}
        remeasure([default, *chosen.values()], WorkerConfig(model=args.model, device=hw.device),
                  quiet.profile.workload, args.rounds, 900)

    pins = f", pinned {' '.join(args.pin)}" if args.pin else ""
    console.print(f"\nmachine: {hw.gpu or hw.cpu}, {hw.cpu_cores} cores; {args.trials} trials{pins}; quiet search "
                  f"{quiet_s:.0f} s, busy search {busy_s:.0f} s beside {args.burners} spinning processes")
    console.print("| search | its claim vs default | re-measured quietly | claim holds | images/s re-measured |")
    console.print("|---|---|---|---|---|")
    for name, outcome in (("quiet", quiet), ("busy", busy)):
        claim, again = outcome.speedup_ratio, chosen[name].vs(default)
        holds = (claim is not None and again is not None
                 and (claim.verdict == "cannot tell" or claim.low <= again.median <= claim.high))
        console.print(f"| {name} | {claim.show() if claim else '-'} | {again.show() if again else '-'} | "
                      f"{'yes' if holds else 'NO'} | {chosen[name].images_per_s.median:.3g} |")
    ratio = chosen["busy"].vs(chosen["quiet"])
    said_cannot_tell = busy.speedup_ratio is not None and busy.speedup_ratio.verdict == "cannot tell"
    within = ratio is not None and ratio.median >= 0.9
    console.print(f"busy choice / quiet choice, re-measured quietly: {ratio.show() if ratio else '-'}: "
                  + ("within 10%" if within else "the busy search said it could not tell" if said_cannot_tell
                     else "WORSE by more than 10%, and the busy search claimed a winner"))


if __name__ == "__main__":
    main()
