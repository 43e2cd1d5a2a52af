"""channels_last: NHWC memory format for the denoiser's and the VAE's convolutions."""

from __future__ import annotations

import torch

from autotune.pipelines import denoiser

from ._base import Knob, register


@register
class ChannelsLast(Knob):
    name = "channels_last"
    help = "channels-last (NHWC) memory format for the denoiser and the VAE"
    annotation = bool
    default = False
    stage = "memory_format"
    after = ("vae",)

    def choices(self):
        return [False, True]

    def apply(self, pipe, value, settings, hw):
        memory_format = torch.channels_last if value else torch.contiguous_format
        for model in (denoiser(pipe), getattr(pipe, "vae", None)):
            if model is not None:
                model.to(memory_format=memory_format)

    def unavailable(self, value, hw, pipe=None):
        if not value or pipe is None:
            return None
        if _layout_weight(pipe) is None:
            return f"{type(pipe).__name__} has no spatial convolution in its denoiser or VAE to lay out"
        for model in (denoiser(pipe), getattr(pipe, "vae", None)):
            # channels_last is a 4-D layout: torch raises "required rank 4 tensor" on a Conv3d's 5-D weight.
            if model is not None and any(isinstance(module, torch.nn.Conv3d) for module in model.modules()):
                return f"{type(model).__name__} has 3-D convolutions (video), which the 4-D channels-last cannot hold"
        return None

    def read(self, pipe):
        weight = _layout_weight(pipe)
        return weight is not None and not weight.is_contiguous() and weight.is_contiguous(
            memory_format=torch.channels_last
        )


def _layout_weight(pipe) -> torch.Tensor | None:
    # A DiT denoiser has no convolutions (only its VAE does): read the layout where there is one.
    for model in (denoiser(pipe), getattr(pipe, "vae", None)):
        weight = first_spatial_conv_weight(model) if model is not None else None
        if weight is not None:
            return weight
    return None


def first_spatial_conv_weight(model: torch.nn.Module) -> torch.Tensor | None:
    """A conv weight whose layout tells NCHW from NHWC (a 1x1 or single-channel kernel is both at once)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and module.in_channels > 1 and module.kernel_size != (1, 1):
            return module.weight
    return None
