"""Check the trained tiny Stable Diffusion: does it draw the held-out prompts, and does its quality rise with steps?

    python training/check_tiny_sd.py --model autotune/weights/tiny-sd --judge autotune/weights/judge.safetensors

Loads the pipeline exactly as the project does, draws `autotune.shapes.HELD_OUT_PROMPTS` at 32x32 (fixed seed, CFG),
prints how many the judge reads as their prompt at 50 and at 2 Euler steps, then the PSNR of the worst prompt against
a 200-step Euler reference for each of Euler, DDIM, DPM-Solver++ 2M and UniPC at 4-50 steps. Saves a PNG grid of the
50-step images.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UniPCMultistepScheduler,
)
from PIL import Image
from safetensors.torch import load_file

from autotune import shapes
from autotune.builtin_parts import clip_tokenizer

SCHEDULERS = {"euler": EulerDiscreteScheduler, "ddim": DDIMScheduler, "dpm++2m": DPMSolverMultistepScheduler,
              "unipc": UniPCMultistepScheduler}
STEPS = (4, 8, 12, 20, 30, 50)


def load(model: str) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(model, tokenizer=clip_tokenizer(), safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch.float32)


def draw(pipe: StableDiffusionPipeline, config: dict, scheduler: type, steps: int, guidance: float,
         seed: int) -> torch.Tensor:
    """The held-out prompts drawn with `scheduler` in `steps` steps: N x 3 x 32 x 32 in [0, 1]."""
    pipe.scheduler = scheduler.from_config(config)
    images = pipe(list(shapes.HELD_OUT_PROMPTS), num_inference_steps=steps, guidance_scale=guidance, height=32,
                  width=32, generator=torch.Generator().manual_seed(seed), output_type="pt").images
    return images.float().clamp(0, 1)


def worst_psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    mse = (images - reference).square().flatten(1).mean(1).max().item()
    return 10 * math.log10(1 / max(mse, 1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="autotune/weights/tiny-sd")
    parser.add_argument("--judge", default="autotune/weights/judge.safetensors")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", default="training/tiny-sd-grid.png")
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.time()
    pipe = load(args.model)
    config = dict(pipe.scheduler.config)  # SD's, as saved; each scheduler is built from it
    judge = shapes.Judge()
    judge.load_state_dict(load_file(args.judge))
    prompts = list(shapes.HELD_OUT_PROMPTS)
    print(f"model {args.model}: scheduler {type(pipe.scheduler).__name__} "
          f"(clip_sample {config.get('clip_sample')}), guidance {args.guidance}, seed {args.seed}")

    reference = draw(pipe, config, EulerDiscreteScheduler, 200, args.guidance, args.seed)
    reads_ref = shapes.judge_reads(judge, reference * 2 - 1, prompts)
    results: dict[str, dict[int, float]] = {}
    for name, cls in SCHEDULERS.items():
        results[name] = {}
        for steps in STEPS:
            images = draw(pipe, config, cls, steps, args.guidance, args.seed)
            results[name][steps] = worst_psnr(images, reference)
            if name == "euler" and steps == 50:
                euler50 = images
    # SD 1.5's config makes every scheduler space its timesteps "leading" (DPM-Solver and UniPC then start at t=951
    # at 50 steps, not 981-999 as Euler does): the same table with "linspace" spacing, against its own reference.
    linspace = {**config, "timestep_spacing": "linspace"}
    reference_linspace = draw(pipe, linspace, EulerDiscreteScheduler, 200, args.guidance, args.seed)
    results_linspace = {name: {steps: worst_psnr(draw(pipe, linspace, cls, steps, args.guidance, args.seed),
                                                 reference_linspace) for steps in STEPS}
                        for name, cls in SCHEDULERS.items()}
    reads50 = shapes.judge_reads(judge, euler50 * 2 - 1, prompts)
    two_steps = draw(pipe, config, EulerDiscreteScheduler, 2, args.guidance, args.seed)
    reads2 = shapes.judge_reads(judge, two_steps * 2 - 1, prompts)
    truth = shapes.judge_reads(judge, shapes.render_batch([shapes.parse(p) for p in prompts],
                                                          generator=torch.Generator().manual_seed(0)), prompts)

    print(f"judge on rendered (true) held-out scenes: {sum(truth)}/{len(prompts)}")
    print(f"judge reads at 50 Euler steps: {sum(reads50)}/{len(prompts)}   "
          f"at 2 Euler steps: {sum(reads2)}/{len(prompts)}   at 200 Euler steps: {sum(reads_ref)}/{len(prompts)}")
    for prompt, ok in zip(prompts, reads50, strict=True):
        print(f"  {'ok  ' if ok else 'MISS'} {prompt}")
    for title, table in ((f"saved config (timestep_spacing {config.get('timestep_spacing')!r})", results),
                         ("timestep_spacing 'linspace'", results_linspace)):
        print(f"worst-prompt PSNR (dB) against the 200-step Euler image, {title}:")
        print(f"{'scheduler':<10}" + "".join(f"{s:>8}" for s in STEPS))
        for name, row in table.items():
            print(f"{name:<10}" + "".join(f"{row[s]:8.1f}" for s in STEPS))

    grid = torch.cat([torch.cat(list(euler50), dim=2), torch.cat(list(reference), dim=2)], dim=1)  # 3 x 64 x 32N
    picture = Image.fromarray((grid.permute(1, 2, 0) * 255).round().byte().numpy())
    picture.resize((picture.width * 4, picture.height * 4), Image.NEAREST).save(args.grid)
    print(f"grid (top: 50 Euler steps, bottom: 200-step reference) saved to {args.grid}; {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
