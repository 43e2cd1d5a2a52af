"""FLUX built-ins with seeded random weights: `builtin:tiny-flux-random` for tests that need only speed (the trained
`builtin:tiny-flux` is in `pipelines.trained`), `builtin:flux-arch` (the
FLUX.1-dev transformer's real dimensions) for tuning speed and memory on a GPU without downloading weights.

Both are the FLUX architecture: CLIP and T5 text encoders, a flow-matching scheduler, double-stream and
single-stream transformer blocks (tiny-flux has enough of each that skipping blocks, as a step cache does, shows).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from .builtins import BUILTIN_PREFIX, clip_tokenizer, named, t5_tokenizer


def _flux(transformer: dict, vae: dict, clip: dict, t5: dict, max_length: int) -> FluxPipeline:
    torch.manual_seed(0)
    transformer_model = FluxTransformer2DModel(**transformer)
    torch.manual_seed(1)
    vae_model = AutoencoderKL(**vae)
    torch.manual_seed(2)
    clip_model = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, **clip))
    torch.manual_seed(3)
    t5_model = T5EncoderModel(T5Config(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **t5))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae_model, text_encoder=clip_model.eval(),
                        tokenizer=clip_tokenizer(), text_encoder_2=t5_model.eval(),
                        tokenizer_2=t5_tokenizer(max_length), transformer=transformer_model)


def tiny_flux_random() -> FluxPipeline:
    """FLUX at toy size: 2 double-stream and 4 single-stream blocks, a 4-block VAE (latents image/8), 2-layer T5."""
    return named(BUILTIN_PREFIX + "tiny-flux-random", _flux(
        transformer=dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=4, attention_head_dim=16,
                         num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                         guidance_embeds=True, axes_dims_rope=(4, 6, 6)),
        vae=dict(block_out_channels=(16, 32, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=16,
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                 sample_size=32, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159,
                 scaling_factor=0.3611),
        clip=dict(vocab_size=514, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=77, projection_dim=32),
        t5=dict(vocab_size=259, d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4),
        max_length=64,
    ))


def flux_arch() -> FluxPipeline:
    """FLUX.1-dev's architecture (12B-parameter transformer, T5-XXL, CLIP-L, 16-channel VAE) with random weights.

    Built in bf16, FLUX's own dtype: 33.7 GB, where fp32 would take 67.5 GB, most of an 80 GB card. Built on the GPU
    when there is one (initialising 17B parameters on a CPU takes many minutes), then moved to host memory: a worker
    keeps this pristine copy and copies it for every trial, and neither may hold the GPU.
    """
    cuda = torch.cuda.is_available()
    pipe = built_in_bf16(flux_arch_layers, "cuda" if cuda else "cpu")
    if cuda:
        pipe.to("cpu")
        torch.cuda.empty_cache()
    return pipe


def built_in_bf16(make: Callable[[], DiffusionPipeline], device: str) -> DiffusionPipeline:
    """`make()` with its modules created in bf16 on `device`, so no fp32 copy ever exists."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            return make()
    finally:
        torch.set_default_dtype(previous)


def flux_arch_layers() -> FluxPipeline:
    """flux-arch made in the current dtype and device (`built_in_bf16` sets them)."""
    return named(BUILTIN_PREFIX + "flux-arch", _flux(
        transformer=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                         attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                         pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
        vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                 sample_size=1024, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159,
                 scaling_factor=0.3611),
        clip=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, max_position_embeddings=77, projection_dim=768),
        t5=dict(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_layers=24, num_heads=64,
                feed_forward_proj="gated-gelu"),
        max_length=512,
    ))
