"""layerwise_casting: keep the denoiser's weights in fp8 and cast each layer up to the compute dtype as it runs
(`enable_layerwise_casting`), a memory-budget lever: weights take half the bytes of bf16 or a quarter of fp32.

The compute dtype is the one the precision knob chose (applied before this one). diffusers leaves norms, embeddings
and the patch/pos projections in the compute dtype by default. Casting rounds the weights, so the image changes and
a search tries it only under a quality floor; the rounded weights cannot be restored in place.
"""

from __future__ import annotations

from typing import Literal

import torch

from autotune.pipelines import denoiser

from ._base import Knob, register
from ._rules import Excludes

STORAGE_DTYPES = {"fp8-e4m3": torch.float8_e4m3fn, "fp8-e5m2": torch.float8_e5m2}


@register
class LayerwiseCasting(Knob):
    name = "layerwise_casting"
    help = "store the denoiser's weights in fp8 and compute in the precision's dtype (enable_layerwise_casting)"
    annotation = Literal["none", "fp8-e4m3", "fp8-e5m2"]
    default = "none"
    stage = "storage"
    after = ("precision",)
    before = ("scheduler",)
    exact = False
    reversible = False
    # Compiled with the whole graph, dynamo refuses the hooks' `torch.nn.Parameter()` constructor (measured on
    # tiny-flux-random: the same compile with flex attention alone runs).
    rules = (Excludes("compile_fullgraph", "diffusers' layerwise-casting hooks break the compiled graph",
                      values=set(STORAGE_DTYPES), other_values={True}),)

    def choices(self):
        return ["none", *STORAGE_DTYPES]

    def unavailable(self, value, hw, pipe=None):
        if value != "none" and pipe is not None and not hasattr(denoiser(pipe), "enable_layerwise_casting"):
            return f"{type(denoiser(pipe)).__name__} has no enable_layerwise_casting()"
        return None

    def apply(self, pipe, value, settings, hw):
        if value == "none":
            return
        net = denoiser(pipe)
        compute = next(p.dtype for p in net.parameters() if p.dtype not in STORAGE_DTYPES.values())
        net.enable_layerwise_casting(storage_dtype=STORAGE_DTYPES[value], compute_dtype=compute)

    def read(self, pipe):
        # The dtype the weights rest in, read from the parameters themselves.
        stored = {p.dtype for p in denoiser(pipe).parameters()}
        return next((value for value, dtype in STORAGE_DTYPES.items() if dtype in stored), "none")
