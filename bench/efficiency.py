"""Benchmark: how many trials and seconds autotune needs to reach the best configuration, against a grid, random
search, plain TPE and the recommendation alone, on a space small enough to enumerate.

The space: every knob pinned to its default but `--free` ones (precision, channels-last, CPU threads and fused QKV
by default: 3 x 2 x 3 x 2 = 36 configurations on a 2-core CPU that runs fp16 and bf16; on a GPU pass `--free` knobs
that it offers); the batch is found within each trial as in any search. One run:

1. the oracle: each configuration searched alone (one trial, for its batch), then all re-measured interleaved beside
   the default configuration as a search's final re-measurement does (`--oracle-rounds`); the best re-measured
   images/s is the oracle's. The recommendation is re-measured with them as it is recommended (batch 1: it measures
   nothing, so it finds no batch);
2. random search and TPE as a plain Optuna search runs them (no warm start, no pruner: every batch of every trial
   measured; the best trial taken as it is), and autotune's full search (the recommendation first, the guides'
   recipes, TPE, the memory model, the pruner on the batch doubling, the top 3 re-measured) at `--trials` each, for
   each of `--seeds` seeds;
3. after each trial, what each search would deliver had it stopped there, valued at the oracle's re-measurement of
   that configuration: for random search and TPE their best trial so far (Optuna's `best_trial`); for autotune the
   choice of its final re-measurement of its contenders so far, run here for each new set of contenders (its time
   added to the trial's), and after the last trial the search's own choice (`chosen/oracle`).

    python bench/efficiency.py                          # 36 configurations, 20 trials x 5 seeds x 3 searches
    python bench/efficiency.py --seeds 3 --trials 12    # shorter

Under a quality floor (`--floor psnr=30`) the space is the one where image quality is at stake, on the trained DiT by
default: scheduler x steps x step cache x quantization, narrowed with `--only` (a search's own option) to values the
oracle can enumerate: 2 schedulers x 4 step counts x {none, First Block Cache} x {none, int8 dynamic} = 32. The
cache's threshold is not enumerated: each trial calibrates it (the largest that meets the floor), in the oracle as in
the searches, so a configuration is valued with its calibrated threshold. A configuration that misses the floor has no
value; a search's incumbent is its best trial that met it. autotune's search adds, under a floor, its bisection for
the fewest steps that meet it from the reference configuration (`space.fewer_steps`); random search and TPE do not.

    python bench/efficiency.py --floor psnr=30 --trials 12   # builtin:tiny-flux, 28-step reference

This is a benchmark, not a test: its numbers depend on the machine and its load; run it alone.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before diffusers loads transformers

from autotune.quiet import quiet_library_noise  # noqa: E402

quiet_library_noise()

import optuna  # noqa: E402
from rich.console import Console  # noqa: E402

from autotune import knobs  # noqa: E402
from autotune.cli.flags import parse_only  # noqa: E402
from autotune.compare.candidates import Candidate, settings_key, top_candidates  # noqa: E402
from autotune.compare.records import TrialRecord, feasible  # noqa: E402
from autotune.compare.remeasure import remeasure  # noqa: E402
from autotune.exceptions import NothingFits  # noqa: E402
from autotune.hardware import probe  # noqa: E402
from autotune.options import SearchOptions  # noqa: E402
from autotune.recommendation import recommend  # noqa: E402
from autotune.tuner.run import run_search  # noqa: E402
from autotune.tuner.space import build_space, narrow, steps_range  # noqa: E402
from autotune.tuner.spec import recorded_spec  # noqa: E402
from autotune.tuner.study import finished  # noqa: E402
from autotune.worker import protocol  # noqa: E402
from autotune.worker.process import Worker, WorkerConfig  # noqa: E402

# name: run_search options. Random and TPE as a plain Optuna search runs them: every batch of every trial measured,
# the best trial taken as it is; autotune as `autotune search` does, its top 3 re-measured interleaved at the end.
STRATEGIES = {
    "random": {"sampler": "random", "warm_start_recipes": False, "pruner": "none", "top_k": 1},
    "tpe": {"sampler": "tpe", "warm_start_recipes": False, "pruner": "none", "top_k": 1},
    "autotune": {"sampler": "tpe", "warm_start_recipes": True, "pruner": "percentile", "top_k": 3},
}
GROUP = 12  # configurations re-measured together (each its own worker), beside the default one
CHECKPOINTS = (5, 10, 20)  # and the last trial
TARGET = 0.95
CONFIRM_SHARE = 0.9  # the oracle re-measures again the configurations within this share of its best
FLOOR_ONLY = ["steps=5,7,10,28", "cache=none,first-block", "quantization=none,int8-dynamic"]


def reduced_space(args, device: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The pins that leave only `args.free` knobs searched, and every configuration of those knobs (the grid), their
    values narrowed by `args.only` as the searches narrow them; under a floor, the floor's steps range."""
    free = args.free
    with Worker(WorkerConfig(model=args.model, device=device)) as worker:
        info = worker.request(protocol.Describe(), timeout_s=600)
    floor = steps_range(args.steps, args.reference_steps) if args.floor else None
    space = narrow(build_space(info.domains, floor), args.only)
    missing = [name for name in free if name not in space]
    if missing:
        raise SystemExit(f"not searched on this machine and pipeline: {', '.join(missing)}")
    defaults = knobs.defaults()
    parents = [name for name in space if name not in free and knobs.get(name).parent is None]
    pins = {name: defaults[name] for name in parents}
    values = [space[name].values if isinstance(space[name], knobs.Categorical) else None for name in free]
    if None in values:
        raise SystemExit(f"{free[values.index(None)]} is a range here: give it values with --only to enumerate it")
    grid = [dict(zip(free, combo, strict=True)) for combo in itertools.product(*values)]
    return pins, [combo for combo in grid if not knobs.violations({**pins, **combo})]


