"""The choices and defaults that the CLI checks before any heavy import, and the library uses: one place each, with
`SearchOptions`, every option of a search checked when it is made.

Nothing here imports torch, diffusers or Optuna, so `autotune search --objective nope` is refused at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from .exceptions import InvalidInput, InvalidOption
from .units import check_size
from .workload import check_controlled, check_sizes

if TYPE_CHECKING:
    from autotune.profile import Profile

OBJECTIVES = ("throughput", "latency", "pareto")
SAMPLERS = ("tpe", "gp", "random")
# "percentile" stops growing the batch of a trial in the bottom quarter (`study.make_pruner`); "none" measures
# every trial at every batch, as a plain Optuna search would.
PRUNERS = ("percentile", "none")
# The reference rendering's step count when quality is measured (fp32, the pipeline's own scheduler).
DEFAULT_REFERENCE_STEPS = 50
# How far below a profile's recorded images/s `verify` still passes (a fraction).
DEFAULT_TOLERANCE = 0.10
# The model the CLI and the library use when none is given: built in and trained, shipped with autotune, no download.
DEFAULT_MODEL = "builtin:tiny-sd"
# What a checkpoint file is named: the original (LDM, ComfyUI, A1111) layout community models ship in.
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def is_single_file(model: object) -> TypeGuard[str]:
    """Whether `model` names one checkpoint file (a path or a hub file's URL) rather than a diffusers folder or id."""
    return isinstance(model, str) and model.lower().endswith(SINGLE_FILE_SUFFIXES)

# The environment variable that names a study's Optuna storage, for `search`, `worker` and `export`.
STORAGE_ENV = "AUTOTUNE_STORAGE"

# The exit statuses, as the README's table gives them.
EXIT_CHECK_FAILED = 1  # verify, profiles validate or profiles select found what they check for missing
EXIT_ERROR = 2  # a bad flag, value, file, profile or model, or a storage or disk that failed: one line says which
EXIT_NOTHING_FITS = 3  # no configuration (or shipped profile) meets the budget and floor here
EXIT_BUG = 70  # anything else is a bug in autotune: its traceback is printed for the report (EX_SOFTWARE)


# Fidelity to the reference (higher is better), alignment metrics that need a model the user has locally, and the
# built-in scenes' judge (`prompt`: the share of prompts drawn as asked).
METRICS = ("psnr", "ssim", "lpips", "clip", "prompt")


@dataclass(frozen=True)
class FloorSpec:
    """`--quality-floor` as given: `ssim=0.90` (absolute) or `ssim=-5%` (relative to the reference's noise floor)."""

    metric: str
    value: float
    relative: bool = False

    def resolve(self, noise_floor: dict[str, float]) -> float:
        """The absolute minimum score: a relative floor is taken off the reference-vs-reference score."""
        if not self.relative:
            return self.value
        return noise_floor[self.metric] * (1 + self.value / 100)

    def __str__(self) -> str:
        return f"{self.metric}={self.value:+g}%" if self.relative else f"{self.metric}={self.value:g}"


def parse_floor(text: str) -> FloorSpec:
    """`ssim=0.9`, `psnr=30`, `ssim=-5%` -> FloorSpec; a clear error for anything else."""
    match = re.fullmatch(r"\s*([a-z]+)\s*=\s*([-+]?[0-9]*\.?[0-9]+)\s*(%?)\s*", text or "")
    if not match:
        raise InvalidInput(f"--quality-floor {text!r}: expected METRIC=VALUE such as ssim=0.90, psnr=30 or ssim=-5%")
    metric, value, percent = match.group(1), float(match.group(2)), bool(match.group(3))
    if metric not in METRICS:
        raise InvalidInput(f"--quality-floor {text!r}: unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    if percent and not -100 < value <= 0:
        raise InvalidInput(f"--quality-floor {text!r}: a relative floor is a drop from the reference, "
                           "between -100% and 0%")
    if metric == "ssim" and not percent and not -1 <= value <= 1:
        raise InvalidInput(f"--quality-floor {text!r}: SSIM lies between -1 and 1")
    if metric == "prompt" and not percent and not 0 <= value <= 1:
        raise InvalidInput(f"--quality-floor {text!r}: the prompt score is a share of prompts, between 0 and 1")
    return FloorSpec(metric, value, percent)



@dataclass(frozen=True)
class SearchOptions:
    """Every option of a search, with its default, checked when it is made: a bad value is refused in one line
    (`InvalidOption`) before any model loads. `autotune search` builds one from its flags (each flag's default is the
    field's), `run_search(model, options)` runs it, and `search(model, n_trials=..., ...)` takes the same fields.

    >>> SearchOptions(budget="6GB", n_trials=20, quality_floor="psnr=30").floor
    FloorSpec(metric='psnr', value=30.0, relative=False)
    >>> SearchOptions(n_trials=0)
    Traceback (most recent call last):
    autotune.exceptions.InvalidOption: n_trials must be at least 1, got 0
    """

    budget: str | int | None = None  # 6GB, 6GiB, 80% (of the device's memory), or bytes; None: all of it
    objective: str = OBJECTIVES[0]
    n_trials: int = 30
    timeout_s: float | None = None  # the whole search: trials get three quarters, the re-measurement the rest
    # The workload: its size (or `sizes`, several (height, width) one pipeline renders), prompts and call.
    height: int | None = None
    width: int | None = None
    sizes: Sequence[tuple[int, int]] | None = None
    steps: int | None = None
    prompts: Sequence[str] | None = None
    negative_prompt: str | None = None
    guidance_scale: float | None = None
    call: Mapping[str, Any] | None = field(default_factory=dict)
    seed: int = 0
    image_seed: int | None = None  # the workload's images' first seed; None: `seed`'s
    sampler: str = SAMPLERS[0]
    pruner: str = PRUNERS[0]
    storage: str | None = None
    study_name: str | None = None
    out: str | Path | None = None  # "{study}" in it becomes the study name; None writes no file
    previous: Profile | None = None  # a profile whose settings seed the study
    pinned: Mapping[str, Any] | None = field(default_factory=dict)
    only: Mapping[str, Sequence[Any]] | None = field(default_factory=dict)  # knob -> the values searched
    warm_start_recipes: bool = True  # the recommendation, the guides' recipes and, under a floor, the steps bisection
    # Where and how the model loads.
    device: str | None = None  # cpu, cuda or cuda:N
    revision: str | None = None
    variant: str | None = None
    local_files_only: bool = False
    config: str | None = None  # a single-file checkpoint's pipeline layout
    trial_timeout_s: float = 600.0
    max_batch: int = 16
    top_k: int = 3
    rounds: int = 3
    workers: int = 1
    quality_floor: str | FloorSpec | None = None
    reference_steps: int = DEFAULT_REFERENCE_STEPS
    ablation: bool | None = None  # None: unless AUTOTUNE_ABLATION=0

    def __post_init__(self) -> None:
        for option in ("call", "pinned", "only"):  # None, as callers of the keyword form pass it, is none
            object.__setattr__(self, option, dict(getattr(self, option) or {}))
        for name, values in self.only.items():
            if isinstance(values, str) or not isinstance(values, Sequence) or not values:
                raise InvalidOption("only", f"takes a list of one or more values for each knob; {name}: {values!r}")
        both = sorted(set(self.pinned) & set(self.only))
        if both:
            raise InvalidOption("only", f"names {', '.join(both)}, pinned too: pin a knob or narrow it, not both")
        for option, allowed in (("objective", OBJECTIVES), ("sampler", SAMPLERS), ("pruner", PRUNERS)):
            if getattr(self, option) not in allowed:
                raise InvalidOption(option, f"must be one of {', '.join(allowed)}, got {getattr(self, option)!r}")
        for option in ("n_trials", "height", "width", "steps", "max_batch", "workers", "top_k", "rounds",
                       "reference_steps"):
            value = getattr(self, option)
            if value is not None and value < 1:
                raise InvalidOption(option, f"must be at least 1, got {value}")
        for option in ("timeout_s", "trial_timeout_s"):
            value = getattr(self, option)
            if value is not None and not value > 0:
                raise InvalidOption(option, f"must be more than 0 seconds, got {value:g}")
        if self.guidance_scale is not None and not self.guidance_scale >= 0:
            raise InvalidOption("guidance_scale", f"must be 0 or more, got {self.guidance_scale:g}")
        if self.prompts is not None and (not self.prompts or isinstance(self.prompts, str)
                                         or not all(isinstance(p, str) and p.strip() for p in self.prompts)):
            raise InvalidOption("prompts", "must be a non-empty list of non-blank texts")
        if self.device is not None and self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise InvalidOption("device", f"{self.device!r} is not supported; use cpu, cuda or cuda:N")
        if isinstance(self.budget, str):
            check_size(self.budget)  # a share (80%) is read once the device's memory is known
        check_controlled(self.call)
        if self.sizes is not None:
            check_sizes([tuple(size) for size in self.sizes], self.height, self.width, self.several_sizes_allowed)
        object.__setattr__(self, "quality_floor", self.floor)  # parsed once: a bad floor is refused here

    @property
    def floor(self) -> FloorSpec | None:
        return parse_floor(self.quality_floor) if isinstance(self.quality_floor, str) else self.quality_floor

    @property
    def several_sizes_allowed(self) -> bool:
        """Several sizes are searched for speed alone: a quality floor and a Pareto search score one size."""
        return self.quality_floor is None and self.objective != "pareto"

    def check_model(self, model: object) -> None:
        """What the options ask of the model: a single-file layout only for a single file, several workers only for
        a model they can load by name."""
        if self.config is not None and not is_single_file(model):
            raise InvalidOption("config", f"describes a single-file checkpoint (.safetensors, .ckpt); {model!r} is "
                                          "not one")
        if self.workers > 1 and not isinstance(model, str):
            raise InvalidInput("several workers need a model they can load by name (hub id, folder or builtin:*), "
                               "not a Python function")


SEARCH_OPTIONS = tuple(option.name for option in fields(SearchOptions))
