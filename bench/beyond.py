"""Benchmark: autotune under a quality floor against the published hand recipes for FLUX, from one run.

The hand recipes are the settings their authors published for FLUX.1-dev (First Block Cache from ParaAttention, fp8 /
int8 dynamic quantization, fused QKV and compile from diffusers-torchao and flux-fast), restricted to what runs here:
fp8 needs a GPU of compute capability 8.9, so a CPU runs the int8 kind; a value this machine cannot take is shown
with its reason, never replaced. Each technique is also timed alone, so a technique that does not pay here (a
cache's hooks costing more than the blocks they skip) shows as such.

autotune searches under `--floor` with the reference at the workload's own steps, so PSNR is against the default
configuration's images. Then every configuration (default, recipes, techniques alone, autotune's choice) is timed in
its own warmed-up worker, interleaved round-robin, and scored against the same reference; autotune's choice and the
fastest hand recipe that meets the floor are also re-rendered and re-scored in this process, on every prompt (the
worst prompt's score is printed). Ratios are to the default configuration, measured in the same rounds.

    python bench/beyond.py                                                         # builtin:tiny-flux, CPU
    python bench/beyond.py --model builtin:flux-arch --size 1024 --steps 28        # on a GPU

This is a benchmark, not a test: its numbers depend on the machine and its load (run it alone).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before diffusers loads transformers

from autotune.measure import timing
from autotune.quiet import quiet_library_noise  # noqa: E402

quiet_library_noise()  # torchao's import messages, before diffusers imports it

from rich.console import Console  # noqa: E402

from autotune import knobs, pipelines  # noqa: E402
from autotune.apply import apply_settings  # noqa: E402
from autotune.compare.candidates import Candidate  # noqa: E402
from autotune.compare.remeasure import remeasure  # noqa: E402
from autotune.compare.scoring import Scoring  # noqa: E402
from autotune.hardware import Hardware, probe  # noqa: E402
from autotune.measure import quality  # noqa: E402
from autotune.options import SearchOptions  # noqa: E402
from autotune.tuner.run import run_search  # noqa: E402
from autotune.worker import protocol  # noqa: E402
from autotune.worker.process import Worker, WorkerConfig  # noqa: E402

PARA = "ParaAttention (FLUX.1-dev, L20)"
TORCHAO = "diffusers-torchao (FLUX.1-dev, H100)"
FLUX_FAST = "flux-fast / diffusers-torchao"


def hand_recipes(hw: Hardware) -> dict[str, tuple[str, dict]]:
    """Name -> (source, settings) of each published recipe, with the compile mode and quantization kind that this
    hardware has (fp8 dynamic on a GPU of compute capability 8.9 or newer, else int8 dynamic)."""
    mode = "max-autotune-no-cudagraphs" if hw.device == "cuda" else "default"
    fp8 = hw.device == "cuda" and hw.capability_tuple >= (8, 9)
    dynamic = "fp8-dynamic" if fp8 else "int8-dynamic"
    return {
        "FBCache 0.08 + compile": (PARA, {"precision": "bf16", "cache": "first-block", "cache_threshold": 0.08,
                                          "compile": mode}),
        f"FBCache 0.12 + {dynamic.split('-')[0]} dynamic quant + compile": (
            PARA, {"precision": "bf16", "cache": "first-block", "cache_threshold": 0.12, "quantization": dynamic,
                   "compile": mode}),
        "bf16 + fused QKV + channels-last + compile": (FLUX_FAST, {"precision": "bf16", "fuse_qkv": True,
                                                                   "channels_last": True, "compile": mode}),
        "int8 dynamic quant + compile": (TORCHAO, {"precision": "bf16", "quantization": "int8-dynamic",
                                                   "compile": mode}),
    }


def techniques_alone(hw: Hardware) -> dict[str, tuple[str, dict]]:
    mode = "max-autotune-no-cudagraphs" if hw.device == "cuda" else "default"
    return {
        "bf16 alone": ("technique", {"precision": "bf16"}),
        "FBCache 0.08 alone": ("technique", {"cache": "first-block", "cache_threshold": 0.08}),
        "int8 dynamic quant alone": ("technique", {"quantization": "int8-dynamic"}),
        "compile alone": ("technique", {"compile": mode}),
    }


def why_not(settings: dict, hw: Hardware, domains: dict) -> str | None:
    """Why this machine cannot run `settings` (a value unavailable here or on the model, as a worker described its
    domains; a broken rule); None when it can."""
    for name, value in settings.items():
        if name not in knobs.KNOBS:
            return f"this autotune has no {name} knob"
        reason = knobs.get(name).unavailable(value, hw)
        if reason is None and name in domains and value not in domains[name]:
            reason = "not offered for this model"
        if reason is not None:
            return f"{name}={value}: {reason}"
    broken = knobs.violations(settings)
    return "; ".join(broken) if broken else None


def rescore(model: str, settings: dict, workload, reference, hw: Hardware) -> dict[str, float]:
    """The configuration rendered here, in this process, scored against the reference."""
    pipe = pipelines.load(model, knobs.load_kwargs(settings).get("dtype"))
    apply_settings(pipe, settings, hw, fallback=False)
    pipe.set_progress_bar_config(disable=True)
    images = timing.render(pipe, workload, knobs.call_kwargs(settings))
    return quality.score(timing.stack(images, len(workload.prompts)), reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-flux")
    parser.add_argument("--size", type=int, default=None, help="image side (default: the model's own)")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--floor", default="psnr=30")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--budget", default=None)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--trial-timeout", type=float, default=600.0)
    args = parser.parse_args()
    console = Console(width=240)  # the table is Markdown: one line per row
    hw = probe().hardware
    # The model's knob domains from a worker: the driver holds no copy of it (flux-arch is 34 GB) while workers run.
    with Worker(WorkerConfig(model=args.model, device=hw.device)) as worker:
        domains = worker.request(protocol.Describe(), timeout_s=args.trial_timeout).domains
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="autotune-beyond-") as folder:
        console.print(f"autotune: searching {args.model} under {args.floor}, {args.trials} trials ...")
        options = SearchOptions(budget=args.budget, n_trials=args.trials, height=args.size, width=args.size,
                                steps=args.steps, reference_steps=args.steps, quality_floor=args.floor, rounds=1,
                                top_k=1, out=Path(folder, "beyond.yaml"), trial_timeout_s=args.trial_timeout)
        outcome = run_search(args.model, options)
        search_s = time.perf_counter() - started
        workload, floor = outcome.profile.workload, outcome.profile.goal.quality_floor
        base = {**knobs.defaults(), "steps": args.steps}
        rows: list[tuple[str, str, dict]] = [("default (as loaded)", "-", base)]
        skipped: list[tuple[str, str]] = []
        for name, (source, recipe) in {**hand_recipes(hw), **techniques_alone(hw)}.items():
            settings = {**base, **recipe}
            reason = why_not(recipe, hw, domains)
            if reason is None:
                rows.append((name, source, settings))
            else:
                skipped.append((name, reason))
        chosen = {**base, **outcome.best.settings}
        rows.append(("autotune", f"search, {outcome.trials} trials", chosen))

        console.print(f"timing {len(rows)} configurations interleaved, {args.rounds} rounds ...")
        candidates = [Candidate(name, settings) for name, _, settings in rows]
        scoring = Scoring(path=Path(folder), reference=outcome.reference, noise_floor={}, metrics=("psnr", "ssim"),
                          metric=floor.metric, minimum=floor.min, floor_spec=None, reference_steps=args.steps)
        remeasure(candidates, WorkerConfig(model=args.model, device=hw.device), workload, args.rounds,
                  args.trial_timeout, scoring=scoring)
        fastest = fastest_recipe(rows, candidates, floor)
        again = {name: rescore(args.model, settings, workload, outcome.reference, hw)
                 for name, settings in [("autotune", chosen), *([fastest[:2]] if fastest else [])]}

    default = candidates[0]
    print_table(console, rows, candidates, default, floor)
    for name, reason in skipped:
        console.print(f"not run here: {name}: {reason}")
    changed = knobs.show_changed({k: v for k, v in chosen.items() if k != "steps"})
    console.print(f"autotune chose {changed}, steps {chosen.get('steps')}")
    for name, scores in again.items():
        console.print(f"{name}, re-rendered and re-scored in this process: worst prompt's {floor.metric} "
                      f"{scores.get(floor.metric, float('nan')):.2f} "
                      f"({'meets' if quality.meets(scores, floor.metric, floor.min) else 'MISSES'} {args.floor})")
    summary(console, candidates[-1], fastest, floor)
    console.print(f"machine: {hw.gpu or hw.cpu}, {hw.cpu_cores} cores; search {search_s:.0f} s, "
                  f"all {time.perf_counter() - started:.0f} s")


def print_table(console: Console, rows, candidates, default: Candidate, floor) -> None:
    console.print(f"\n| configuration | source | images/s (cv) | x default | PSNR | SSIM | meets {floor.metric} >= "
                  f"{floor.min:g} |")
    console.print("|---|---|---|---|---|---|---|")
    for (name, source, _), candidate in zip(rows, candidates, strict=True):
        if not candidate.measured:
            console.print(f"| {name} | {source} | failed: {candidate.failure} | | | | |")
            continue
        speed = candidate.images_per_s
        ratio = candidate.shown_vs(default, missing="n/a (default not timed)")
        scores = candidate.quality
        met = "yes" if quality.meets(scores, floor.metric, floor.min) else "no"
        console.print(f"| {name} | {source} | {speed.median:.3g} ({speed.cv:.0%}) | {ratio} | "
                      f"{scores.get('psnr', float('nan')):.1f} | {scores.get('ssim', float('nan')):.3f} | {met} |")


def fastest_recipe(rows, candidates, floor) -> tuple[str, dict, Candidate] | None:
    """The published recipe that met the floor in the re-measurement and rendered the most images/s: its name,
    settings and candidate; None when none met it."""
    meeting = [(name, settings, c) for (name, source, settings), c in zip(rows, candidates, strict=True)
               if source not in ("-", "technique") and name != "autotune" and c.measured
               and quality.meets(c.quality, floor.metric, floor.min)]
    return max(meeting, key=lambda found: found[2].images_per_s.median, default=None)


def summary(console: Console, ours: Candidate, fastest: tuple[str, dict, Candidate] | None, floor) -> None:
    if not ours.measured:
        console.print(f"[bold]autotune's choice failed in the re-measurement: {ours.failure}[/bold]")
        return
    if fastest is None:
        console.print("[bold]no hand recipe meets the floor here; autotune's choice "
                      f"{'meets' if quality.meets(ours.quality, floor.metric, floor.min) else 'misses'} it[/bold]")
        return
    name, _, recipe = fastest
    console.print(f"[bold]autotune / fastest hand recipe that meets the floor ({name}): "
                  f"{ours.vs(recipe).show()}[/bold] (95% bootstrap interval of the ratio of medians)")


if __name__ == "__main__":
    main()
