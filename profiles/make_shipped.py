"""Regenerate the profiles shipped in this folder, with autotune's own search, on the machine that runs this script.

A shipped profile is only ever written by the tuner on the hardware it names; run this on that hardware:

    python profiles/make_shipped.py                  # every profile whose device this machine has
    python profiles/make_shipped.py tiny-sd-cpu      # one of them

Each search keeps its study (SQLite) and worker log under `build/shipped-profiles/`, not in the package; the
profile is then copied here. A previous study of the same name is removed first, so every run is a fresh search.
Run it on an otherwise idle machine: the measured images/s is what `autotune verify` later holds the profile to.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE.parent / "build" / "shipped-profiles"

# Name -> device it is made on, and the arguments of `autotune.tuner.run.run_search`.
SHIPPED: dict[str, tuple[str, dict]] = {
    "tiny-sd-cpu": ("cpu", dict(
        model="builtin:tiny-sd",
        budget="2GB",          # an explicit budget, so the profile is selectable on CPUs with other RAM sizes
        n_trials=20,
        steps=50,              # tiny-sd's own default, pinned here so the profile does not move if that default does
        height=32, width=32,   # the built-in's default size (it was trained at 32x32)
        seed=0,
        pinned={},             # nothing pinned: compile, threads, attention, ... are all searched
        rounds=5,              # the final interleaved re-measure: 5 rounds x 2 runs per candidate
    )),
}


def make(name: str) -> Path:
    from autotune.hardware import probe
    from autotune.tuner.run import run_search

    device, options = SHIPPED[name]
    if probe(device).hardware.device != device:
        raise SystemExit(f"{name} is made on {device}; this machine has none")
    WORK.mkdir(parents=True, exist_ok=True)
    for stale in WORK.glob(f"{name}.*"):
        stale.unlink()
    started = time.monotonic()
    outcome = run_search(device=device, study_name=name, out=WORK / f"{name}.yaml",
                         on_event=lambda kind, data: _progress(name, kind, data), **options)
    target = HERE / f"{name}.yaml"
    outcome.profile.save(target)  # its study's file named from here, not from the build folder
    best, base = outcome.best.images_per_s, outcome.baseline.images_per_s
    print(f"{name}: {best.median:.2f} images/s (cv {best.cv:.0%}, n {best.n}) vs default {base.median:.2f}; "
          f"{outcome.trials} trials in {time.monotonic() - started:.0f} s -> {target}")
    return target


def _progress(name: str, kind: str, data: dict) -> None:
    if kind == "phase":
        print(f"{name}: {data['message']}", flush=True)
    elif kind == "trial":
        rate = data["images_per_s"]
        shown = f"{rate:.2f} images/s" if rate else f"{data['failure']}: {data['reason']}"
        print(f"{name}: trial {data['number']} ({data['done']}/{data['total']}): {shown}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"profiles to make (default: all of {', '.join(SHIPPED)})")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in SHIPPED]
    if unknown:
        parser.error(f"unknown shipped profile {', '.join(unknown)}; known: {', '.join(SHIPPED)}")
    for name in args.names or list(SHIPPED):
        make(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
