"""Benchmark: the time limit and the busy CPU, as a user meets them. Beside one spinning process (one core of two
taken), run the command a user runs, `autotune search --budget 4GB --trials 6 --timeout 300`, and print

- its wall time (the limit holds for the whole command: it must end within 330 s), whether it wrote a profile, and
  its verdict line;
- the threads of its first three trials (on two cores with one taken, one thread should be among them);
- its choice against the default configuration, re-measured interleaved beside the same spinning process (the busy
  search should choose a configuration at least 3x the default there).

    python bench/busy_limit.py                  # about 7 minutes on two cores
    python bench/busy_limit.py --burners 0      # the same on the quiet machine

This is a benchmark, not a test: run it alone. The spinner is `bench/load.py`'s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before diffusers loads transformers

from autotune.quiet import quiet_library_noise  # noqa: E402

quiet_library_noise()

import optuna  # noqa: E402
from load import start_burners, stop_burners  # noqa: E402

from autotune import knobs  # noqa: E402
from autotune.compare.candidates import Candidate  # noqa: E402
from autotune.compare.records import TrialRecord  # noqa: E402
from autotune.compare.remeasure import remeasure  # noqa: E402
from autotune.hardware import probe  # noqa: E402
from autotune.profile import load_profile  # noqa: E402
from autotune.worker.process import WorkerConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_command(args, out: Path) -> tuple[float, int, list[str]]:
    """The user's command, as a process of its own; its wall seconds, exit status and last lines."""
    command = [sys.executable, "-m", "autotune.cli", "search", "--model", args.model, "--budget", args.budget,
               "--trials", str(args.trials), "--timeout", str(args.timeout), "--out", str(out)]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT)})
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return time.monotonic() - started, done.returncode, lines


def first_threads(out: Path, count: int = 3) -> list:
    """The cpu_threads of the study's first `count` trials, as run (the profile's study sits beside it)."""
    storage = f"sqlite:///{out.with_suffix('.db')}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    trials = sorted(study.trials, key=lambda trial: trial.number)[:count]
    return [TrialRecord.of(trial).ran_with.get("cpu_threads") for trial in trials]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-sd")
    parser.add_argument("--budget", default="4GB")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--burners", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    hw = probe().hardware
    pids = start_burners(args.burners)
    try:
        with tempfile.TemporaryDirectory(prefix="autotune-busy-") as folder:
            out = Path(folder) / "busy.yaml"
            print(f"autotune search --budget {args.budget} --trials {args.trials} --timeout {args.timeout:.0f} beside "
                  f"{args.burners} spinning process(es) ...", flush=True)
            wall_s, status, lines = run_command(args, out)
            written = out.is_file()
            threads = first_threads(out) if out.with_suffix(".db").is_file() else []
            profile = load_profile(out) if written else None
            if profile is not None:
                print(f"re-measuring its choice and the default beside the same spinner, {args.rounds} rounds ...",
                      flush=True)
                steps = profile.settings.steps
                default = Candidate("default", {**knobs.defaults(), "steps": steps})
                chosen = Candidate("chosen", profile.settings_dict())
                remeasure([default, chosen], WorkerConfig(model=args.model, device=hw.device), profile.workload,
                          args.rounds, 900)
    finally:
        stop_burners(pids)

    print(f"\nmachine: {hw.cpu}, {hw.cpu_cores} cores, {args.burners} spinning process(es) beside the command")
    print(f"command: exit {status}, {wall_s:.0f} s of wall time (limit {args.timeout:.0f} s; must end within "
          f"{args.timeout * 1.1:.0f} s), profile written: {'yes' if written else 'NO'}")
    verdicts = [line for line in lines if "time limit" in line or "busy" in line or "cannot tell" in line
                or "faster" in line]
    for line in verdicts[-4:]:
        print(f"  said: {line.strip()}")
    print(f"cpu_threads of the first three trials: {threads}")
    if profile is None:
        return
    print(f"chosen: {knobs.show_changed(profile.settings_dict())}; recorded under others' load "
          f"{profile.metrics.others_cpu_share}; figures from the {profile.metrics.measured_in}")
    # The ratio's own verdict says "cannot tell, machine busy" beside a spinner by design; its median and interval
    # are still what was measured, side by side.
    print("| configuration | images/s beside the spinner | x default (median) | ratio as autotune states it |")
    print("|---|---|---|---|")
    for candidate in (default, chosen):
        rate, ratio = candidate.images_per_s, candidate.vs(default)
        print(f"| {candidate.label} | {rate.median:.3g} (cv {rate.cv:.0%}, n {rate.n}) | "
              f"{ratio.median:.2f}x ({ratio.low:.2f}-{ratio.high:.2f}) | {candidate.shown_vs(default)} |"
              if rate and ratio else f"| {candidate.label} | {candidate.failure or '-'} | - | - |")


if __name__ == "__main__":
    main()
