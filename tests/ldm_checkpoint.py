"""A Stable Diffusion pipeline written as one original-format (LDM) checkpoint, the `.safetensors` file community
models ship as: what diffusers' `from_single_file` reads. The key names follow the original layout (UNet under
`model.diffusion_model.`, VAE under `first_stage_model.`, CLIP under `cond_stage_model.transformer.`), for any block
count and layers per block, so a tiny pipeline can be written this way; `test_hub_models.py` checks that diffusers'
own conversion reads every weight back unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
          ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def save_single_file(pipe: StableDiffusionPipeline, path: Path) -> Path:
    """Write `pipe`'s UNet, VAE and text encoder to `path` as one original-format safetensors checkpoint."""
    unet = _unet_prefixes(pipe.unet.config)
    # Only the residual blocks' layers are renamed: a transformer block has a norm1 of its own.
    weights = {f"model.diffusion_model.{_rename(key, unet, RESNET if '.resnets.' in key else ())}": value
               for key, value in pipe.unet.state_dict().items()}
    for key, value in pipe.vae.state_dict().items():
        name = _rename(key, _vae_prefixes(pipe.vae.config), (("conv_shortcut", "nin_shortcut"),))
        if "mid.attn_1." in name:
            name = _rename(name, {}, VAE_ATTENTION)
            value = value.reshape(*value.shape, 1, 1) if value.ndim == 2 else value  # 1x1 convolutions there
        weights[f"first_stage_model.{name}"] = value
    for key, value in pipe.text_encoder.state_dict().items():
        # The original layout nests CLIP's layers under text_model (transformers 5.6 flattened CLIPTextModel).
        key = key if key.startswith("text_model.") else f"text_model.{key}"
        weights[f"cond_stage_model.transformer.{key}"] = value
    save_file({key: value.contiguous() for key, value in weights.items()}, str(path))
    return path


def _rename(key: str, prefixes: dict[str, str], parts: tuple[tuple[str, str], ...]) -> str:
    for diffusers_prefix, original_prefix in prefixes.items():
        if key.startswith(diffusers_prefix):
            key = original_prefix + key[len(diffusers_prefix):]
            break
    for diffusers_part, original_part in parts:
        key = key.replace(f".{diffusers_part}.", f".{original_part}.")
    return key


def _unet_prefixes(config) -> dict[str, str]:
    per_block = config.layers_per_block
    prefixes = {"conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.",
                "time_embedding.linear_2.": "time_embed.2.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
                "mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
                "mid_block.resnets.1.": "middle_block.2."}
    for i in range(len(config.down_block_types)):
        for j in range(per_block):
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{1 + (per_block + 1) * i + j}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{1 + (per_block + 1) * i + j}.1."
        prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(per_block + 1) * (i + 1)}.0.op."
    for i, kind in enumerate(config.up_block_types):
        for j in range(per_block + 1):
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{(per_block + 1) * i + j}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{(per_block + 1) * i + j}.1."
        upsampler = 2 if kind.startswith("CrossAttn") else 1
        prefixes[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{(per_block + 1) * i + per_block}.{upsampler}."
    return prefixes


def _vae_prefixes(config) -> dict[str, str]:
    levels = len(config.block_out_channels)
    prefixes = {}
    for part in ("encoder", "decoder"):
        prefixes[f"{part}.conv_norm_out."] = f"{part}.norm_out."
        prefixes[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
        for k in range(2):
            prefixes[f"{part}.mid_block.resnets.{k}."] = f"{part}.mid.block_{k + 1}."
    for i in range(levels):
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{levels - 1 - i}.upsample."
        for j in range(config.layers_per_block + 1):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{levels - 1 - i}.block.{j}."
    return prefixes


def all_weights(pipe: StableDiffusionPipeline) -> dict[str, torch.Tensor]:
    """Every weight of the three models, by component and name: what a loaded copy must equal."""
    return {f"{name}.{key}": value for name in ("unet", "vae", "text_encoder")
            for key, value in getattr(pipe, name).state_dict().items()}