def floor_options(args) -> dict[str, Any]:
    return {"quality_floor": args.floor, "reference_steps": args.reference_steps} if args.floor else {}


def key_of(settings: dict[str, Any], free: list[str]) -> tuple:
    return tuple(settings.get(name, knobs.defaults()[name]) for name in free)


def oracle(args, pins: dict, grid: list[dict], device: str, folder: Path, console: Console,
           recommended: dict) -> tuple[dict, float, float | None]:
    """Each configuration's images/s (None where it did not run), the grid's trial seconds, and the images/s of the
    `recommended` settings as they are (at their own batch size: the recommendation measures nothing).

    Each configuration is searched alone (one trial: its batch found as in any search), then all of them are
    re-measured interleaved as a search's final re-measurement does, in groups of `GROUP` beside the default
    configuration: a value is its ratio to the default in its group times the default's median over the groups, so
    the machine's drift between groups cancels (measured one search at a time, configurations that differ only in
    noise spread from 15 to 33 images/s). Those within `CONFIRM_SHARE` of the best are re-measured again, together,
    for twice the rounds, and their value pools both: the best of many noisy figures is biased up (the best of 36
    stood 6% above its identical twin, fp32 with 2 CPU threads against fp32 with torch's default of 2), and an
    oracle inflated by its own noise is one no search reaches."""
    chosen, seconds, workload = {}, 0.0, None
    for number, combo in enumerate(grid, 1):
        key = key_of(combo, args.free)
        try:
            outcome = run_search(args.model, SearchOptions(
                budget=args.budget, n_trials=1, steps=args.steps, max_batch=args.max_batch, pinned={**pins, **combo},
                warm_start_recipes=False, top_k=1, rounds=1, out=None, storage=f"sqlite:///{folder}/oracle-{number}.db",
                **floor_options(args)))
        except NothingFits:  # it failed or did not fit: no value, and the searches get none for it either
            chosen[key] = None
            continue
        seconds += TrialRecord.of(finished_trials(outcome.study_name, outcome.storage_url)[0]).trial_seconds
        chosen[key] = outcome.best.settings if outcome.best.measured else None
        workload = outcome.profile.workload
    runs = [(key, settings) for key, settings in chosen.items() if settings]
    if not runs:
        raise SystemExit("no configuration of the grid ran" + (f" and met {args.floor}" if args.floor else ""))
    runs.append(("recommendation", {**knobs.defaults(), **recommended, "steps": args.steps}))
    default = {**knobs.defaults(), **pins, "steps": args.steps, "batch_size": 1}
    config = WorkerConfig(model=args.model, device=device)
    anchors: list[float] = []
    relative = ratios_to_default(runs, default, config, workload, args.oracle_rounds, anchors, console)
    best = max(value for value in relative.values() if value)
    near = [(key, settings) for key, settings in runs if (relative.get(key) or 0) >= CONFIRM_SHARE * best]
    console.print(f"  {len(near)} within {CONFIRM_SHARE:.0%} of the best, again for {2 * args.oracle_rounds} rounds")
    again = ratios_to_default(near, default, config, workload, 2 * args.oracle_rounds, anchors, console)
    for key, value in again.items():
        if value and relative.get(key):
            relative[key] = (relative[key] + 2 * value) / 3  # weighted by rounds
    scale = statistics.median(anchors)
    values = {key: relative[key] * scale if relative.get(key) else None for key in chosen}
    missing = f"no value (missed {args.floor}, or failed)" if args.floor else "did not run"
    for key, value in values.items():
        console.print(f"  {dict(zip(args.free, key, strict=True))}: "
                      + (f"{value:.3g} images/s" if value else missing))
    alone = relative["recommendation"] * scale if relative.get("recommendation") else None
    return values, seconds, alone


