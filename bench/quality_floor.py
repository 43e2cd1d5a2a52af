"""Benchmark: a search under a quality floor against the default configuration, and a floor only the reference meets.

One run on one machine. First `--floor` (default psnr=35): the search may trade steps, scheduler and precision for
speed as long as every image scores the floor against the 50-step reference; the chosen configuration and the
default one are re-measured interleaved in the same run (the search's own final step), the chosen one's images are
scored again here, in this process, and the ratio is printed. Then `--strict` (default psnr=60): only configurations
that render (almost) exactly the reference pass, so the search must keep the reference's scheduler and steps.

    python bench/quality_floor.py --trials 30

This is a benchmark, not a test: its numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before diffusers loads transformers

from rich.console import Console  # noqa: E402

from autotune import knobs, options, pipelines  # noqa: E402
from autotune.apply import apply_profile  # noqa: E402
from autotune.measure import (
    quality,  # noqa: E402
    timing,
)
from autotune.options import SearchOptions  # noqa: E402
from autotune.tuner.run import run_search  # noqa: E402


def rescore(profile, reference) -> dict[str, list[float]]:
    """The profile's configuration rendered here, in this process, scored against the reference: each prompt's."""
    pipe = apply_profile(pipelines.load(profile.model.id), profile)
    pipe.set_progress_bar_config(disable=True)
    images = timing.render(pipe, profile.workload, knobs.call_kwargs(profile.settings_dict()))
    return quality.score_by_prompt(timing.stack(images, len(profile.workload.prompts)), reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-sd")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--budget", default="4GB")
    parser.add_argument("--floor", default="psnr=35")
    parser.add_argument("--strict", default="psnr=60", help="a floor only the reference meets; none: skip that search")
    parser.add_argument("--strict-trials", type=int, default=12)
    parser.add_argument("--reference-steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--trial-timeout", type=float, default=300.0)
    args = parser.parse_args()
    console = Console()

    with tempfile.TemporaryDirectory(prefix="autotune-bench-") as folder:
        console.print(f"search under {args.floor}, {args.trials} trials ...")
        floor = options.parse_floor(args.floor)
        outcome = run_search(args.model, SearchOptions(
            budget=args.budget, n_trials=args.trials, quality_floor=floor, reference_steps=args.reference_steps,
            rounds=args.rounds, out=Path(folder, "floor.yaml"), trial_timeout_s=args.trial_timeout))
        best, base = outcome.best, outcome.baseline
        by_prompt = rescore(outcome.profile, outcome.reference)
        again = quality.aggregate(by_prompt)
        minimum = outcome.profile.goal.quality_floor.min
        changed = {k: v for k, v in best.settings.items() if v != knobs.get(k).default}
        console.print(f"chosen: {changed}")
        console.print(f"default: {base.images_per_s.median:.2f} images/s (cv {base.images_per_s.cv:.0%}), "
                      f"{floor.metric} {base.quality.get(floor.metric, float('nan')):.4g}")
        console.print(f"chosen:  {best.images_per_s.median:.2f} images/s (cv {best.images_per_s.cv:.0%}), "
                      f"{floor.metric} {best.quality[floor.metric]:.4g} in the search, {again[floor.metric]:.4g} "
                      f"re-scored here, its worst prompt (floor {minimum:.4g}: "
                      f"{'met' if again[floor.metric] >= minimum else 'MISSED'}); each prompt: "
                      + " / ".join(f"{value:.4g}" for value in by_prompt[floor.metric]))
        console.print(f"[bold]speed-up under {args.floor}: {_ratio(outcome.speedup_ratio)}[/bold] the default "
                      "configuration, measured interleaved in the same run")

        if args.strict == "none":
            return
        console.print(f"search under {args.strict}, {args.strict_trials} trials ...")
        strict = run_search(args.model, SearchOptions(
            budget=args.budget, n_trials=args.strict_trials, quality_floor=args.strict,
            reference_steps=args.reference_steps, rounds=1, out=Path(folder, "strict.yaml"),
            trial_timeout_s=args.trial_timeout))
        settings = strict.profile.settings_dict()
        kept = settings["scheduler"] == "default" and settings["steps"] == args.reference_steps
        console.print(f"under {args.strict}: scheduler={settings['scheduler']}, steps={settings['steps']} "
                      f"({'the reference' if kept else 'NOT the reference'}'s), "
                      f"{strict.best.images_per_s.median:.2f} images/s, {_ratio(strict.speedup_ratio)} the default")


def _ratio(ratio) -> str:
    return ratio.show() if ratio is not None else "no ratio to (it failed here)"


if __name__ == "__main__":
    main()
