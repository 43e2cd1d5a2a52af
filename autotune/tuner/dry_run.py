"""What a search would do, told before any weight is loaded: `autotune search --dry-run`.

The model is read on the meta device (`pipelines.load_empty`): its classes, the knobs available for it here and why
the others are not, the recommended first trial with its predicted peak, the size of the space, and an estimate of
a trial's time from the model's FLOPs (counted by torch's `FlopCounterMode` on the meta device) and this device's
measured matmul rate. No worker starts, no study is opened, nothing is written.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from autotune import knobs, pipelines
from autotune.hardware import Hardware, probe
from autotune.measure.memory_facts import facts_of
from autotune.options import DEFAULT_REFERENCE_STEPS
from autotune.recommendation import Recommendation, recommend_settings
from autotune.units import format_size, parse_size

from .space import build_space, narrow, steps_range


@dataclass
class DryRun:
    model: str
    pipeline: str
    denoiser: str
    hardware: Hardware
    size: tuple[int, int]
    steps: int | None
    budget_bytes: int
    availability: list[dict[str, Any]]
    recommendation: Recommendation
    space: dict[str, knobs.Domain]
    image_flops: float | None  # one image's text encoding and denoising, guidance included; None: not countable
    device_flops_per_s: float | None  # this device's matmul rate, measured

    @property
    def configurations(self) -> int | None:
        """How many configurations the space holds at most (options count under every parent value); None when a
        knob takes a continuous range."""
        domains = list(self.space.values())
        if any(isinstance(domain, knobs.FloatRange) for domain in domains):
            return None
        return math.prod(len(domain) for domain in domains)

    def seconds_per_image(self) -> float | None:
        """A lower bound: the FLOPs at this device's matmul rate (a whole call also decodes, and rarely runs at it)."""
        if self.image_flops is None or not self.device_flops_per_s:
            return None
        return self.image_flops / self.device_flops_per_s

    def lines(self) -> list[str]:
        available = [row for row in self.availability if row["available"]]
        refused = [row for row in self.availability if not row["available"]]
        height, width = self.size
        count = self.configurations
        shown = knobs.show_changed(self.recommendation.settings)
        lines = [
            f"model {self.model}: {self.pipeline}, denoiser {self.denoiser} (read without its weights)",
            f"machine: {self.hardware.describe()}; budget {format_size(self.budget_bytes)}",
            f"workload: {width}x{height}, {self.steps or 'the pipeline default'} steps",
            f"knob values available here: {len(available)} of {len(self.availability)}",
            *(f"  not here: {row['knob']}={knobs.show(row['value'])}: {row['reason']}" for row in refused),
            f"first trial (the recommendation): {shown}"
            + (f"; predicted peak {format_size(self.recommendation.predicted_peak_bytes)} at batch 1, before any "
               "trial calibrates the memory model" if self.recommendation.predicted_peak_bytes else ""),
            f"space: {len(self.space)} knobs searched ({', '.join(self.space)}), "
            + (f"at most {count} configurations" if count is not None else "with a continuous range")
            + ", each trial finding its batch",
        ]
        per_image = self.seconds_per_image()
        if per_image is None:
            lines.append("estimate: none (this pipeline's FLOPs could not be counted without its weights)")
        else:
            lines.append(f"estimate: {self.image_flops / 1e12:.3g} TFLOP per image; at this device's measured "
                         f"matmul rate ({self.device_flops_per_s / 1e12:.3g} TFLOP/s) at least {per_image:.3g} s "
                         "per image, and a trial times a few calls at each batch it tries (an estimate, a lower "
                         "bound: compile adds its warm-up, minutes on a CPU)")
        return lines


def dry_run(model: str, budget: str | int | None = None, height: int | None = None, width: int | None = None,
            steps: int | None = None, pinned: dict[str, Any] | None = None, quality_floor: bool = False,
            reference_steps: int = DEFAULT_REFERENCE_STEPS, device: str | None = None,
            hub: pipelines.HubOptions | None = None, only: Mapping[str, Sequence[Any]] | None = None) -> DryRun:
    """What `run_search` with these options would do, told without loading any weight."""
    hardware = probe(device).hardware
    budget_bytes = parse_size(budget, hardware.memory_bytes) if budget is not None else hardware.memory_bytes
    pipe = pipelines.load_empty(model, hub or pipelines.HubOptions())
    size = pipelines.default_call_size(pipe, model)
    height, width = height or size, width or size
    steps = steps or pipelines.default_steps(pipe, model)
    domains = knobs.domains(hardware, pipe)
    pinned = pinned or {}
    space = build_space(domains, steps_range(steps or reference_steps, reference_steps) if quality_floor else None)
    # A pinned knob is not searched, nor an option its pinned value leaves inactive (compile's, with compile=none).
    active = {knob.name for knob in knobs.in_order() if knob.parent is None or knob.parent[0] not in pinned
              or knob.active(pinned)}
    space = narrow({name: domain for name, domain in space.items() if name not in pinned and name in active},
                   only or {})
    recommendation = recommend_settings(hardware, domains, facts_of(pipe), budget_bytes, height, width, fixed=pinned)
    return DryRun(model, type(pipe).__name__, type(pipelines.denoiser(pipe)).__name__, hardware, (height, width),
                  steps, budget_bytes, knobs.availability(hardware, pipe), recommendation, space,
                  image_flops(pipe, height, width, steps or 1), matmul_rate(hardware.device))


def image_flops(pipe, height: int, width: int, steps: int) -> float | None:
    """The FLOPs of one call for one image on a pipeline read without its weights: text encoding and `steps`
    denoiser calls (guidance included; the scheduler's arithmetic and the VAE's decode left out); None when this
    pipeline cannot run on the meta device. Counted at one and two steps: their difference over the denoiser calls
    it added is one call's cost (a scheduler may call the denoiser more than once a step), the rest is encoding."""
    from torch.utils.flop_counter import FlopCounterMode

    # The scheduler indexes its tables with the step's timestep, which a meta tensor cannot do; its arithmetic is
    # noise beside the denoiser's.
    pipe.scheduler.step = lambda model_output, timestep, sample, *args, **kwargs: (sample,)
    calls: list[int] = []
    hook = pipelines.denoiser(pipe).register_forward_pre_hook(lambda module, args: calls.append(1))
    counted = []
    try:
        for count in (1, 2):
            calls.clear()
            counter = FlopCounterMode(display=False)
            with counter:
                pipe("a photograph", height=height, width=width, num_inference_steps=count, output_type="latent")
            counted.append((float(counter.get_total_flops()), len(calls)))
    except Exception:  # an operation with no meta kernel, a value read back: no count, rather than a guess
        return None
    finally:
        hook.remove()
    (one, one_calls), (two, two_calls) = counted
    if two_calls <= one_calls:
        return None
    per_call = (two - one) / (two_calls - one_calls)
    return one - one_calls * per_call + steps * per_call


def matmul_rate(device: str, seconds: float = 0.3) -> float | None:
    """FLOP/s of square matmuls on `device` (fp16 on CUDA, fp32 on a CPU), for about `seconds`."""
    cuda = device.startswith("cuda")
    side = 2048 if cuda else 512
    a = torch.randn(side, side, device=device, dtype=torch.float16 if cuda else torch.float32)
    a @ a  # the first call sets up the library's kernels
    done, started = 0, time.perf_counter()
    while True:
        a @ a
        if cuda:
            torch.cuda.synchronize()
        done += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return 2 * side**3 * done / elapsed
