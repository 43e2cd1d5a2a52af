"""scheduler: swap the sampler with `from_config`, from an allowlist.

It changes the image, so a tuner searches it only with a quality floor. Heun and KDPM2 call the denoiser about
twice per step: compare schedulers by measured time, never by step count.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import diffusers

from ._base import AS_LOADED, Knob, register

# name -> (diffusers class, config overrides). The one place the allowlist lives.
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {"use_karras_sigmas": False}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {"use_karras_sigmas": False}),
    "lms": ("LMSDiscreteScheduler", {"use_karras_sigmas": False}),
    "heun": ("HeunDiscreteScheduler", {"use_karras_sigmas": False}),
}
# Schedulers that import an extra package when they run.
_NEEDS = {"lms": "scipy"}
# A flow-matching pipeline (FLUX, SD3, Wan) lists no `compatibles`; UniPC runs on its flow sigmas (as Wan ships it),
# with the loaded scheduler's shift. Its `set_timesteps` takes the sigmas and `mu` these pipelines pass; DPM-Solver's
# and FlowMatchHeun's do not, so the pipelines refuse them.
_FLOW_MATCHING = "FlowMatchEulerDiscreteScheduler"
_ON_FLOW_SIGMAS = {"unipc": {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}}
DEFAULT = "default"
_LOADED = "_autotune_loaded_scheduler"


@register
class Scheduler(Knob):
    name = "scheduler"
    help = "sampler, swapped with from_config (default: the pipeline's own)"
    annotation = Literal[(DEFAULT, *SCHEDULERS)]
    default = DEFAULT
    stage = "scheduler"
    after = ("precision",)
    exact = False

    def choices(self):
        return [DEFAULT, *SCHEDULERS]

    def unavailable(self, value, hw, pipe=None):
        if value == DEFAULT:
            return None
        if value not in SCHEDULERS:
            return f"unknown scheduler {value!r}; known: {', '.join(self.choices())}"
        package = _NEEDS.get(value)
        if package and importlib.util.find_spec(package) is None:
            return f"needs the {package} package (pip install {package})"
        if pipe is not None:
            loaded = pipe.__dict__.get(_LOADED, pipe.scheduler)
            compatible = {cls.__name__ for cls in loaded.compatibles}
            if type(loaded).__name__ == _FLOW_MATCHING:
                compatible = {SCHEDULERS[name][0] for name in _ON_FLOW_SIGMAS}
            if SCHEDULERS[value][0] not in compatible:
                return f"not compatible with {type(pipe).__name__}'s {type(loaded).__name__}"
        return None

    def apply(self, pipe, value, settings, hw):
        # The scheduler the pipeline was loaded with is kept on the first swap, so `default` can bring it back.
        loaded = pipe.__dict__.setdefault(_LOADED, pipe.scheduler)
        if value == DEFAULT:
            pipe.scheduler = loaded
            return
        class_name, overrides = SCHEDULERS[value]
        if type(loaded).__name__ == _FLOW_MATCHING:
            overrides = {**overrides, **_ON_FLOW_SIGMAS[value], "flow_shift": loaded.config.get("shift", 1.0)}
        cls = getattr(diffusers, class_name)
        pipe.scheduler = cls.from_config(loaded.config, **overrides)

    def reads_as(self, value, pipe):
        return AS_LOADED if value == DEFAULT else value

    def read(self, pipe):
        scheduler = pipe.scheduler
        for name, (class_name, overrides) in SCHEDULERS.items():
            if type(scheduler).__name__ == class_name and all(
                scheduler.config.get(key) == wanted for key, wanted in overrides.items()
            ):
                return name
        return type(scheduler).__name__
