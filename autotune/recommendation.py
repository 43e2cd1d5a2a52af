"""A configuration chosen without measuring: rules by device, then memory savers only as the memory model needs them.

The way rule-based tools choose (ComfyUI's and SD.Next's VRAM tiers), but from this machine's probe, the knobs'
availability on this pipeline, and the memory model's prediction at batch 1 instead of a fixed table:

- On a CUDA GPU: bf16 where the GPU runs it (compute capability 8.0+), else fp16 (the precision knob keeps an
  upcasting VAE in fp32); SDPA, the default, which never materializes the attention scores; channels-last on a
  UNet, whose convolutions cuDNN runs fastest in NHWC.
- On a CPU: the configuration as loaded (fp32, SDPA). Whether a lower precision or channels-last is faster on a CPU
  depends on its instruction set and is left for a search to measure; nothing here assumes it. Where other processes
  hold some cores, as many torch threads as there are free cores: two threads on two cores, one of them taken, spend
  their time waiting for each other (10-17x slower than quiet, against about 2x for one thread).
- Never compile: it costs minutes per configuration before it pays, which only a measurement can weigh.
- Then, while the predicted peak is over the budget, the savers the rule tools reach for, cheapest first: VAE
  slicing, VAE tiling, sliced attention (where the attention holds its scores), model offload, sequential offload.
  Each is taken only if the model says it lowers the peak.

It is also the first trial of every search (`space.warm_start`, `recipe: recommended`): the baseline a search must
beat. Nothing here imports Optuna.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autotune.measure.host_load import BUSY_SHARE, others_share
from autotune.measure.memory_facts import ModelFacts, tensor_bytes
from autotune.measure.memory_model import FULL_SCORES, MemoryModel

from . import knobs
from .units import format_size

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from .hardware import Hardware

# The memory savers, cheapest in speed first: (knob, value, what it does).
SAVERS = (
    ("vae_slicing", True, "decodes one image of the batch at a time"),
    ("vae_tiling", True, "decodes the image in tiles (visible at tile seams)"),
    ("attention", "sliced", "computes the attention scores a few heads at a time"),
    ("offload", "model", "keeps one component on the GPU at a time"),
    ("offload", "sequential", "keeps one layer on the GPU at a time (slowest)"),
)


@dataclass(frozen=True)
class Recommendation:
    """Every knob's recommended value, with one line of why for each that is not the default."""

    settings: dict[str, Any]
    reasons: dict[str, str]
    predicted_peak_bytes: int | None = None  # at batch 1, uncalibrated; None without the pipeline's sizes
    memory_budget_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    def changed(self) -> dict[str, Any]:
        """The settings that differ from the knobs' defaults."""
        defaults = knobs.defaults()
        return {name: value for name, value in self.settings.items() if defaults.get(name) != value}

    def lines(self) -> list[str]:
        """What `autotune recommend` prints: each changed setting with its reason, then the memory line."""
        shown = [f"{name}: {knobs.show(value)}  # {self.reasons.get(name, '')}".rstrip(" #")
                 for name, value in self.changed().items()]
        if not shown:
            shown.append("the configuration as loaded: no rule here has a reason to change it")
        if self.predicted_peak_bytes is not None:
            budget = f" of the budget {format_size(self.memory_budget_bytes)}" if self.memory_budget_bytes else ""
            shown.append(f"predicted peak {format_size(self.predicted_peak_bytes)} at batch 1{budget} "
                         "(before any trial calibrates the memory model)")
        return shown + self.notes


