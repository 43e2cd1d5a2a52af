"""Benchmark: First Block Cache's threshold under a quality floor, calibrated by bisection (what a search does) or
sampled by Optuna's TPE on the float range (what it did before), counted in renders, from one run.

On the trained DiT (`builtin:tiny-flux`), with its default workload, the reference is the default configuration's
images (as a search under a floor with `--reference-steps` equal to the workload's steps). A render is the workload's
prompts drawn once with the cache at a threshold, scored (worst prompt) against the reference; the share of the
transformer blocks' work it skipped is counted by hooks on each block's attention.

Calibration (`autotune.worker.calibration.largest_meeting`) finds the largest threshold that meets the floor in at
most 6 renders. TPE, per seed, maximises the skipped share with the floor as a constraint (`constraints_func`), and is
counted until it has rendered a threshold that meets the floor and skips at least as much as the calibrated one,
up to `--renders` renders.

    python bench/calibration.py
    python bench/calibration.py --floor psnr=35 --seeds 5

This is a benchmark, not a test: it takes minutes; its counts depend only on the weights and the libraries.
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before diffusers loads transformers

from autotune import options
from autotune.quiet import quiet_library_noise  # noqa: E402

quiet_library_noise()

import optuna  # noqa: E402
from realism import block_calls, configured, render  # noqa: E402
from rich.console import Console  # noqa: E402

from autotune import knobs, pipelines  # noqa: E402
from autotune.hardware import probe  # noqa: E402
from autotune.measure import quality  # noqa: E402
from autotune.pipelines.trained import PROMPTS  # noqa: E402
from autotune.worker.calibration import largest_meeting  # noqa: E402

LOW, HIGH = 0.02, 0.3  # the cache_threshold knob's range
console = Console(width=140)


class Renders:
    """Render and score the workload with First Block Cache at any threshold; count every render."""

    def __init__(self, model: str, metric: str):
        hardware = probe().hardware
        pipe = pipelines.load(model)
        builtin = pipelines.find_builtin(model)
        self.workload = builtin.workload(PROMPTS)
        self.steps, self.metric, self.hardware = builtin.steps, metric, hardware
        self.reference = render(pipe, self.workload, self.steps)
        counts, handles = block_calls(pipelines.denoiser(pipe))
        render(pipe, self.workload, self.steps)
        self.full_calls = counts["calls"]
        for handle in handles:
            handle.remove()
        self.cached = configured(pipe, {"cache": "first-block"}, hardware)
        self.count = 0

    def __call__(self, threshold: float) -> tuple[float, float]:
        """(worst prompt's score, share of the blocks' work skipped) at `threshold`."""
        self.count += 1
        knobs.get("cache").apply(self.cached, "first-block", {"cache_threshold": threshold}, self.hardware)
        counts, handles = block_calls(pipelines.denoiser(self.cached))
        images = render(self.cached, self.workload, self.steps)
        for handle in handles:
            handle.remove()
        score = quality.score(images, self.reference, (self.metric,), self.workload.prompts)[self.metric]
        return score, 1 - counts["calls"] / self.full_calls


def tpe_renders(renders: Renders, minimum: float, target_skip: float, seed: int,
                limit: int) -> tuple[int | None, float]:
    """Renders until TPE has drawn a threshold that meets the floor and skips at least `target_skip`; None if not
    within `limit`. Also the best feasible threshold it found."""
    violations: dict[int, float] = {}  # trial number -> how far under the floor (> 0) its threshold rendered
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(
        seed=seed, constraints_func=lambda trial: [violations[trial.number]]))
    for number in range(1, limit + 1):
        trial = study.ask()
        threshold = trial.suggest_float("cache_threshold", LOW, HIGH, log=True)
        score, skipped = renders(threshold)
        violations[trial.number] = minimum - score
        study.tell(trial, skipped)
        if score >= minimum and skipped >= target_skip - 1e-9:
            return number, threshold
    return None, float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-flux")
    parser.add_argument("--floor", default="psnr=30")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--renders", type=int, default=30, help="TPE's limit per seed")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    floor = options.parse_floor(args.floor)
    renders = Renders(args.model, floor.metric)
    console.print(f"{args.model}, {renders.steps} steps, {len(PROMPTS)} prompts, floor {floor} (worst prompt), "
                  f"threshold range {LOW}-{HIGH} (log)")

    tried = []

    def meets(threshold: float) -> bool:
        score, skipped = renders(threshold)
        tried.append((threshold, score, skipped))
        return score >= floor.value

    chosen = largest_meeting(meets, LOW, HIGH, 6)
    score, skipped = next((s, k) for t, s, k in tried if t == chosen)
    console.print("calibration: " + ", ".join(f"{t:.4f} -> {s:.1f}/{k:.0%}" for t, s, k in tried))
    console.print(f"calibration chose {chosen:.4f} in {len(tried)} renders: {floor.metric} {score:.2f}, "
                  f"{skipped:.0%} of the blocks' work skipped")
    counts = []
    for seed in range(args.seeds):
        needed, found = tpe_renders(renders, floor.value, skipped, seed, args.renders)
        counts.append(needed)
        console.print(f"TPE seed {seed}: " + (f"{needed} renders (threshold {found:.4f})" if needed
                                               else f"not within {args.renders} renders"))
    reached = sorted(count if count is not None else args.renders + 1 for count in counts)
    median = statistics.median(reached)
    console.print(f"renders to a threshold that meets the floor and skips as much: calibration {len(tried)}, TPE "
                  f"median {median:g}" + (" (a seed that did not reach it counts as more than the limit)"
                                          if None in counts else "") + f" over {args.seeds} seeds")


if __name__ == "__main__":
    main()
