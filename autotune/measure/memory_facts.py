"""What the memory model needs to know about a pipeline, read once in the worker that loaded it.

The parent never loads a model: the worker's `Describe` answers with these facts as plain data (`ModelFacts.to_dict`)
and `measure.memory_model` does the arithmetic. Everything here is read from the modules' real parameters and configs.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


@dataclass(frozen=True)
class ComponentSize:
    """One module of the pipeline: its floating-point elements (what a precision change converts) and bytes."""

    elements: int
    bytes: int  # parameters and buffers as loaded
    other_bytes: int = 0  # integer buffers, which no precision change touches
    linear_elements: int = 0  # weights of Linear layers: what torchao quantizes
    cast_elements: int = 0  # weights of Linear and Conv layers outside norms/embeddings: what fp8 storage casts
    largest_block_elements: int = 0  # the largest entry of a block list: what group/sequential offload moves at once
    largest_leaf_elements: int = 0  # the largest module without children


@dataclass(frozen=True)
class AttentionSite:
    """A self-attention layer of the denoiser: its heads, and how many latent pixels make one of its tokens."""

    heads: int
    head_dim: int
    pixels_per_token: int


@dataclass(frozen=True)
class ModelFacts:
    components: dict[str, ComponentSize]
    denoiser: str  # the component's name: unet or transformer
    attention: tuple[AttentionSite, ...] = ()
    # Skip connections a UNet keeps for its up path, per latent pixel (sum of channels x pixel fraction); 0 for a DiT.
    skip_channels_per_pixel: float = 0.0
    hidden_per_token: int = 0  # a DiT's widest hidden state per token (feed-forward inner size); 0 for a UNet
    latent_channels: int = 4
    vae_scale_factor: int = 8
    vae_channels: tuple[int, ...] = ()  # the VAE decoder's block channels, full resolution first
    vae_force_upcast: bool = False
    vae_tile_pixels: int | None = None  # the side of a VAE tile, in pixels
    guidance_batch: int = 1  # 2 when the pipeline doubles the batch for classifier-free guidance by default
    baseline_bytes: int | None = None  # what the worker holds besides the pristine model (CPU), measured at load

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelFacts:
        values = dict(data)
        values["components"] = {name: ComponentSize(**size) for name, size in data["components"].items()}
        values["attention"] = tuple(AttentionSite(**site) for site in data.get("attention", ()))
        values["vae_channels"] = tuple(data.get("vae_channels", ()))
        return cls(**values)


# diffusers' layerwise casting leaves these in the compute dtype (`DEFAULT_SKIP_MODULES_PATTERN`, and the models'
# own `_skip_layerwise_casting_patterns`, which are subsets of it).
_UNCAST = re.compile(r"pos_embed|patch_embed|norm|(^|\.)proj_in$|(^|\.)proj_out$")


def tensor_bytes(pipe: DiffusionPipeline) -> int:
    """Bytes of the parameters and buffers of a pipeline's modules, each tensor's storage counted once."""
    import torch

    seen: dict[int, int] = {}
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in [*component.parameters(), *component.buffers()]:
                if tensor.is_meta:  # a model read without its weights holds none
                    continue
                storage = tensor.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def facts_of(pipe: DiffusionPipeline, baseline_bytes: int | None = None) -> ModelFacts:
    """The sizes and shapes of `pipe` that set its memory: per-component elements, attention layers, the VAE."""
    import inspect

    from autotune.pipelines import default_guidance, denoiser, denoiser_name

    net = denoiser(pipe)
    vae = getattr(pipe, "vae", None)
    vae_config = getattr(vae, "config", None) or {}
    latent_channels = int(vae_config.get("latent_channels", 4) if vae_config else 4)
    guidance = default_guidance(type(pipe).__name__)
    # Pipelines with classifier-free guidance run the denoiser on the conditional and unconditional halves at once;
    # a guidance-distilled DiT (FLUX) takes the scale as an input and has no such property.
    doubles = hasattr(type(pipe), "do_classifier_free_guidance") and guidance is not None and guidance > 1
    tile = getattr(vae, "tile_sample_min_size", None)
    return ModelFacts(
        components={name: component_size(module) for name, module in pipe.components.items() if _is_module(module)},
        denoiser=denoiser_name(pipe),
        attention=tuple(_attention_sites(net, latent_channels)),
        skip_channels_per_pixel=_skip_channels(net),
        hidden_per_token=_hidden_per_token(net),
        latent_channels=latent_channels,
        vae_scale_factor=int(getattr(pipe, "vae_scale_factor", 8) or 8),
        vae_channels=tuple(int(c) for c in vae_config.get("block_out_channels", ())) if vae_config else (),
        vae_force_upcast=bool(vae_config.get("force_upcast", False)) if vae_config else False,
        vae_tile_pixels=int(tile[0] if isinstance(tile, (list, tuple)) else tile) if tile else None,
        guidance_batch=2 if doubles and "guidance_scale" in inspect.signature(type(pipe).__call__).parameters else 1,
        baseline_bytes=baseline_bytes,
    )


def _is_module(value: object) -> bool:
    import torch

    return isinstance(value, torch.nn.Module)


def component_size(module) -> ComponentSize:
    """Elements and bytes of one module, each tensor's storage counted once."""
    import torch

    seen: set[int] = set()
    elements = total = other = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        # A meta tensor (a model read without its weights) has no storage address: it counts as itself.
        key = id(tensor) if tensor.is_meta else tensor.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += tensor.untyped_storage().nbytes()
        if tensor.is_floating_point():
            elements += tensor.numel()
        else:
            other += tensor.untyped_storage().nbytes()
    linear = cast = 0
    layers = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    for name, layer in module.named_modules():
        if isinstance(layer, layers) and layer.weight is not None:
            if isinstance(layer, torch.nn.Linear):
                linear += layer.weight.numel()
            if not _UNCAST.search(name):
                cast += layer.weight.numel()
    blocks = [block for child in module.modules() if isinstance(child, torch.nn.ModuleList) for block in child]
    return ComponentSize(
        elements=elements, bytes=total, other_bytes=other, linear_elements=linear, cast_elements=cast,
        largest_block_elements=max((_elements(block) for block in blocks), default=elements),
        largest_leaf_elements=max((_elements(m) for m in module.modules() if not list(m.children())), default=0),
    )


