"""Benchmark: autotune against the default configuration, the documentation's recipes and random search.

One run on one machine: two searches with the same trial count (autotune's TPE with warm starts; plain random
search), then every contender re-measured interleaved in its own warmed-up worker, and the ratios printed.

    python bench/search_vs_baselines.py --trials 30 --budget 4GB

This is a benchmark, not a test: its numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before diffusers loads transformers

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from autotune import knobs  # noqa: E402
from autotune.compare.candidates import Candidate  # noqa: E402
from autotune.compare.remeasure import remeasure  # noqa: E402
from autotune.hardware import probe  # noqa: E402
from autotune.options import SearchOptions  # noqa: E402
from autotune.tuner.run import run_search  # noqa: E402
from autotune.tuner.space import documentation_recipes  # noqa: E402
from autotune.units import format_size, parse_size  # noqa: E402
from autotune.worker.process import WorkerConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-sd")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--budget", default="4GB")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    console = Console()
    hardware = probe().hardware
    budget = parse_size(args.budget, hardware.memory_bytes)

    with tempfile.TemporaryDirectory(prefix="autotune-bench-") as folder:
        common = dict(budget=budget, n_trials=args.trials, steps=args.steps, seed=args.seed, top_k=1, rounds=1)
        console.print(f"autotune (TPE + recipes), {args.trials} trials ...")
        tuned = run_search(args.model, SearchOptions(sampler="tpe", out=Path(folder, "tpe.yaml"), **common))
        console.print(f"random search, {args.trials} trials ...")
        randomized = run_search(args.model, SearchOptions(sampler="random", warm_start_recipes=False,
                                                          out=Path(folder, "random.yaml"), **common))

    defaults = {knob.name: knob.default for knob in knobs.in_order()} | {"steps": args.steps}
    contenders = [Candidate("default (fp32, batch 1)", defaults)]
    available = {(row["knob"], row["value"]) for row in knobs.availability(hardware) if row["available"]}
    for name, recipe in documentation_recipes(hardware.device).items():
        if recipe and all((knob, value) in available for knob, value in recipe.items()):
            contenders.append(Candidate(f"recipe: {name}", defaults | recipe))
    contenders.append(Candidate("random search best", randomized.best.settings))
    contenders.append(Candidate("autotune best", tuned.best.settings))

    console.print(f"re-measuring {len(contenders)} contenders, {args.rounds} interleaved rounds ...")
    remeasure(contenders, WorkerConfig(model=args.model, device=hardware.device, memory_budget_bytes=budget),
              tuned.profile.workload, rounds=args.rounds, timeout_s=900)

    base = contenders[0]
    table = Table(title=f"{args.model} on {hardware.describe()}, {args.steps} steps, "
                        f"{tuned.profile.workload.width}x{tuned.profile.workload.height}, budget {format_size(budget)}")
    for column in ("contender", "images/s", "spread", "batch", "peak memory", "x default (95% interval)"):
        table.add_column(column, justify="left" if column == "contender" else "right")
    for contender in contenders:
        rate = contender.images_per_s
        table.add_row(contender.label, f"{rate.median:.2f}" if not contender.failure else contender.failure,
                      f"{rate.cv:.0%}", str(contender.batch_size), format_size(contender.peak_memory_bytes),
                      contender.shown_vs(base))
    console.print(table)


if __name__ == "__main__":
    main()
