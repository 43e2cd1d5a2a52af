"""offload: keep the pipeline on the device, or offload to CPU (model, sequential, group offload).

Offload replaces `.to(device)`: never both. None of the offload modes can be undone in place (accelerate's and
diffusers' hooks stay), so a tuner starts the next trial from a fresh pipeline after one.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import DiffusionPipeline

from autotune.pipelines import denoiser

from ._base import Knob, register

_GROUP = {"group-block": "block_level", "group-leaf": "leaf_level"}


@register
class Offload(Knob):
    name = "offload"
    help = "none (pipeline on the device), model / sequential CPU offload, or group offload by block or leaf"
    annotation = Literal["none", "model", "sequential", "group-block", "group-leaf"]
    default = "none"
    stage = "placement"
    after = ("memory_format",)
    reversible = False

    def choices(self):
        return ["none", "model", "sequential", *_GROUP]

    def unavailable(self, value, hw, pipe=None):
        if value == "none":
            return None
        if hw.device != "cuda":
            return "offload requires an accelerator (it moves weights between CPU and GPU)"
        if value in _GROUP:
            if not hasattr(DiffusionPipeline, "enable_group_offload"):
                return "group offload needs a newer diffusers (enable_group_offload)"
            if pipe is not None and not getattr(denoiser(pipe), "_supports_group_offloading", True):
                return f"{type(denoiser(pipe)).__name__} does not support group offloading"
        return None

    def apply(self, pipe, value, settings, hw):
        device = target_device(pipe, hw.device)
        if value == "none":
            pipe.to(device)  # the device the search or profile names, not whatever this host has
        elif value == "model":
            pipe.enable_model_cpu_offload(device=device)
        elif value == "sequential":
            pipe.enable_sequential_cpu_offload(device=device)
        else:
            pipe.enable_group_offload(
                onload_device=device, offload_type=_GROUP[value], num_blocks_per_group=1, use_stream=True,
            )

    def read(self, pipe):
        net = denoiser(pipe)
        hook = type(getattr(net, "_hf_hook", None)).__name__
        if hook == "CpuOffload":
            return "model"
        if any(getattr(getattr(m, "_hf_hook", None), "offload", False) for m in net.modules()):
            return "sequential"
        group = _group_offload_type(net)
        if group is not None:
            return {level: value for value, level in _GROUP.items()}[group]
        return "none"


def target_device(pipe, device: str) -> torch.device:
    """Where `device` ("cpu" or "cuda") puts `pipe`: a pipeline an app already placed on one GPU (`cuda:1`) stays
    on it, where a plain "cuda" would move it to the current device."""
    current = getattr(pipe, "device", None)
    if device == "cuda" and isinstance(current, torch.device) and current.type == "cuda":
        return current
    return torch.device(device)


def _group_offload_type(net: torch.nn.Module) -> str | None:
    try:
        from diffusers.hooks.group_offloading import _get_top_level_group_offload_hook
    except ImportError:  # a diffusers without group offload
        return None
    hook = _get_top_level_group_offload_hook(net)
    return None if hook is None else str(getattr(hook.config.offload_type, "value", hook.config.offload_type))
