"""cache: a step cache on the denoiser, which reuses blocks' output across steps: diffusers' own (`enable_cache`) on
DiT models, DeepCache on UNets.

First Block Cache skips the rest of the blocks when the first block's residual changed less than a threshold since
the last step; TaylorSeer predicts block outputs from cached derivatives between full steps; DeepCache reruns only a
UNet's shallow skip branch between full steps (deepcache.py). All change the image, so a search tries them only
under a quality floor (or in a Pareto front). diffusers' caches need a denoiser with `enable_cache` and a pipeline
whose call sets a cache context (FLUX img2img, Kontext and Fill do not, and raise "No cache context is set"):
elsewhere they are unavailable, with that reason. `disable_cache()` and DeepCache's `disable()` remove them: the
knob is reversible.

With compile: diffusers' cache hooks run under `torch.compiler.disable`, which breaks the graph, so they exclude
`compile_fullgraph`. With breaks allowed, First Block Cache and TaylorSeer run compiled on tiny-flux on the CPU, the
whole denoiser and its repeated blocks alike; DeepCache does too on tiny-sd. Whether a cache pays under compile
(fewer blocks against graph breaks) is the search's to measure. The modes that capture CUDA graphs (reduce-overhead,
max-autotune) are excluded: a replay writes into the previous replay's output buffers, which a cache still holds.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Literal

from pydantic import Field, NonNegativeInt, PositiveInt

from autotune.pipelines import denoiser

from . import _deepcache as deepcache
from ._base import Knob, register, value_of
from ._domain import FloatRange, IntRange
from ._rules import Excludes

_CONFIGS = {"first-block": "FirstBlockCacheConfig", "taylorseer": "TaylorSeerCacheConfig"}
DEEPCACHE = "deepcache"


def _unavailable_on(pipe) -> str | None:
    net = denoiser(pipe)
    if not hasattr(net, "enable_cache"):
        return (f"{type(net).__name__} has no enable_cache (diffusers' step caches reach only models built on its "
                "CacheMixin)")
    if "cache_context" not in inspect.getsource(type(pipe).__call__):
        return f"{type(pipe).__name__} sets no cache context for its denoiser's steps"
    return None


@register
class Cache(Knob):
    name = "cache"
    help = "a step cache on the denoiser: none, First Block Cache or TaylorSeer (DiT), DeepCache (UNet)"
    annotation = Literal["none", "first-block", "taylorseer", "deepcache"]
    default = "none"
    stage = "cache"
    after = ("fuse_qkv",)
    before = ("vae",)
    exact = False
    # diffusers' First Block Cache skips the remaining blocks for the whole batch when the mean residual change over
    # the batch is under the threshold: an image is skipped, or not, with the others of its batch (at 7 UniPC steps
    # and threshold 0.3 on tiny-flux, the worst prompt's PSNR was 32.0 at batch 1 and 21.9 at batch 8).
    batch_dependent = frozenset({"first-block"})
    rules = (Excludes("compile_fullgraph", "a step cache's hooks break the compiled graph", values=set(_CONFIGS),
                      other_values={True}),
             Excludes("compile", "CUDA graphs replay into the same output buffers, so a step cache's kept tensor would "
                      "be overwritten by the next replay", values={*_CONFIGS, DEEPCACHE},
                      other_values={"reduce-overhead", "max-autotune"}))

    def choices(self):
        return ["none", *_CONFIGS, DEEPCACHE]

    def unavailable(self, value, hw, pipe=None):
        if value == "none":
            return None
        if value == DEEPCACHE:
            return deepcache.unavailable_on(pipe)
        import diffusers

        if not hasattr(diffusers, _CONFIGS[value]):
            return f"the installed diffusers has no {_CONFIGS[value]}"
        return _unavailable_on(pipe) if pipe is not None else None

    def apply(self, pipe, value, settings, hw):
        net = denoiser(pipe)
        if getattr(net, "is_cache_enabled", False):
            net.disable_cache()
        deepcache.disable(pipe)
        if value == DEEPCACHE:
            deepcache.enable(pipe, value_of(settings, "cache_interval"), value_of(settings, "cache_branch"))
        elif value == "first-block":
            from diffusers import FirstBlockCacheConfig

            net.enable_cache(FirstBlockCacheConfig(threshold=value_of(settings, "cache_threshold")))
        elif value == "taylorseer":
            from diffusers import TaylorSeerCacheConfig

            net.enable_cache(TaylorSeerCacheConfig(
                cache_interval=value_of(settings, "cache_interval"),
                disable_cache_before_step=value_of(settings, "cache_warmup_steps")))

    def read(self, pipe):
        if deepcache.helper_of(pipe) is not None:
            return DEEPCACHE
        config = _config(pipe)
        return next((value for value, name in _CONFIGS.items() if type(config).__name__ == name), "none")


def _config(pipe):
    # diffusers keeps the enabled cache's config on the model (CacheMixin._cache_config) and no public reader.
    net = denoiser(pipe)
    return getattr(net, "_cache_config", None) if getattr(net, "is_cache_enabled", False) else None


class _CacheOption(Knob):
    stage = "cache"
    exact = False
    attribute: str  # the config field this option sets

    def read(self, pipe):
        if deepcache.helper_of(pipe) is not None:
            return deepcache.option(pipe, self.name)
        return getattr(_config(pipe), self.attribute, None)


@register
class CacheThreshold(_CacheOption):
    name = "cache_threshold"
    help = "First Block Cache: reuse the cached blocks while the first block's residual changes less than this"
    annotation = Annotated[float, Field(gt=0, le=1)]
    default = 0.05
    parent = ("cache", frozenset({"first-block"}))
    attribute = "threshold"

    def choices(self):
        return [0.05, 0.08, 0.12, 0.2]

    def domain(self, hw, pipe=None):
        return FloatRange(0.02, 0.3, log=True)


@register
class CacheInterval(_CacheOption):
    name = "cache_interval"
    help = "TaylorSeer, DeepCache: steps between full computations of the blocks"
    annotation = Annotated[int, Field(strict=True, ge=1, le=100)]
    default = 5
    parent = ("cache", frozenset({"taylorseer", DEEPCACHE}))
    attribute = "cache_interval"

    def choices(self):
        return [2, 3, 5, 8]

    def domain(self, hw, pipe=None):
        return IntRange(2, 8)


@register
class CacheWarmupSteps(_CacheOption):
    name = "cache_warmup_steps"
    help = "TaylorSeer: steps computed in full before the cache starts predicting"
    # At least one: with none, diffusers' TaylorSeer predicts at step 0 from nothing whenever the interval is over 1
    # ("Cannot predict without prior initialization/update."; step 0 computes only when (0 - 0 - 1) % interval == 0).
    annotation = PositiveInt
    default = 3
    parent = ("cache", frozenset({"taylorseer"}))
    attribute = "disable_cache_before_step"

    def choices(self):
        return [1, 3, 5]

    def domain(self, hw, pipe=None):
        return IntRange(1, 8)


@register
class CacheBranch(_CacheOption):
    name = "cache_branch"
    help = "DeepCache: the UNet skip branch rerun between full steps (0: the shallowest, the most reused)"
    annotation = NonNegativeInt
    default = 0
    parent = ("cache", frozenset({DEEPCACHE}))
    attribute = "cache_branch"  # no diffusers config has one: it reads as None unless DeepCache is on

    def choices(self):
        return [0, 1, 3]

    def unavailable(self, value, hw, pipe=None):
        if pipe is not None and deepcache.unavailable_on(pipe) is None and value >= deepcache.branches(pipe):
            net = denoiser(pipe)
            return (f"{type(net).__name__} has {len(net.down_blocks)} down blocks, so DeepCache branches "
                    f"0..{deepcache.branches(pipe) - 1}")
        return None

    def domain(self, hw, pipe=None):
        usable = pipe is not None and deepcache.unavailable_on(pipe) is None
        return IntRange(0, deepcache.branches(pipe) - 1 if usable else max(self.choices()))
