"""quantization: torchao's `quantize_` on the denoiser's Linear layers after loading: int8 or fp8 weights, with the
activations quantized too (dynamic) or not (weight-only).

It quantizes the dtype the precision knob chose, and after QKV fusion (the fused projection is one more Linear to
quantize; torchao's weights cannot be concatenated into one). It comes before placement, so a large denoiser is
quantized before it reaches the GPU. torchao leaves its own tensor subclasses as the Linear weights, which is how
the value is read back, and the original weights are gone: the knob cannot be undone in place. Rounding the weights
changes the image, so a search tries it only under a quality floor.

torchao's fp8 dynamic kind asserts compute capability 8.9 or newer; the weight-only fp8 kind dequantizes to the
compute dtype and runs on the CPU too. Without compile, torchao's quantized matmuls are slow on a GPU (int8 dynamic
FLUX on an H100: 130 s against 6.6 s unquantized): legal, and left to the search to measure.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch

from autotune.pipelines import denoiser

from ._base import Knob, register
from ._rules import Excludes

# value -> (torchao config class, weight tensor subclass torchao leaves on each Linear, activations quantized)
KINDS = {
    "int8-weight-only": ("Int8WeightOnlyConfig", "Int8Tensor", False),
    "int8-dynamic": ("Int8DynamicActivationInt8WeightConfig", "Int8Tensor", True),
    "fp8-weight-only": ("Float8WeightOnlyConfig", "Float8Tensor", False),
    "fp8-dynamic": ("Float8DynamicActivationFloat8WeightConfig", "Float8Tensor", True),
}
FP8_CAPABILITY = (8, 9)
_STREAMED_OFFLOAD = {"group-block", "group-leaf"}  # placement's group offload runs with use_stream=True


@register
class Quantization(Knob):
    name = "quantization"
    help = "torchao quantization of the denoiser's Linear layers: int8 or fp8 weights, weight-only or dynamic"
    annotation = Literal["none", "int8-weight-only", "int8-dynamic", "fp8-weight-only", "fp8-dynamic"]
    default = "none"
    stage = "quantization"
    after = ("storage", "fuse_qkv")
    before = ("placement",)
    exact = False
    reversible = False
    rules = (
        Excludes("offload", "torchao's quantized weights and group offload's streamed copies end up on different "
                            "devices (diffusers issue 13281)", other_values=_STREAMED_OFFLOAD),
        Excludes("layerwise_casting", "both rewrite the denoiser's Linear weights: quantize them or cast them, "
                                      "not both"),
    )

    def choices(self):
        return ["none", *KINDS]

    def unavailable(self, value, hw, pipe=None):
        if value == "none":
            return None
        if importlib.util.find_spec("torchao") is None:
            return "torchao is not installed (pip install 'autotune[torchao]')"
        config = KINDS[value][0]
        if not hasattr(_torchao_quantization(), config):
            return f"the installed torchao has no {config}"
        if value.startswith("fp8") and hw.device == "cuda" and hw.capability_tuple < FP8_CAPABILITY:
            return "fp8 quantization needs compute capability 8.9 (Ada, Hopper) or newer"
        if value == "fp8-dynamic" and hw.device != "cuda":
            return "torchao's fp8 dynamic quantization runs only on GPUs of compute capability 8.9 or newer"
        return None

    def caveat(self, value, hw):
        if value != "none" and hw.device == "cuda":
            return "slow without compile: torchao's quantized matmuls are fused by inductor"
        return None

    def apply(self, pipe, value, settings, hw):
        if value == "none":
            return
        torchao = _torchao_quantization()
        # torchao's default also sets inductor options for the whole process, which would carry over into every
        # later compile there (the next trial's, an app's other models): the profile changes the denoiser only.
        config = getattr(torchao, KINDS[value][0])(set_inductor_config=False)
        torchao.quantize_(denoiser(pipe), config)

    def read(self, pipe):
        for module in denoiser(pipe).modules():
            if isinstance(module, torch.nn.Linear):
                kind = quantized_kind(module.weight)
                if kind is not None:
                    return kind
        return "none"


def quantized_kind(weight: torch.Tensor) -> str | None:
    """The value a torchao-quantized weight stands for (its tensor subclass, and whether it carries the arguments
    that quantize the activations); None for a plain tensor. Read without importing torchao."""
    if not type(weight).__module__.startswith("torchao."):
        return None
    dynamic = getattr(weight, "act_quant_kwargs", None) is not None
    return next((value for value, (_, subclass, activations) in KINDS.items()
                 if type(weight).__name__ == subclass and activations == dynamic), None)


def _torchao_quantization():
    import torchao.quantization

    return torchao.quantization