def ratios_to_default(runs: list[tuple], default: dict, config: WorkerConfig, workload, rounds: int,
                      anchors: list[float], console: Console) -> dict:
    """Each run's images/s over the default configuration's, re-measured interleaved in groups of `GROUP` beside it;
    the default's own images/s in each group goes to `anchors`."""
    relative = {}
    for start in range(0, len(runs), GROUP):
        group = runs[start:start + GROUP]
        anchor, candidates = Candidate("default", default), [Candidate(str(key), s) for key, s in group]
        console.print(f"  re-measuring configurations {start + 1}-{start + len(group)} of {len(runs)} ...")
        remeasure([anchor, *candidates], config, workload, rounds, 600)
        for (key, _), candidate in zip(group, candidates, strict=True):
            ratio = candidate.vs(anchor)
            relative[key] = ratio.median if ratio is not None else None
        if anchor.measured:
            anchors.append(anchor.images_per_s.median)
    return relative


def finished_trials(study_name: str, storage_url: str) -> list:
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    return sorted(finished(study), key=lambda t: t.number)


def trajectory(trials: list, started_at: float, oracle_values: dict, free: list[str]) -> list[tuple[float, float]]:
    """(seconds since the search started, oracle images/s of the incumbent) after each trial."""
    best_value, incumbent, points = None, None, []
    for trial in trials:
        if feasible(trial) and trial.value is not None and (best_value is None or trial.value > best_value):
            best_value, incumbent = trial.value, key_of(TrialRecord.of(trial).settings, free)
        done = trial.datetime_complete.timestamp() - started_at
        points.append((done, oracle_values.get(incumbent) or 0.0))
    return points


def delivered(trials: list, started_at: float, oracle_values: dict, free: list[str], config: WorkerConfig,
              workload, rounds: int, final: tuple[float, float]) -> list[tuple[float, float]]:
    """(seconds, oracle images/s) of what autotune's search would deliver had it stopped after each trial: its final
    re-measurement of its contenders so far (the top 3 within half the leader's speed), run here, whose time is
    added; after the last trial, `final`, the search's own (seconds, oracle images/s of its choice)."""
    ran, points, chosen = [], [], {}
    for trial in trials[:-1]:
        if feasible(trial) and trial.value is not None:
            ran.append(trial)
        done = trial.datetime_complete.timestamp() - started_at
        contenders = top_candidates(ran, 3, "throughput", fallbacks=False)
        names = tuple(sorted(settings_key(c.settings) for c in contenders))
        if names not in chosen:
            began = time.perf_counter()
            remeasure(contenders, config, workload, rounds, 600)
            timed = [c for c in contenders if c.measured]
            best = max(timed, key=lambda c: c.images_per_s.median) if timed else None
            chosen[names] = (key_of(best.settings, free) if best else None, time.perf_counter() - began)
        key, cost = chosen[names]
        points.append((done + cost, oracle_values.get(key) or 0.0))
    return [*points, final]


def memory_errors(trials: list) -> list[float]:
    """|predicted - measured| / measured peak of each trial that has both."""
    errors = []
    for trial in trials:
        record = TrialRecord.of(trial)
        predicted, measured = record.predicted_peak_bytes, record.peak_memory_bytes
        if predicted and measured:
            errors.append(abs(predicted - measured) / measured)
    return errors


