"""The trained built-ins: `builtin:tiny-sd` (Stable Diffusion's architecture and noise schedule) and
`builtin:tiny-flux` (FLUX's, with rectified flow), trained on two CPU cores on the coloured-shape scenes of
`autotune.pipelines.shapes`, so that they draw what a prompt asks and their quality falls with steps, schedulers,
caches and quantization as a real model's does.

Their weights ship in the package (`autotune/pipelines/weights`, float16 safetensors, loaded as float32 as diffusers
loads a checkpoint without `torch_dtype`); `training/` holds the seeded scripts that made them and their logs. Their
tokenizers are built in memory (`builtins.py`). Their default prompts are four of the scenes the training never drew,
each asking for another colour, shape, place and background, and the judge (`shapes.Judge`) can say whether an image
shows its prompt (the `prompt` quality metric).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import FluxPipeline, StableDiffusionPipeline

from autotune.exceptions import UnknownModel

from . import shapes
from .builtins import BUILTIN_PREFIX, clip_tokenizer, named, t5_tokenizer

WEIGHTS = Path(__file__).parent / "weights"
# The T5 encoder was trained on prompts padded to this length, as FluxPipeline pads them (`max_sequence_length`).
TINY_FLUX_SEQUENCE_LENGTH = 64
# The workload's default prompts: held out from training, and differing in every attribute.
PROMPTS: tuple[str, ...] = shapes.HELD_OUT_PROMPTS[:4]
# tiny-sd's default guidance. At SD's 7.5 this small model's guided noise predictions are not smooth enough in time
# for the multistep solvers (PNDM and LMS never converged); unguided, its flow is nearly straight (every prompt
# drawn at 2 steps). At 2 every scheduler converges with steps and a 2-step image is a blur (bench/realism.py).
TINY_SD_GUIDANCE_SCALE = 2.0
# tiny-flux's default guidance: true classifier-free guidance (FluxPipeline's `true_cfg_scale` with a negative prompt,
# here the empty caption it was trained to draw unconditioned), as SD3, Qwen-Image and Wan are run. Unguided it drew
# 6 of the 8 held-out prompts and 7 at 2 steps (a caption nearly fixes its scene, so its flow is nearly straight);
# at 3 it draws all 8 and no 2-step image (bench/realism.py).
TINY_FLUX_TRUE_CFG_SCALE = 3.0
TINY_FLUX_NEGATIVE_PROMPT = ""


@contextlib.contextmanager
def _without_progress_bars() -> Iterator[None]:
    """diffusers' and transformers' loading bars off while a built-in loads, then as they were: a built-in loads
    silently, as one made in code does (a worker's output goes to its log, which may sit on a full disk)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    enabled = [(lib, lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    for lib, _ in enabled:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, was in enabled:
            if was:
                lib.enable_progress_bar()


def tiny_sd() -> StableDiffusionPipeline:
    """The trained tiny Stable Diffusion: a 3.2M-parameter UNet, a CLIP text encoder and a VAE (32x32 images,
    4x8x8 latents), with SD 1.5's noise schedule and SDXL's scheduler (Euler, on diffusers' default "linspace"
    timesteps). Trained by `training/train_tiny_sd.py`."""
    with _without_progress_bars():
        pipe = StableDiffusionPipeline.from_pretrained(
            WEIGHTS / "tiny-sd", tokenizer=clip_tokenizer(), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, dtype=torch.float32)
    return named(BUILTIN_PREFIX + "tiny-sd", pipe)


def tiny_flux() -> FluxPipeline:
    """The trained tiny FLUX: double- and single-stream transformer blocks, CLIP and T5 text encoders, the tiny-sd
    VAE, FLUX.1-dev's flow-matching scheduler; no guidance embedding (as FLUX.1-schnell). Trained by
    `training/train_tiny_flux.py`."""
    if not (WEIGHTS / "tiny-flux" / "model_index.json").is_file():
        raise UnknownModel("builtin:tiny-flux's trained weights are not shipped yet (issue 24: it is still being "
                           "trained); use builtin:tiny-flux-random, FLUX's architecture with random weights")
    with _without_progress_bars():
        pipe = FluxPipeline.from_pretrained(
            WEIGHTS / "tiny-flux", tokenizer=clip_tokenizer(), tokenizer_2=t5_tokenizer(TINY_FLUX_SEQUENCE_LENGTH),
            dtype=torch.float32)
    return named(BUILTIN_PREFIX + "tiny-flux", pipe)
