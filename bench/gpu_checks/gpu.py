"""What the GPU checks share: the built-in pipeline, fresh copies of it, one rendered call, NVML's memory figures.

Built once on the CPU (random init of a 1B-parameter pipeline takes seconds), the pipeline is deep-copied for every
configuration that cannot be undone in place (offload hooks, compile), so no check pays for the build twice.
"""

from __future__ import annotations

import copy
import gc
import os
import time
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline

from autotune import pipelines
from autotune.hardware import Hardware, probe
from autotune.measure import image_problem

SD15 = "builtin:sd15-arch"
DIT = "builtin:flux-arch"  # the modern-pipelines issue's DiT built-in, checked once autotune.pipelines has it
SIZE = 512
PROMPT = "a photograph of an astronaut riding a horse"


def models() -> list[str]:
    """The built-ins to check: SD 1.5's architecture, and the DiT one when it exists."""
    return [SD15] + ([DIT] if DIT in pipelines.builtin_names() else [])


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
    torch.cuda.synchronize()
    started = time.perf_counter()
    images = pipe(PROMPT, height=size, width=size, num_inference_steps=steps, num_images_per_prompt=batch,
                  generator=generator, output_type="np", **kwargs).images
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


def _nvml_handle():
    import pynvml

    pynvml.nvmlInit()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return pynvml, pynvml.nvmlDeviceGetHandleByIndex(int(visible) if visible.isdigit() else 0)


def nvml_process_bytes() -> int | None:
    """NVML's figure for this process on the GPU; None where NVML is missing or hides it (many containers do)."""
    try:
        pynvml, handle = _nvml_handle()
        try:
            for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid == os.getpid() and process.usedGpuMemory:
                    return int(process.usedGpuMemory)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None
    return None


def nvml_used_bytes() -> int | None:
    """The whole GPU's used memory as NVML sees it (a baseline taken before this process touches CUDA)."""
    try:
        pynvml, handle = _nvml_handle()
        try:
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def gib(value: float | None) -> float | None:
    return None if value is None else round(value / 2**30, 3)
