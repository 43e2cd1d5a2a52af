"""attention: SDPA (optionally restricted to one torch kernel), xformers, vanilla, sliced, or a dispatch backend.

UNet-style models (SD 1.x/2.x, SDXL, PixArt) take a processor through `set_attn_processor`; torch's
`sdpa_kernel` context restricts SDPA to one kernel. Dispatch-based transformers (Flux, Wan, Qwen...) ignore processors
and take a backend name through `set_attention_backend`, which also leaks a process-wide default; it is restored here.
Those also take the backends diffusers registers beyond torch's SDPA: flash-attn's `flash`, SageAttention's `sage`
(int8 attention: lossy, so searched only when quality is measured) and torch's `flex`. A backend known to drift or
blacken images on a model family is not offered there.

A kernel restriction (`sdpa-flash`, `sdpa-cudnn`, ...) goes on the denoiser only: the VAE's attention (SD's has one
head of 512 dims, run in fp32 under the fp16 guard) is beyond what the flash and cuDNN kernels take on CUDA, so it
keeps torch's own SDPA choice. The flash-style kernels take only fp16 and bf16 on CUDA: those values require one.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

from diffusers.models.attention_processor import (
    AttnProcessor,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
    SlicedAttnProcessor,
    XFormersAttnProcessor,
)
from pydantic import PositiveInt
from torch.nn.attention import SDPBackend, sdpa_kernel

from autotune.pipelines import denoiser

from ._base import Knob, register, value_of
from ._rules import Requires

KERNELS = {
    "sdpa-flash": SDPBackend.FLASH_ATTENTION,
    "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa-math": SDPBackend.MATH,
    "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
}
# The diffusers dispatcher's name for each value, for dispatch-based transformers.
DISPATCH_BACKENDS = {
    "sdpa": "native",
    "sdpa-flash": "_native_flash",
    "sdpa-efficient": "_native_efficient",
    "sdpa-math": "_native_math",
    "sdpa-cudnn": "_native_cudnn",
    "xformers": "xformers",
    "flash": "flash",
    "sage": "sage",
    "flex": "flex",
}
# Backends only the diffusers dispatcher reaches, with the package each needs (None: torch's own).
DISPATCH_ONLY = {"flash": "flash_attn", "sage": "sageattention", "flex": None}
# Values whose kernels take only half precision on CUDA (FlashAttention-2/3, cuDNN's fused attention, SageAttention).
HALF_ONLY = frozenset({"sdpa-flash", "sdpa-cudnn", "flash", "sage"})
# (value, denoiser class) -> why that backend is not offered on that model family.
KNOWN_BAD = {
    ("sage", "UNet2DConditionModel"): "SageAttention gives black SD 1.5 / SDXL images (stable-diffusion-webui-forge "
                                      "#2815)",
    ("flash", "Flux2Transformer2DModel"): "the flash-attn path drifts measurably from SDPA on FLUX.2 (sglang "
                                          "#39070: FLUX.2 keeps to SDPA for fidelity)",
}


class KernelRestrictedSDPA(AttnProcessor2_0):
    """`AttnProcessor2_0` that lets torch's SDPA use only the given kernel."""

    def __init__(self, kernel: SDPBackend):
        super().__init__()
        self.kernel = kernel

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kw):
        with sdpa_kernel(self.kernel):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kw)


_CLASSIC = (AttnProcessor, AttnProcessor2_0, SlicedAttnProcessor, XFormersAttnProcessor)


def _family(model) -> str:
    processors = list(getattr(model, "attn_processors", {}).values())
    if any(hasattr(p, "_attention_backend") for p in processors):
        return "dispatch"
    if processors and all(isinstance(p, _CLASSIC) for p in processors):
        return "classic"
    return "other"


