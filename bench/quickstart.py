"""Benchmark: the README's main quickstart command against a 30-trial search, each choice re-measured in one run.

It runs the quickstart command as a user would (a new process, wall clock from its start to its exit), then a
30-trial search of the same pipeline (the main command before it had a time limit), then re-measures the default
configuration and both choices interleaved, and prints the quickstart's wall time and its choice's images/s as a
ratio of the 30-trial search's, with its interval.

    python bench/quickstart.py                      # the 30-trial search with compile (about an hour on two cores)
    python bench/quickstart.py --pin compile=none   # a shorter reference search, without compile

Both run with an empty cache (`AUTOTUNE_CACHE` in a new folder), as on a fresh machine. This is a benchmark, not a
test: run it alone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
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
from autotune.profile import load_profile  # noqa: E402
from autotune.tuner.run import run_search  # noqa: E402
from autotune.worker.process import WorkerConfig  # noqa: E402

# The README's main quickstart command, after its install step.
QUICKSTART = ["autotune", "search", "--budget", "4GB", "--timeout", "200"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30, help="the reference search's trials")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pin", action="append", default=[], help="KNOB=VALUE for the reference search only")
    args = parser.parse_args()
    console = Console(width=200)
    hw = probe().hardware
    with tempfile.TemporaryDirectory(prefix="autotune-quickstart-") as folder:
        work = Path(folder)
        env = {**os.environ, "AUTOTUNE_CACHE": str(work / "cache")}  # an empty cache: no compiled code carried in
        os.environ["AUTOTUNE_CACHE"] = env["AUTOTUNE_CACHE"]
        console.print(f"quickstart: {' '.join(QUICKSTART)} ...")
        started = time.perf_counter()
        printed = subprocess.run([*QUICKSTART, "--out", str(work / "quick.yaml"), "--study", "quick"], cwd=work,
                                 env={**env, "COLUMNS": "300"}, check=True, stdout=subprocess.PIPE, text=True).stdout
        quick_s = time.perf_counter() - started
        split = next((line for line in printed.splitlines() if line.startswith("time:")), "-")
        console.print(f"reference: a {args.trials}-trial search ...")
        started = time.perf_counter()
        reference = run_search("builtin:tiny-sd", SearchOptions(
            budget="4GB", n_trials=args.trials, out=work / "reference.yaml", study_name="reference",
            pinned=parse_pins(args.pin)))
        reference_s = time.perf_counter() - started
        quick = load_profile(work / "quick.yaml")
        console.print(f"re-measuring both choices and the default, interleaved, {args.rounds} rounds ...")
        default = Candidate("default", {**knobs.defaults(), "steps": quick.settings_dict().get("steps")})
        chosen = Candidate("quickstart's choice", quick.settings_dict())
        best = Candidate("reference's choice", reference.best.settings)
        remeasure([default, chosen, best], WorkerConfig(model="builtin:tiny-sd", device=hw.device), quick.workload,
                  args.rounds, 900)

    ratio = chosen.vs(best)
    console.print(f"quickstart's own {split}")
    console.print(f"reference's own {reference.time_split.describe()}")
    pins = f", pinned {' '.join(args.pin)}" if args.pin else ""
    console.print(f"\nmachine: {hw.gpu or hw.cpu}, {hw.cpu_cores} cores")
    console.print("| search | wall s | images/s re-measured | x default | choice |")
    console.print("|---|---|---|---|---|")
    for name, seconds, candidate in ((" ".join(QUICKSTART), quick_s, chosen),
                                     (f"{args.trials} trials{pins}", reference_s, best)):
        again = candidate.vs(default)
        console.print(f"| {name} | {seconds:.0f} | {candidate.images_per_s.median:.3g} | "
                      f"{again.show() if again else '-'} | {knobs.show_changed(candidate.settings)} |")
    within = ratio is not None and ratio.median >= 0.95
    console.print(f"quickstart's choice / reference's choice: {ratio.show() if ratio else '-'}; quickstart "
                  f"{'within' if within else 'NOT shown within'} 5% of the reference, "
                  f"{'in' if quick_s <= 300 else 'NOT in'} 5 minutes ({quick_s:.0f} s)")


if __name__ == "__main__":
    main()