def recommend_settings(hardware: Hardware, domains: Mapping[str, knobs.Domain], facts: ModelFacts | None,
                       budget_bytes: int | None, height: int, width: int, guidance_scale: float | None = None,
                       fixed: Mapping[str, Any] | None = None, others_cpu_share: float = 0.0) -> Recommendation:
    """The recommendation for `hardware` over `domains` (knob name -> its `Domain`), with the memory model
    of `facts` at `height` x `width` (no memory step without them). `fixed` values are kept as given;
    `others_cpu_share` is the share of the CPU other processes use now (`measure.host_load.others_share`)."""
    fixed = dict(fixed or {})
    available = dict(domains)
    settings: dict[str, Any] = {**knobs.defaults(), **fixed}
    reasons: dict[str, str] = {}

    def choose(name: str, value: Any, why: str) -> bool:
        if name in fixed or name not in available or value not in available[name]:
            return False
        trial = {**settings, name: value}
        if knobs.violations(trial):
            return False
        settings[name] = value
        reasons[name] = why
        return True

    if hardware.device == "cuda":
        if not choose("precision", "bf16", f"half the weight memory, fp32's range, native on sm {hardware.capability}"):
            choose("precision", "fp16", f"half the weight memory and tensor-core matmuls; sm {hardware.capability} "
                                        "has no bf16")
        if facts is not None and facts.denoiser == "unet":
            choose("channels_last", True, "the UNet's convolutions run in cuDNN's preferred NHWC layout")
    free = free_cores(hardware.cpu_cores, others_cpu_share)
    if hardware.device == "cpu" and free < hardware.cpu_cores:
        choose("cpu_threads", free, f"other processes use {others_cpu_share:.0%} of the CPU: {free} of "
                                    f"{hardware.cpu_cores} cores are free")
    if facts is None:
        note = "no pipeline given (--model): the memory model has no sizes, so no memory saver was considered"
        return Recommendation(settings, reasons, None, budget_bytes, [note])
    model = MemoryModel(facts, height, width, guidance_scale)
    predicted = model.predict(settings, 1)
    notes = []
    for name, value, what in SAVERS if budget_bytes else ():
        if budget_bytes is None or predicted <= budget_bytes:
            break
        if name == "attention" and settings.get("attention") not in FULL_SCORES:
            continue  # the attention already holds no scores: slicing would only slow it
        previous = settings.get(name)
        if not choose(name, value, ""):
            continue
        after = model.predict(settings, 1)
        if after >= predicted:  # no gain here: undo
            settings[name] = previous
            del reasons[name]
            continue
        reasons[name] = (f"{what}: the peak is predicted {format_size(predicted)} without it, over the budget "
                         f"{format_size(budget_bytes)}; {format_size(after)} with it")
        predicted = after
    if budget_bytes and predicted > budget_bytes:
        notes.append(f"nothing available here brings the predicted peak ({format_size(predicted)}) under the budget "
                     f"{format_size(budget_bytes)}")
    return Recommendation(settings, reasons, predicted, budget_bytes, notes)


def free_cores(cores: int, others_cpu_share: float) -> int:
    """The cores other processes leave free, at least one; all of them on a machine that is not busy.

    >>> free_cores(2, 0.5), free_cores(16, 0.1), free_cores(2, 1.0)
    (1, 16, 1)
    """
    if others_cpu_share <= BUSY_SHARE:
        return cores
    return max(1, round(cores * (1 - others_cpu_share)))


def recommend(model: str | None = None, *, budget: str | int | None = None, device: str | None = None,
              height: int | None = None, width: int | None = None) -> Recommendation:
    """A configuration for `model` on this machine within `budget`, chosen by rules and the memory model, without
    running it. Without `model`, only the machine's rules apply (no memory saver).

    >>> recommend("builtin:tiny-sd", budget="6GB").changed()  # doctest: +SKIP
    {}
    """
    from .hardware import probe
    from .units import parse_size

    hardware = probe(device).hardware
    budget_bytes = parse_size(budget, hardware.memory_bytes) if budget is not None else None
    others = others_share() if hardware.device == "cpu" else 0.0
    if model is None:
        return recommend_settings(hardware, knobs.domains(hardware), None, budget_bytes, height or 512, width or 512,
                                  others_cpu_share=others)
    from autotune.measure.memory_facts import facts_of

    from . import pipelines

    pipe = pipelines.load_empty(model)  # the sizes the memory model needs, no weight loaded
    size = pipelines.default_call_size(pipe, model)
    facts = facts_of(pipe, _baseline_bytes(pipe) if hardware.device == "cpu" else None)
    return recommend_settings(hardware, knobs.domains(hardware, pipe), facts, budget_bytes, height or size,
                              width or size, others_cpu_share=others)


def _baseline_bytes(pipe: DiffusionPipeline) -> int:
    # What this process holds besides the pipeline's tensors: on a CPU, every peak counts it too.
    import psutil

    return max(0, int(psutil.Process().memory_info().rss) - tensor_bytes(pipe))
