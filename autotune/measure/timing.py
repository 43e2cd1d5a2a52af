"""Measuring a configured pipeline: warm-up, repeated timed calls until the spread is small, peak memory, images;
and rendering the workload's prompts (a trial's quality renders, the reference).

Timing covers the whole pipeline call (text encoding, denoising, VAE decode). Warm-up (compile, cuDNN autotuning)
is timed separately and reported, not hidden. This module knows nothing of processes or Optuna.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from diffusers import DiffusionPipeline

from autotune.hardware import nvml_device, nvml_session
from autotune.workload import Workload

from .figures import Stat
from .quality import DEFAULT_METRICS, score


@dataclass(frozen=True)
class Repeats:
    """How long to keep timing: until the coefficient of variation is under `target_cv`, within the caps.

    `max_runs=0` only warms up: the pipeline is built and its warm-up timed, with no timed call after it.
    `warmup_steps` shortens each warm-up call to that many denoising steps: every step runs the same shapes, so one
    step primes the allocator and the kernels' caches as well as all of them do, at a fraction of the cost. Leave it
    None where later steps take other paths the warm-up must reach (compiled code with a step cache's branches).
    """

    warmup: int = 1
    warmup_steps: int | None = None
    min_runs: int = 3
    max_runs: int = 10
    max_seconds: float = 20.0
    target_cv: float = 0.05


@dataclass
class Measurement:
    """What `measure` saw. A number that was not measured is None: no warm-up call, no timed call, no memory
    reading."""

    batch_size: int
    latency_s: list[float] = field(default_factory=list)
    warmup_s: float | None = None  # the warm-up calls only, never a timed one
    peak_memory_bytes: int | None = None
    image_problem: str | None = None
    images: np.ndarray | None = None
    # The first image of the latest call for each prompt. With per-image seeding it is the same image at any batch
    # size (one generator per image), so it is scored for quality.
    first_images: dict[int, np.ndarray] = field(default_factory=dict)
    frames: int | None = None  # frames per output of a video pipeline; None for images

    @property
    def latency(self) -> Stat | None:
        return summarize(self.latency_s)

    @property
    def images_per_s(self) -> Stat | None:
        return summarize([self.batch_size / seconds for seconds in self.latency_s])

    @property
    def frames_per_s(self) -> Stat | None:
        return None if self.frames is None else summarize([self.batch_size * self.frames / seconds
                                                           for seconds in self.latency_s])

    def summary(self) -> dict[str, Any]:
        latency, rate = self.latency, self.images_per_s
        return {
            "batch_size": self.batch_size,
            "images_per_s": rate.model_dump() if rate else None,
            "latency_s": latency.model_dump() if latency else None,
            "seconds_per_image": latency.median / self.batch_size if latency else None,
            "warmup_s": self.warmup_s,
            "peak_memory_bytes": self.peak_memory_bytes,
            "image_problem": self.image_problem,
        }


def measure(
    pipe: DiffusionPipeline,
    workload: Workload,
    call_kwargs: dict[str, Any],
    repeats: Repeats = Repeats(),
    keep_images: bool = False,
) -> Measurement:
    """Time `pipe` on `workload` with `call_kwargs` (steps, batch...): warm-up, then repeat until stable.

    >>> workload = Workload(height=64, width=64, prompts=["a cat"])
    >>> measure(pipe, workload, {"num_inference_steps": 20}).images_per_s.median  # doctest: +SKIP
    """
    cuda = _on_cuda(pipe)
    memory = PeakMemory(cuda)
    result = Measurement(batch_size=int(call_kwargs.get("num_images_per_prompt", 1)))
    images = None
    if repeats.warmup:
        started = time.perf_counter()
        # A warm-up-only measurement checks its images, so those keep every step.
        warmup_kwargs = _shortened(call_kwargs, repeats.warmup_steps if repeats.max_runs else None)
        for index in range(repeats.warmup):
            images = render_one(pipe, workload, warmup_kwargs, index, cuda)
        result.warmup_s = time.perf_counter() - started
    started = time.perf_counter()
    while len(result.latency_s) < repeats.max_runs:
        index = len(result.latency_s)
        seconds, images = _timed_call(pipe, workload, call_kwargs, index, cuda)
        result.latency_s.append(seconds)
        result.first_images[index % len(workload.prompts)] = images[0]
        if _stable(result.latency_s, repeats) or time.perf_counter() - started > repeats.max_seconds:
            if len(result.latency_s) >= min(2, repeats.min_runs):
                break
    result.peak_memory_bytes = memory.peak()
    result.image_problem = image_problem(images)
    result.frames = frames_per_output(images)
    if keep_images:
        result.images = images
    return result


def _shortened(call_kwargs: dict[str, Any], steps: int | None) -> dict[str, Any]:
    current = call_kwargs.get("num_inference_steps")
    if steps is None or not isinstance(current, int) or current <= steps:
        return call_kwargs
    return {**call_kwargs, "num_inference_steps": steps}


def _stable(latencies: list[float], repeats: Repeats) -> bool:
    stat = summarize(latencies)
    return stat is not None and stat.n >= repeats.min_runs and stat.cv <= repeats.target_cv


def summarize(values: list[float]) -> Stat | None:
    """Median, coefficient of variation and count of repeated measurements; None when there are none."""
    if not values:
        return None
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) / mean if len(values) > 1 and mean > 0 else 0.0
    return Stat(median=statistics.median(values), cv=spread, n=len(values))


def _on_cuda(pipe: DiffusionPipeline) -> bool:
    return torch.cuda.is_available() and pipe._execution_device.type == "cuda"


def render_one(pipe: DiffusionPipeline, workload: Workload, call_kwargs: dict, index: int, cuda: bool) -> np.ndarray:
    """One pipeline call of the workload: its `index`-th prompt with that prompt's seed; the images as arrays
    (batch x H x W x 3), or a video pipeline's clips (batch x frames x H x W x 3).

    The call arguments are the workload's (`Workload.call_kwargs`: guidance and negative prompt only when it sets
    them, else the pipeline's own defaults apply) and the generator is the one `Profile.call_kwargs(seed=...)` gives
    an app, so what is measured is what ships.
    """
    prompt = workload.prompts[index % len(workload.prompts)]
    batch = int(call_kwargs.get("num_images_per_prompt", 1))
    output = pipe(prompt, generator=workload.generators(workload.prompt_seed(index), batch), output_type="np",
                  **workload.call_kwargs(call_kwargs))
    if cuda:
        torch.cuda.synchronize()
    return np.asarray(output.frames if workload.output == "video" else output.images)


def render(pipe: DiffusionPipeline, workload: Workload, call_kwargs: dict[str, Any],
           prompts: list[int] | None = None) -> dict[int, np.ndarray]:
    """The first image of each prompt's call, rendered with that prompt's seed: prompt index -> HxWx3 floats (a
    video pipeline's first clip: frames x H x W x 3)."""
    indices = range(len(workload.prompts)) if prompts is None else prompts
    return {index: render_one(pipe, workload, call_kwargs, index, cuda=False)[0] for index in indices}


def stack(images_by_prompt: dict[int, np.ndarray], n_prompts: int) -> np.ndarray:
    return np.stack([np.asarray(images_by_prompt[index], dtype=np.float32) for index in range(n_prompts)])


def render_missing(pipe: DiffusionPipeline, workload: Workload, call_kwargs: dict[str, Any],
                   rendered: dict[int, np.ndarray]) -> np.ndarray:
    """All prompts' images: those already `rendered` (a trial's timed calls), the others rendered now."""
    missing = [index for index in range(len(workload.prompts)) if index not in rendered]
    return stack({**rendered, **render(pipe, workload, call_kwargs, missing)}, len(workload.prompts))


def render_reference(pipe: DiffusionPipeline, workload: Workload, steps: int,
                     metrics: tuple[str, ...] = DEFAULT_METRICS) -> tuple[np.ndarray, dict[str, float]]:
    """The reference images of `workload` at `steps`, rendered twice: the second scored against the first is the
    noise floor, what the same configuration varies by here."""
    kwargs = {"num_inference_steps": steps}
    first = stack(render(pipe, workload, kwargs), len(workload.prompts))
    second = stack(render(pipe, workload, kwargs), len(workload.prompts))
    problem = image_problem(first)
    if problem:
        raise RuntimeError(f"the reference configuration renders unusable images ({problem})")
    return first, score(second, first, metrics, workload.prompts)


def _timed_call(pipe, workload, call_kwargs, index, cuda) -> tuple[float, np.ndarray]:
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    images = render_one(pipe, workload, call_kwargs, index, cuda)
    return time.perf_counter() - started, images


def frames_per_output(images: np.ndarray | None) -> int | None:
    """The frames of each clip in a video pipeline's output (batch x frames x H x W x 3); None for images."""
    return int(images.shape[1]) if images is not None and images.ndim == 5 else None


def image_problem(images: np.ndarray | None) -> str | None:
    """Why these images are unusable (NaN, all black, constant), or None when they look like images."""
    if images is None or images.size == 0:
        return "no images"
    if not np.isfinite(images).all():
        return "NaN or infinite pixels"
    if float(images.max()) <= 1e-3:
        return "all-black images"
    if any(float(image.std()) < 1e-4 for image in images):
        return "constant images"
    return None


class PeakMemory:
    """The process's peak memory from now on: on CUDA, the allocator's reserved peak plus the CUDA context (checked
    against NVML's per-process figure); on CPU, the peak resident set size."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            _reset_peak_rss()

    def peak(self) -> int | None:
        """The peak in bytes; None when nothing could be read (no allocation seen and no NVML figure)."""
        if not self.cuda:
            return _peak_rss()
        reserved_peak = torch.cuda.max_memory_reserved()
        if not reserved_peak:
            return _nvml_process_bytes()
        process_now = _nvml_process_bytes()
        if process_now is None:
            return int(reserved_peak + _context_from_device_memory())
        # What NVML sees beyond the allocator's pool is the CUDA context and library workspaces.
        context = max(0, process_now - torch.cuda.memory_reserved())
        return int(max(reserved_peak + context, process_now))


# The smallest reading yet of what this process's device holds beyond torch's pool (`_context_from_device_memory`).
_context_seen: list[int] = []


def cuda_context_bytes() -> int:
    """What this process holds on its CUDA device beyond torch's caching allocator: the context and library
    workspaces (cuBLAS, cuDNN), typically 0.3-0.6 GB. NVML's per-process figure tells it; where containers hide that,
    the device's used memory tells an upper bound (`_context_from_device_memory`)."""
    process_now = _nvml_process_bytes()
    if process_now is None:
        return _context_from_device_memory()
    return max(0, process_now - torch.cuda.memory_reserved())


def _context_from_device_memory() -> int:
    """The device's used memory (`torch.cuda.mem_get_info`) less torch's pool: other processes on the device count
    too, so the smallest reading this process has seen is kept."""
    free, total = torch.cuda.mem_get_info()
    reading = max(0, total - free - torch.cuda.memory_reserved())
    _context_seen[:] = [min([reading, *_context_seen])]
    return _context_seen[0]


def budget_fraction(budget_bytes: int) -> float:
    """The share of torch's view of the device (`set_per_process_memory_fraction` applies it to torch's total, which
    is less than NVML's) that leaves `budget_bytes` for the whole process, the CUDA context included: a configuration
    whose pool fits but whose pool and context do not fails here, fast, instead of running to be rejected."""
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    return max(0.0, min(1.0, (budget_bytes - cuda_context_bytes()) / total))


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets the kernel's high-water mark (VmHWM) for this process, so a worker that serves
    # several trials reports each trial's own peak.
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass


def _peak_rss() -> int:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(psutil.Process().memory_info().rss)


def _nvml_process_bytes() -> int | None:
    """What NVML says this process holds on torch's current device; None when NVML cannot tell."""
    with nvml_session() as nvml:
        if nvml is None:
            return None
        try:
            handle = nvml_device(nvml, torch.cuda.current_device())
            for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid == os.getpid() and process.usedGpuMemory:
                    return int(process.usedGpuMemory)
        except Exception:  # containers often hide per-process data
            return None
    return None
