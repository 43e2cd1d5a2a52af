"""fuse_qkv: one matmul for the query, key and value projections (`fuse_qkv_projections()`), in the denoiser and VAE.

Fusing adds `to_qkv` / `to_kv` layers beside the originals and, on UNet-style models, installs
`FusedAttnProcessor2_0`; `unfuse_qkv_projections()` restores the processors but leaves the fused weights, so the knob
cannot be undone in place. A later `set_attn_processor` or attention slicing would silently drop the fusion, which
is why it comes after the attention knob and needs SDPA there.
"""

from __future__ import annotations

from autotune.pipelines import denoiser

from ._base import Knob, register
from ._rules import Requires


def _fusable(pipe) -> list:
    return [m for m in (denoiser(pipe), getattr(pipe, "vae", None)) if hasattr(m, "fuse_qkv_projections")]


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
        return None

    def apply(self, pipe, value, settings, hw):
        if value:
            for model in _fusable(pipe):
                model.fuse_qkv_projections()

    def read(self, pipe):
        # Read from the attention modules themselves: a fused one carries the fused projection layers.
        return any(getattr(m, "fused_projections", False) and (hasattr(m, "to_qkv") or hasattr(m, "to_kv"))
                   for m in denoiser(pipe).modules())