def first_reaching(points: list[tuple[float, float]], target: float) -> tuple[int | None, float | None]:
    for number, (seconds, value) in enumerate(points, 1):
        if value >= target:
            return number, seconds
    return None, None


def median_or_none(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if len(present) == len(values) and present else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="default: builtin:tiny-sd; under a floor, builtin:tiny-flux")
    parser.add_argument("--budget", default="4GB")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, help="the workload's steps (default 8; under a floor 28)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="the searches' own re-measurement rounds")
    parser.add_argument("--oracle-rounds", type=int, default=6,
                        help="the oracle's re-measurement rounds: its figures are what every search is valued at")
    parser.add_argument("--free", nargs="+", help="the knobs searched (default: precision, channels-last, CPU "
                        "threads and fused QKV; under a floor: scheduler, steps, cache and quantization)")
    parser.add_argument("--only", nargs="+", metavar="KNOB=VALUE,VALUE", help="the values of a free knob searched, "
                        "as `autotune search --only` takes them (under a floor, by default: steps=5,7,10,28 "
                        "cache=none,first-block quantization=none,int8-dynamic)")
    parser.add_argument("--floor", help="a quality floor (psnr=30): the space where quality is at stake")
    parser.add_argument("--reference-steps", type=int, help="the floor's reference steps (default: --steps)")
    parser.add_argument("--plot", default="efficiency.html", help="where the best-so-far plot goes (HTML)")
    args = parser.parse_args()
    if args.floor:
        args.model, args.steps = args.model or "builtin:tiny-flux", args.steps or 28
        args.free = args.free or ["scheduler", "steps", "cache", "quantization"]
        args.only = parse_only(args.only or FLOOR_ONLY)
    else:
        args.model, args.steps = args.model or "builtin:tiny-sd", args.steps or 8
        args.free = args.free or ["precision", "channels_last", "cpu_threads", "fuse_qkv"]
        args.only = parse_only(args.only or [])
    args.reference_steps = args.reference_steps or args.steps
    console = Console(width=200)
    hw = probe().hardware
    began = time.perf_counter()
    pins, grid = reduced_space(args, hw.device)
    console.print(f"{len(grid)} configurations of {', '.join(args.free)}; every other knob pinned to its default")

    runs: dict[str, list[dict]] = {name: [] for name in STRATEGIES}
    recommended = recommend(args.model, budget=args.budget).settings
    with tempfile.TemporaryDirectory(prefix="autotune-efficiency-") as folder:
        console.print("the oracle: every configuration searched alone and re-measured ...")
        oracle_values, grid_s, alone = oracle(args, pins, grid, hw.device, Path(folder), console, recommended)
        for seed, (name, options) in itertools.product(range(args.seeds), STRATEGIES.items()):
            console.print(f"  {name}, seed {seed}: {args.trials} trials ...")
            started, study, storage = time.time(), f"{name}-{seed}", f"sqlite:///{folder}/{name}-{seed}.db"
            try:
                outcome = run_search(args.model, SearchOptions(
                    budget=args.budget, n_trials=args.trials, steps=args.steps, max_batch=args.max_batch, pinned=pins,
                    only={knob: values for knob, values in args.only.items() if knob not in pins}, seed=seed,
                    image_seed=0,  # the oracle's images: only the sampler's seed changes
                    rounds=args.rounds, out=None, storage=storage, study_name=study, **floor_options(args),
                    **options))
            except NothingFits as error:  # what it chose missed the floor or the budget when re-measured
                console.print(f"    it delivers nothing: {error}")
                outcome = None
            search_s = time.time() - started
            trials = finished_trials(study, storage)
            split = outcome.time_split if outcome else None
            chosen = (oracle_values.get(key_of(outcome.best.settings, args.free))
                      if outcome and outcome.best.measured else None)
            if name == "autotune":  # what it delivers is its re-measurement's choice, not its best trial
                workload = recorded_spec(optuna.load_study(study_name=study, storage=storage)).workload
                points = delivered(trials, started, oracle_values, args.free, WorkerConfig(model=args.model,
                                   device=hw.device), workload, args.rounds, (search_s, chosen or 0.0))
            else:
                points = trajectory(trials, started, oracle_values, args.free)
            runs[name].append({"points": points, "search_s": search_s,
                               "overhead": 1 - split.share(split.timed_s) if split else None,
                               "memory_errors": memory_errors(trials), "chosen": chosen or 0.0})
    report(args, hw, console, runs, oracle_values, grid_s, alone, time.perf_counter() - began)
    plot(runs, max(v for v in oracle_values.values() if v), Path(args.plot))
    console.print(f"plot of best-so-far against trials and seconds: {args.plot}")


