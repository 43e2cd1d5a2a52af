"""precision: fp32, fp32 with TF32 matmuls and convolutions, fp16, bf16.

fp16 keeps a guard for SD 1.x's VAE, which overflows in fp16 and decodes NaN (black) images: when the VAE's config
says `force_upcast`, the VAE stays in fp32 and the latents are cast to it before decoding (StableDiffusionPipeline,
unlike SDXL's, never upcasts on its own, and an fp32 VAE fed fp16 latents fails with a dtype mismatch). Any other
precision removes the guard, so an app may apply one profile after another to the same pipeline.

TF32: `tf32` turns it on for matmuls and cuDNN convolutions; the other values leave cuDNN's at torch's default (on)
and matmuls' off, torch's defaults, so "fp32" times the pipeline as loaded.
"""

from __future__ import annotations

from typing import Literal

import torch

from autotune.pipelines import denoiser

from ._base import Knob, register

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# torch's own default for cuDNN's TF32 (on), read at import so that no value of this knob turns it off.
_TORCH_DEFAULT_CUDNN_TF32 = torch.backends.cudnn.allow_tf32


@register
class Precision(Knob):
    name = "precision"
    help = "weights and compute dtype (tf32 = fp32 weights with TF32 matmuls and convolutions)"
    annotation = Literal["fp32", "tf32", "fp16", "bf16"]
    default = "fp32"
    stage = "precision"
    after = ("process",)
    exact = False
    guarded = True  # fp16 overflow decodes NaN / black images, which every trial checks for

    def choices(self):
        return list(DTYPES)

    def unavailable(self, value, hw, pipe=None):
        if value == "tf32" and (hw.device != "cuda" or hw.capability_tuple < (8, 0)):
            return "TF32 needs an NVIDIA GPU of compute capability 8.0 (Ampere) or newer"
        if value == "bf16" and hw.device == "cuda" and hw.capability_tuple < (8, 0):
            return "bf16 needs compute capability 8.0 or newer"
        return None

    def caveat(self, value, hw):
        if value in ("fp16", "bf16") and hw.device == "cpu":
            return "runs, but usually much slower than fp32 on a CPU"
        return None

    def apply(self, pipe, value, settings, hw):
        self.apply_process(value, hw)
        vae = getattr(pipe, "vae", None)
        guard = value == "fp16" and vae is not None and vae.config.get("force_upcast", False)
        if vae is not None and not guard:
            release_vae_guard(vae)
        if any(module.dtype != DTYPES[value] for module in _models(pipe)):
            pipe.to(DTYPES[value])
        if guard:
            keep_vae_in_fp32(vae)

    def apply_process(self, value, hw):
        tf32 = value == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32 or _TORCH_DEFAULT_CUDNN_TF32

    def load_kwargs(self, value):
        return {"dtype": DTYPES[value]}

    def read(self, pipe):
        dtype = next(denoiser(pipe).parameters()).dtype
        name = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")
        if name == "fp32" and torch.backends.cuda.matmul.allow_tf32:
            return "tf32"
        return name


def _models(pipe) -> list[torch.nn.Module]:
    return [module for module in pipe.components.values() if isinstance(module, torch.nn.Module)]


def keep_vae_in_fp32(vae: torch.nn.Module) -> None:
    """Run `vae` in fp32 whatever dtype the latents arrive in."""
    vae.to(torch.float32)
    if getattr(vae, "_autotune_fp32_guard", None) is None:
        first = getattr(vae, "post_quant_conv", None) or vae.decoder
        vae._autotune_fp32_guard = first.register_forward_pre_hook(_cast_to_fp32)


def release_vae_guard(vae: torch.nn.Module) -> None:
    """Undo `keep_vae_in_fp32`: the VAE then runs in whatever dtype it is cast to."""
    guard = getattr(vae, "_autotune_fp32_guard", None)
    if guard is not None:
        guard.remove()
        del vae._autotune_fp32_guard


def _cast_to_fp32(module, args):
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
