"""vae_slicing, vae_tiling: the VAE's own `enable_slicing` / `enable_tiling` (the pipeline-level calls are gone).

Slicing decodes a batch one image at a time (same pixels, less peak memory); tiling decodes overlapping tiles, which
changes the pixels at tile seams, so it is searched only with a quality floor.
"""

from __future__ import annotations

from ._base import Knob, register


class _VaeFlag(Knob):
    annotation = bool
    default = False
    stage = "vae"
    after = ("attention",)
    method: str  # enable_<method> / disable_<method> on the VAE
    flag: str  # the attribute the VAE keeps

    def choices(self):
        return [False, True]

    def unavailable(self, value, hw, pipe=None):
        if value and pipe is not None and not hasattr(getattr(pipe, "vae", None), f"enable_{self.method}"):
            return f"{type(pipe).__name__} has no VAE with enable_{self.method}()"
        return None

    def apply(self, pipe, value, settings, hw):
        vae = getattr(pipe, "vae", None)
        if vae is not None and hasattr(vae, f"enable_{self.method}"):
            getattr(vae, f"{'enable' if value else 'disable'}_{self.method}")()

    def read(self, pipe):
        return bool(getattr(getattr(pipe, "vae", None), self.flag, False))


@register
class VaeSlicing(_VaeFlag):
    name = "vae_slicing"
    help = "decode the batch one image at a time"
    method = "slicing"
    flag = "use_slicing"


@register
class VaeTiling(_VaeFlag):
    name = "vae_tiling"
    help = "decode in overlapping tiles (changes pixels at the seams)"
    method = "tiling"
    flag = "use_tiling"
    exact = False