def checkpoints(trials: int) -> list[int]:
    return sorted({c for c in CHECKPOINTS if c <= trials} | {trials})


def report(args, hw, console: Console, runs: dict, oracle_values: dict, grid_s: float,
           alone: float | None, total_s: float) -> None:
    best = max(v for v in oracle_values.values() if v)
    near = sum(1 for v in oracle_values.values() if v and v >= TARGET * best)
    goal = (f"under {args.floor} against a {args.reference_steps}-step reference, on every prompt; "
            f"{sum(v is not None for v in oracle_values.values())} of {len(oracle_values)} configurations meet it"
            if args.floor
            else f"{args.steps} steps")
    console.print(f"\nmachine: {hw.gpu or hw.cpu}, {hw.cpu_cores} cores; {args.model}, {goal}; batch up "
                  f"to {args.max_batch}; {len(oracle_values)} configurations; {args.trials} trials x {args.seeds} "
                  f"seeds; medians over the seeds; bench {total_s / 60:.0f} min")
    console.print(f"oracle (best re-measured, {args.oracle_rounds} rounds): {best:.3g} images/s; {near} of "
                  f"{len(oracle_values)} configurations within {TARGET:.0%} of it; the grid needs all "
                  f"{len(oracle_values)} trials ({grid_s:.0f} s of trials) to know it")
    console.print("recommendation alone (as recommended, measured nothing: batch 1): "
                  + (f"{alone:.3g} images/s, {alone / best:.0%} of the oracle" if alone else "did not run"))
    header = ["search", f"trials to {TARGET:.0%}", f"seconds to {TARGET:.0%}",
              *[f"best/oracle @{c}" for c in checkpoints(args.trials)], "chosen/oracle", "search s", "overhead",
              "memory error median / worst"]
    console.print("| " + " | ".join(header) + " |")
    console.print("|" + "---|" * len(header))
    for name, seeds in runs.items():
        reached = [first_reaching(run["points"], TARGET * best) for run in seeds]
        trials_to, seconds_to = median_or_none([r[0] for r in reached]), median_or_none([r[1] for r in reached])
        at = [statistics.median(run["points"][min(c, len(run["points"])) - 1][1] / best for run in seeds)
              for c in checkpoints(args.trials)]
        errors = [e for run in seeds for e in run["memory_errors"]]
        never = sum(r[0] is None for r in reached)
        overhead = median_or_none([run["overhead"] for run in seeds])  # none where a search delivered nothing
        cells = [name,
                 f"{trials_to:.0f}" if trials_to is not None else f"not reached in {never} of {len(seeds)} seeds",
                 f"{seconds_to:.0f}" if seconds_to is not None else "-",
                 *[f"{value:.0%}" for value in at],
                 f"{statistics.median(run['chosen'] for run in seeds) / best:.0%}",
                 f"{statistics.median(run['search_s'] for run in seeds):.0f}",
                 f"{overhead:.0%}" if overhead is not None else "-",
                 f"{statistics.median(errors):.0%} / {max(errors):.0%}" if errors else "-"]
        console.print("| " + " | ".join(cells) + " |")


def plot(runs: dict, best: float, path: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=2, subplot_titles=("against trials", "against seconds"))
    colors = {"random": "#888888", "tpe": "#1f77b4", "autotune": "#d62728"}
    for name, seeds in runs.items():
        for number, run in enumerate(seeds):
            share = [value / best for _, value in run["points"]]
            common = dict(mode="lines", line=dict(color=colors.get(name), shape="hv"), legendgroup=name,
                          name=name, showlegend=number == 0)
            figure.add_trace(go.Scatter(x=list(range(1, len(share) + 1)), y=share, **common), row=1, col=1)
            figure.add_trace(go.Scatter(x=[s for s, _ in run["points"]], y=share, **{**common, "showlegend": False}),
                             row=1, col=2)
    figure.update_yaxes(title_text="best so far / oracle images/s")
    figure.write_html(path, include_plotlyjs=True)  # inlined: it opens on a machine without a network


if __name__ == "__main__":
    main()
