"""What the GPU checks share: the built-in pipeline, fresh copies of it, one rendered call.

`builtin:sd15-arch` is built once per check process on the CPU (random init of a 1B-parameter pipeline takes
seconds) and deep-copied for every configuration that cannot be undone in place (offload hooks, compile), so no check
pays for the build twice. `builtin:flux-arch` (16.9 B parameters, built on the GPU) is swept only with --with-flux.
NVML's figures are in `nvml`, which imports nothing heavy.
"""

from __future__ import annotations

import copy
import gc
import time
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline

from autotune import pipelines
from autotune.hardware import Hardware, probe
from autotune.measure.timing import image_problem

from .core import DIT, SD15, Options

SIZE = 512
PROMPT = "a photograph of an astronaut riding a horse"


def models(options: Options) -> list[str]:
    """The built-ins to sweep: SD 1.5's architecture; the DiT one only when asked (--with-flux): in fp32 it takes
    62.8 GiB of the GPU, and a second copy of it does not fit."""
    return [SD15] + ([DIT] if options.with_flux and DIT in pipelines.builtin_names() else [])


def hardware() -> Hardware:
    return probe("cuda").hardware


def template(model: str = SD15) -> DiffusionPipeline:
    """The pipeline as loaded, on the CPU in fp32: copy it with `fresh`, never use it directly."""
    return pipelines.load(model)


def fresh(pipe: DiffusionPipeline) -> DiffusionPipeline:
    return copy.deepcopy(pipe)


def render(pipe: DiffusionPipeline, steps: int = 2, batch: int = 1, size: int = SIZE, seed: int = 0,
           **kwargs: Any) -> tuple[np.ndarray, float]:
    """One pipeline call, synchronized: the images (floats in [0, 1]) and its seconds."""
    generator = torch.Generator("cpu").manual_seed(seed)
    cuda = torch.cuda.is_available()  # the wiring tests render the tiny pipeline on a CPU
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    images = pipe(PROMPT, height=size, width=size, num_inference_steps=steps, num_images_per_prompt=batch,
                  generator=generator, output_type="np", **kwargs).images
    if cuda:
        torch.cuda.synchronize()
    return images, time.perf_counter() - started


def problem(images: np.ndarray | None) -> str | None:
    """Why the images are unusable (NaN, black, constant), or None: autotune's own guard."""
    return image_problem(images)


def release() -> None:
    """Give back what the deleted pipelines held, so the next configuration's peak is its own."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def gib(value: float | None) -> float | None:
    return None if value is None else round(value / 2**30, 3)
