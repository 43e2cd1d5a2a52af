"""Benchmark: do the built-ins behave like real models? Quality against steps, schedulers, a step cache's threshold,
quantization and fp16, and the prompt judge, from one run.

For each model (by default the trained `builtin:tiny-sd` and `builtin:tiny-flux`, then the random-weight
`builtin:tiny-sd-random` and `builtin:tiny-flux-random` for contrast), with the built-in's own size, rendered the way a
search renders (`autotune.measure.timing.render`: one generator per image, the workload's seeds), every configuration
applied by autotune's own knobs to a fresh copy. The prompts are the eight captions held out of training (the built-ins'
default workload has four of them):

1. the load time of the built-in;
2. the worst prompt's PSNR against a converged reference (the pipeline's own scheduler at `--reference-steps`) for
   each scheduler the scheduler knob offers on the pipeline, at each of `--steps`; whether it rises with steps
   (within 1 dB; not judged for a stochastic sampler, which converges to other images than the deterministic
   reference), and the fewest steps at which each reaches the default configuration's PSNR;
3. on a DiT, First Block Cache at several thresholds: the share of the blocks' work skipped (counted by hooks on
   each block's attention) and the worst prompt's PSNR against the default configuration's images;
4. int8 dynamic quantization (torchao) and fp16, against the default configuration's images;
5. the share of prompts the judge reads as drawn: on the reference, the default configuration and 2-step images.

With `--grid FOLDER`, each model's images (the default configuration's above the reference, a prompt per column)
are saved there as `NAME.png`, four times their size, to look at.

    python bench/realism.py
    python bench/realism.py --models builtin:tiny-sd --steps 4 8 20 50 --grid docs/images
    python bench/realism.py --models builtin:tiny-sd --guidance-scale 1 --timestep-spacing trailing

This is a benchmark, not a test: its figures depend on nothing but the weights and the libraries, yet it takes
minutes; its load times depend on the machine.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before diffusers loads transformers

from autotune.measure import timing
from autotune.quiet import quiet_library_noise  # noqa: E402

quiet_library_noise()

import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from autotune import knobs, pipelines  # noqa: E402
from autotune.apply import apply_settings  # noqa: E402
from autotune.hardware import probe  # noqa: E402
from autotune.measure import quality  # noqa: E402
from autotune.pipelines import denoiser, find_builtin  # noqa: E402
from autotune.pipelines.shapes import HELD_OUT_PROMPTS  # noqa: E402
from autotune.workload import Workload  # noqa: E402

THRESHOLDS = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)
console = Console(width=140)


def render(pipe, workload: Workload, steps: int) -> np.ndarray:
    """Each prompt's image (prompts x H x W x 3 in [0, 1]), as a search renders them."""
    images = timing.render(pipe, workload, {"num_inference_steps": steps})
    return timing.stack(images, len(workload.prompts))


def configured(pipe, settings: dict, hardware) -> object:
    """A fresh copy of `pipe` with autotune's knobs set to `settings` (no fallback: an unavailable value raises)."""
    fresh = copy.deepcopy(pipe)
    apply_settings(fresh, settings, hardware, fallback=False)
    return fresh


def worst_psnr(images: np.ndarray, reference: np.ndarray) -> float:
    return quality.score(images, reference, ("psnr",))["psnr"]


def judged(images: np.ndarray, prompts: list[str]) -> float:
    return quality.score(images, images, ("prompt",), prompts)["prompt"]


def block_calls(net) -> tuple[dict, list]:
    """Count the calls of each transformer block's attention (a block a cache skips never calls it)."""
    counts = {"calls": 0}
    blocks = [*getattr(net, "transformer_blocks", []), *getattr(net, "single_transformer_blocks", [])]

    def count(module, args):
        counts["calls"] += 1

    handles = [block.attn.register_forward_pre_hook(count) for block in blocks]
    return counts, handles


def scheduler_table(pipe, workload, hardware, steps_list, reference, default_psnr) -> None:
    scheduler_knob = knobs.get("scheduler")
    offered = [value for value in scheduler_knob.choices() if not scheduler_knob.unavailable(value, hardware, pipe)]
    table = Table(title="worst prompt's PSNR (dB) against the converged reference, by scheduler and steps")
    table.add_column("scheduler")
    for steps in steps_list:
        table.add_column(f"{steps} steps", justify="right")
    table.add_column("rises with steps (1 dB)")
    table.add_column(f"steps to reach the default's {default_psnr:.1f} dB")
    for value in offered:
        fresh = configured(pipe, {"scheduler": value}, hardware)
        values = [worst_psnr(render(fresh, workload, steps), reference) for steps in steps_list]
        rises = all(later >= earlier - 1.0 for earlier, later in zip(values, values[1:], strict=False))
        # An ancestral or SDE sampler adds fresh noise at each step: it converges to other images than the
        # deterministic reference, so its distance to that reference says nothing of its convergence.
        stochastic = any(word in type(fresh.scheduler).__name__ for word in ("Ancestral", "SDE"))
        reach = next((steps for steps, value_ in zip(steps_list, values, strict=True) if value_ >= default_psnr), None)
        table.add_row(value, *(f"{v:.1f}" for v in values),
                      "stochastic: not judged" if stochastic else "yes" if rises else "NO",
                      str(reach) if reach is not None else f"> {steps_list[-1]}")
    console.print(table)


