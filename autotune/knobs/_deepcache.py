"""DeepCache on a UNet pipeline: the cache knob's `deepcache` value (the `DeepCache` package's `DeepCacheSDHelper`).

Every `cache_interval`-th step runs the whole UNet; the steps between rerun only the skip branch above
`cache_branch` and reuse the deeper blocks' output from the last full step. The helper replaces the UNet's and its
blocks' `forward` with wrappers that close over it, which is where its state is read back; `disable()` puts the
original forwards back. Checked with DeepCache 0.1.1 on diffusers 0.42.1 (SD pipelines; DiT models have no such
UNet branches and get diffusers' own caches instead).
"""

from __future__ import annotations

import importlib.util
import inspect

from diffusers import DiffusionPipeline

from autotune.pipelines import denoiser

BRANCHES_PER_BLOCK = 3  # DeepCache numbers a down block's layers 0..2: cache_branch = block * 3 + layer
INSTALL = "DeepCache is not installed (pip install 'autotune[deepcache]')"


def unavailable_on(pipe: DiffusionPipeline | None) -> str | None:
    """Why DeepCache cannot run (here, or on `pipe`); None when it can."""
    if importlib.util.find_spec("DeepCache") is None:
        return INSTALL
    if pipe is None:
        return None
    net = denoiser(pipe)
    if not all(getattr(net, part, None) is not None for part in ("down_blocks", "mid_block", "up_blocks")):
        return f"{type(net).__name__} is no UNet with a middle block: DeepCache caches a UNet's deep blocks"
    return None


def branches(pipe: DiffusionPipeline) -> int:
    """How many skip branches `pipe`'s UNet has for `cache_branch` (three for each down block)."""
    return BRANCHES_PER_BLOCK * len(denoiser(pipe).down_blocks)


def enable(pipe: DiffusionPipeline, cache_interval: int, cache_branch: int) -> None:
    from DeepCache import DeepCacheSDHelper

    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=cache_interval, cache_branch_id=cache_branch)
    helper.enable()


def helper_of(pipe: DiffusionPipeline):
    """The DeepCache helper whose wrapper is the UNet's `forward` now, or None."""
    forward = vars(denoiser(pipe)).get("forward")  # the helper sets it on the instance; a plain model has none
    if not inspect.isfunction(forward):
        return None
    helper = inspect.getclosurevars(forward).nonlocals.get("self")
    return helper if type(helper).__name__ == "DeepCacheSDHelper" else None


def disable(pipe: DiffusionPipeline) -> None:
    helper = helper_of(pipe)
    if helper is not None:
        helper.disable()


def option(pipe: DiffusionPipeline, name: str) -> int | None:
    """An enabled helper's `cache_interval` or `cache_branch`, from its own parameters; None for another option, or
    when no helper is on."""
    helper = helper_of(pipe)
    if helper is None:
        return None
    params = helper.params
    if name == "cache_interval":
        return params["cache_interval"]
    if name == "cache_branch":
        return params["cache_block_id"] * BRANCHES_PER_BLOCK + params["cache_layer_id"]
    return None