def _elements(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _attention_sites(net, latent_channels: int) -> list[AttentionSite]:
    """Every self-attention layer of the denoiser with the resolution it runs at.

    A UNet's block i runs at 1/2^i of the latent's side (its up blocks mirror the down blocks, the mid block sits at
    the bottom); a DiT's tokens are patches of the latent, `patch_size` squared pixels times the channels it packs
    (FLUX packs 2x2 latent pixels into 64 input channels with a patch size of 1).
    """
    down = len(getattr(net, "down_blocks", ()) or ())
    up = len(getattr(net, "up_blocks", ()) or ())
    config = net.config
    patch = config.get("patch_size", 1) or 1
    patch_pixels = patch[-1] * patch[-2] if isinstance(patch, (list, tuple)) else patch * patch
    packed = max(1, int(config.get("in_channels", latent_channels) or latent_channels) // max(1, latent_channels))
    sites = []
    for name, module in net.named_modules():
        heads, inner = getattr(module, "heads", None), getattr(module, "inner_dim", None)
        if not isinstance(heads, int) or not isinstance(inner, int) or getattr(module, "is_cross_attention", False):
            continue
        if down:
            parts = name.split(".")
            if parts[0] == "down_blocks":
                level = int(parts[1])
            elif parts[0] == "up_blocks":
                level = up - 1 - int(parts[1])
            else:
                level = down - 1
            pixels = 4**level
        else:
            pixels = patch_pixels * packed
        sites.append(AttentionSite(heads=heads, head_dim=inner // max(1, heads), pixels_per_token=pixels))
    return sites


def _skip_channels(net) -> float:
    """A UNet's skip connections per latent pixel: each down block keeps one tensor per resnet and one per
    downsampler at its level's resolution, for the up path (diffusers' `down_block_res_samples`)."""
    config = net.config
    channels = config.get("block_out_channels")
    if not channels or not hasattr(net, "down_blocks"):
        return 0.0
    layers = config.get("layers_per_block", 1)
    layers = layers if isinstance(layers, (list, tuple)) else [layers] * len(channels)
    total = float(channels[0])  # conv_in's output
    for level, (width, count) in enumerate(zip(channels, layers, strict=False)):
        kept = count + (1 if level < len(channels) - 1 else 0)
        total += kept * width / 4**level
    return total


def _hidden_per_token(net) -> int:
    """A DiT's widest per-token activation: the feed-forward's inner width (the first Linear of a block's `ff`)."""
    if hasattr(net, "down_blocks"):
        return 0
    import torch

    widths = [m.out_features for name, m in net.named_modules() if ".ff." in f".{name}." and
              isinstance(m, torch.nn.Linear)]
    return max(widths, default=0)