def cache_table(pipe, workload, hardware, steps, baseline) -> None:
    net = denoiser(pipe)
    counts, handles = block_calls(net)
    render(pipe, workload, steps)
    full = counts["calls"]
    for handle in handles:
        handle.remove()
    table = Table(title=f"First Block Cache at {steps} steps: work skipped and the worst prompt's PSNR against the "
                        "default configuration")
    for column in ("threshold", "blocks' calls skipped", "PSNR (dB)"):
        table.add_column(column, justify="right")
    for threshold in THRESHOLDS:
        fresh = configured(pipe, {"cache": "first-block", "cache_threshold": threshold}, hardware)
        counts, handles = block_calls(denoiser(fresh))
        images = render(fresh, workload, steps)
        table.add_row(f"{threshold:g}", f"{1 - counts['calls'] / full:.0%}", f"{worst_psnr(images, baseline):.1f}")
    console.print(table)


def save_grid(rows: list[np.ndarray], path: Path) -> None:
    """Rows of images (prompts x H x W x 3 in [0, 1]) as one PNG, a prompt per column, four times their size."""
    from PIL import Image

    grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    picture = Image.fromarray((grid * 255).round().astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.resize((picture.width * 4, picture.height * 4), Image.NEAREST).save(path)


def model_report(model: str, args: argparse.Namespace, hardware) -> None:
    steps_list, reference_steps, grid = sorted(args.steps), args.reference_steps, args.grid
    console.rule(model)
    started = time.perf_counter()
    pipe = pipelines.load(model)
    load_s = time.perf_counter() - started
    if args.timestep_spacing:  # every scheduler the knob offers is made from this one's config, so it follows
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config,
                                                          timestep_spacing=args.timestep_spacing)
    builtin = find_builtin(model)
    workload = builtin.workload(HELD_OUT_PROMPTS)
    if args.guidance_scale is not None:
        workload = workload.model_copy(update={"guidance_scale": args.guidance_scale})
    console.print(f"loaded in {load_s:.2f} s; {type(pipe).__name__} with {type(pipe.scheduler).__name__} "
                  f"({pipe.scheduler.config.get('timestep_spacing', 'no')} spacing), {builtin.size}x{builtin.size}, "
                  f"default {builtin.steps} steps, reference {reference_steps} steps, {len(workload.prompts)} prompts, "
                  f"guidance {'the pipeline default' if workload.guidance_scale is None else workload.guidance_scale}"
                  + (f", negative prompt {workload.negative_prompt!r}" if workload.negative_prompt is not None else "")
                  + (f", {workload.call}" if workload.call else ""))
    reference = render(pipe, workload, reference_steps)
    default = render(pipe, workload, builtin.steps)
    default_psnr = worst_psnr(default, reference)
    console.print(f"the default configuration ({builtin.steps} steps) against the reference: worst prompt "
                  f"{default_psnr:.1f} dB")
    if grid is not None:
        save_grid([default, reference], grid / f"{model.removeprefix('builtin:')}.png")
        console.print(f"images (top: {builtin.steps} steps, bottom: the reference) saved to {grid}")
    scheduler_table(pipe, workload, hardware, steps_list, reference, default_psnr)
    if knobs.get("cache").unavailable("first-block", hardware, pipe) is None:
        cache_table(pipe, workload, hardware, builtin.steps, default)
    for label, settings in (("int8 dynamic quantization", {"quantization": "int8-dynamic"}),
                            ("fp16", {"precision": "fp16"})):
        reason = next((knobs.get(name).unavailable(value, hardware, pipe) for name, value in settings.items()), None)
        if reason:
            console.print(f"{label}: unavailable here ({reason})")
            continue
        images = render(configured(pipe, settings, hardware), workload, builtin.steps)
        console.print(f"{label}: worst prompt {worst_psnr(images, default):.1f} dB against the default configuration")
    two = render(pipe, workload, 2)
    console.print(f"judge: reads {judged(reference, workload.prompts):.0%} of the reference images as their prompt, "
                  f"{judged(default, workload.prompts):.0%} at the default {builtin.steps} steps, "
                  f"{judged(two, workload.prompts):.0%} at 2 steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["builtin:tiny-sd", "builtin:tiny-flux",
                                                         "builtin:tiny-sd-random", "builtin:tiny-flux-random"])
    parser.add_argument("--steps", nargs="+", type=int, default=[4, 8, 12, 20, 30, 50])
    parser.add_argument("--reference-steps", type=int, default=200)
    parser.add_argument("--grid", type=Path, help="a folder to save each model's images in")
    parser.add_argument("--guidance-scale", type=float,
                        help="every render's guidance scale (default: the built-in's own)")
    parser.add_argument("--timestep-spacing", choices=["leading", "trailing", "linspace"],
                        help="the model's scheduler's timestep spacing, and so every offered scheduler's (default: "
                             "the model's own)")
    args = parser.parse_args()
    torch.manual_seed(0)
    diffusers.utils.logging.set_verbosity_error()  # the attention knob's "experimental" notice, once per configuration
    hardware = probe().hardware
    console.print(f"{hardware.describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    for model in args.models:
        model_report(model, args, hardware)


if __name__ == "__main__":
    main()