@register
class Attention(Knob):
    name = "attention"
    help = "attention implementation of the denoiser (and the VAE, but for a kernel restriction)"
    annotation = Literal["sdpa", "sdpa-flash", "sdpa-efficient", "sdpa-math", "sdpa-cudnn", "xformers", "vanilla",
                         "sliced", "flash", "sage", "flex"]
    default = "sdpa"
    stage = "attention"
    after = ("scheduler",)
    lossy = frozenset({"sage"})
    rules = (Requires("precision", "the flash and cuDNN attention kernels take only fp16 or bf16 on CUDA",
                      values=HALF_ONLY, other_values={"fp16", "bf16"}),)

    def choices(self):
        return ["sdpa", *KERNELS, "xformers", "vanilla", "sliced", *DISPATCH_ONLY]

    def unavailable(self, value, hw, pipe=None):
        if pipe is not None and (value, type(denoiser(pipe)).__name__) in KNOWN_BAD:
            return KNOWN_BAD[value, type(denoiser(pipe)).__name__]
        cuda = hw.device == "cuda"
        if value in ("sdpa-efficient", "sdpa-cudnn") and not cuda:
            return f"torch's {value[5:]} SDPA kernel runs only on CUDA GPUs"
        if value in ("sdpa-flash", "sdpa-cudnn") and cuda and hw.capability_tuple < (8, 0):
            return f"torch's {value[5:]} SDPA kernel needs compute capability 8.0 or newer"
        if value == "xformers":
            if importlib.util.find_spec("xformers") is None:
                return "xformers is not installed (pip install 'autotune[xformers]')"
            if not cuda:
                return "xformers attention runs only on CUDA GPUs"
        if value in DISPATCH_ONLY and DISPATCH_ONLY[value] is not None:
            package = DISPATCH_ONLY[value]
            if importlib.util.find_spec(package) is None:
                return f"the {value} attention backend needs the {package} package, which is not installed"
            if not cuda:
                return f"the {value} attention backend runs only on CUDA GPUs"
            if hw.capability_tuple < (8, 0):
                return f"the {value} attention backend needs compute capability 8.0 or newer"
        if value == "flex" and importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
            return "the flex attention backend needs torch 2.5 or newer"
        if pipe is not None:
            return self._unavailable_on(value, pipe)
        return None

    def caveat(self, value, hw):
        if value == "flex":
            return "flex attention runs unfused unless the denoiser is compiled"
        return None

    def _unavailable_on(self, value, pipe):
        net = denoiser(pipe)
        family = _family(net)
        if value in DISPATCH_ONLY and family != "dispatch":
            return f"{type(net).__name__} takes attention processors; {value} is a backend of diffusers' dispatcher"
        if family == "dispatch" and value not in DISPATCH_BACKENDS:
            return f"{type(net).__name__} picks attention by backend name; {value} reaches only UNet-style processors"
        if family == "other" and value != "sdpa":
            kinds = sorted({type(p).__name__ for p in net.attn_processors.values()})
            return f"{type(net).__name__}'s attention processors ({', '.join(kinds)}) have no swappable variant"
        if value == "sliced" and not hasattr(net, "set_attention_slice"):
            return f"{type(net).__name__} does not support attention slicing"
        return None

    def apply(self, pipe, value, settings, hw):
        net = denoiser(pipe)
        if _family(net) == "dispatch":
            _set_dispatch_backend(net, DISPATCH_BACKENDS[value])
            return
        if _family(net) == "other":
            return  # only "sdpa" is available here, and these processors already use it.
        if value == "sliced":
            pipe.enable_attention_slicing(value_of(settings, "attention_slice_size"))
        elif value == "xformers":
            pipe.enable_xformers_memory_efficient_attention()
        else:
            net.set_attn_processor(self._processor(value))
            vae = getattr(pipe, "vae", None)
            if vae is not None and _family(vae) == "classic":
                vae.set_attn_processor(self._processor("sdpa" if value in KERNELS else value))

    @staticmethod
    def _processor(value):
        if value == "vanilla":
            return AttnProcessor()
        if value in KERNELS:
            return KernelRestrictedSDPA(KERNELS[value])
        return AttnProcessor2_0()

    def read(self, pipe):
        net = denoiser(pipe)
        processor = next(iter(net.attn_processors.values()), None)
        backend = getattr(processor, "_attention_backend", None)
        if backend is not None:
            by_backend = {name: value for value, name in DISPATCH_BACKENDS.items()}
            return by_backend.get(str(getattr(backend, "value", backend)), str(backend))
        if isinstance(processor, KernelRestrictedSDPA):
            return next(value for value, kernel in KERNELS.items() if kernel == processor.kernel)
        if isinstance(processor, SlicedAttnProcessor):
            return "sliced"
        if isinstance(processor, XFormersAttnProcessor):
            return "xformers"
        if type(processor) is AttnProcessor:
            return "vanilla"
        if type(processor) in (AttnProcessor2_0, FusedAttnProcessor2_0):  # fused QKV still runs torch's SDPA
            return "sdpa"
        return type(processor).__name__  # a processor this knob did not set: never claimed as one of its values


def _set_dispatch_backend(model, backend: str) -> None:
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    # set_attention_backend also changes the process-wide default, which reset_attention_backend() does not undo
    # (diffusers#14249): keep the default as it was, so other models in this process are not affected.
    previous = _AttentionBackendRegistry._active_backend
    try:
        model.set_attention_backend(backend)
    finally:
        _AttentionBackendRegistry.set_active_backend(previous)


@register
class AttentionSliceSize(Knob):
    name = "attention_slice_size"
    help = "heads per slice when attention is sliced: auto (half the heads), max (one head), or a number"
    annotation = Literal["auto", "max"] | PositiveInt
    default = "auto"
    stage = "attention"
    parent = ("attention", frozenset({"sliced"}))

    def choices(self):
        return ["auto", "max", 2, 4]

    def unavailable(self, value, hw, pipe=None):
        if isinstance(value, int) and pipe is not None:
            dims = [m.sliceable_head_dim for m in denoiser(pipe).modules() if hasattr(m, "sliceable_head_dim")]
            if dims and value > min(dims):
                return f"slice size {value} is more than this model's {min(dims)} heads"
        return None

    def reads_as(self, value, pipe):
        if value in ("auto", "max"):  # what diffusers' enable_attention_slicing makes of them
            heads = min(m.sliceable_head_dim for m in denoiser(pipe).modules() if hasattr(m, "sliceable_head_dim"))
            return heads // 2 if value == "auto" else 1
        return value

    def read(self, pipe):
        processor = next(iter(denoiser(pipe).attn_processors.values()), None)
        return getattr(processor, "slice_size", None)
