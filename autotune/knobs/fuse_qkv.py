"""fuse_qkv: one matmul for the query, key and value projections (`fuse_qkv_projections()`), in the denoiser and VAE.

Fusing adds `to_qkv` / `to_kv` layers beside the originals and, on UNet-style models, installs
`FusedAttnProcessor2_0`; `unfuse_qkv_projections()` restores the processors but leaves the fused weights, so the knob
cannot be undone in place. A later `set_attn_processor` or attention slicing would silently drop the fusion, which
is why it comes after the attention knob and needs SDPA there.

Fusing copies the projections' base weights only: a LoRA loaded through PEFT and not merged into them would be
dropped from the fused layer without a word (diffusers #11903), so the knob is unavailable on such a pipeline until
the app merges it (`pipe.fuse_lora()`, then `pipe.unload_lora_weights()`, as diffusers' LoRA guide does before compile).
"""

from __future__ import annotations

import importlib.util

from autotune.pipelines import denoiser

from ._base import Knob, register
from ._rules import Requires

PROJECTIONS = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")  # what fusing concatenates


def _fusable(pipe) -> list:
    return [m for m in (denoiser(pipe), getattr(pipe, "vae", None)) if hasattr(m, "fuse_qkv_projections")]


def _unmerged_lora_projections(model) -> int:
    """How many query, key or value projections of `model` carry an active LoRA not merged into their weights."""
    if importlib.util.find_spec("peft") is None:
        return 0  # diffusers loads LoRAs through PEFT: without it a model has none
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(1 for name, module in model.named_modules()
               if name.rpartition(".")[2] in PROJECTIONS and isinstance(module, BaseTunerLayer)
               and not module.disable_adapters and set(module.active_adapters) - set(module.merged_adapters))


@register
class FuseQKV(Knob):
    name = "fuse_qkv"
    help = "fuse the attention's query, key and value projections into one matmul (fuse_qkv_projections)"
    annotation = bool
    default = False
    stage = "fuse_qkv"
    after = ("attention",)
    before = ("vae",)
    reversible = False
    rules = (Requires("attention", "fusing installs diffusers' fused SDPA processor, which would replace any other",
                      values={True}, other_values={"sdpa"}),)

    def choices(self):
        return [False, True]

    def unavailable(self, value, hw, pipe=None):
        if not value or pipe is None:
            return None
        net = denoiser(pipe)
        if not hasattr(net, "fuse_qkv_projections"):
            return f"{type(net).__name__} has no fuse_qkv_projections()"
        added = sorted({type(p).__name__ for p in getattr(net, "attn_processors", {}).values()
                        if "Added" in type(p).__name__})
        if added:
            return f"{type(net).__name__} uses added-KV attention ({', '.join(added)}), which diffusers cannot fuse"
        for model in _fusable(pipe):
            if count := _unmerged_lora_projections(model):
                return (f"{type(model).__name__} has a LoRA on {count} query/key/value projections that fusing would "
                        "drop; merge it first: pipe.fuse_lora(), then pipe.unload_lora_weights()")
        return None

    def apply(self, pipe, value, settings, hw):
        if value:
            for model in _fusable(pipe):
                model.fuse_qkv_projections()

    def read(self, pipe):
        # Read from the attention modules themselves: a fused one carries the fused projection layers.
        return any(getattr(m, "fused_projections", False) and (hasattr(m, "to_qkv") or hasattr(m, "to_kv"))
                   for m in denoiser(pipe).modules())
