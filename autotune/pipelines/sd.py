"""Stable Diffusion built-ins with seeded random weights: `builtin:tiny-sd-random` for tests that need only speed
(dozens of trials on two cores; the trained `builtin:tiny-sd` is in `pipelines.trained`), and `builtin:sd15-arch` (SD
1.5's real shapes, an 860M-parameter UNet) for tuning speed and memory on a GPU without downloading weights.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from .builtins import BUILTIN_PREFIX, clip_tokenizer, named


def _scheduler() -> PNDMScheduler:
    # SD 1.5's scheduler config.
    return PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
    )


def _stable_diffusion(unet: dict, vae: dict, text: dict) -> StableDiffusionPipeline:
    tokenizer = clip_tokenizer()
    torch.manual_seed(0)
    unet_model = UNet2DConditionModel(**unet)
    torch.manual_seed(1)
    vae_model = AutoencoderKL(**vae)
    torch.manual_seed(2)
    text_model = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, **text))
    pipe = StableDiffusionPipeline(
        unet=unet_model, vae=vae_model, text_encoder=text_model.eval(), tokenizer=tokenizer,
        scheduler=_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    return pipe


def tiny_sd_random() -> StableDiffusionPipeline:
    """SD architecture at toy size: 4-block VAE (latents are image/8, as in SD), 2-level UNet, 5-layer CLIP."""
    return named(BUILTIN_PREFIX + "tiny-sd-random", _stable_diffusion(
        unet=dict(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16,
        ),
        vae=dict(
            block_out_channels=(16, 32, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=16,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            # Tiles of 32 px, so VAE tiling really engages on the 64 px default image (as it does above 512 px in SD).
            sample_size=32,
        ),
        text=dict(vocab_size=514, hidden_size=32, intermediate_size=37, num_hidden_layers=5, num_attention_heads=4,
                  max_position_embeddings=77, projection_dim=32),
    ))


def sd15_arch() -> StableDiffusionPipeline:
    """Stable Diffusion 1.5's architecture (UNet, VAE, CLIP ViT-L text encoder) with random weights."""
    return named(BUILTIN_PREFIX + "sd15-arch", _stable_diffusion(
        unet=dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
        vae=dict(
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        ),
        text=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, max_position_embeddings=77, projection_dim=768),
    ))
