"""Tiny random-weight pipelines of several diffusers families, built the way diffusers' own tests build them.

Each builder is seeded (the same call gives the same weights), needs no download (tokenizers are built in memory)
and renders 64x64 images in well under a second per step on a CPU. Module-level functions, so a worker process can
build them by name.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLWan,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    LatentConsistencyModelPipeline,
    LCMScheduler,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from autotune.pipelines import tiny_sd_random
from autotune.pipelines.builtins import clip_tokenizer as tiny_tokenizer
from autotune.pipelines.builtins import t5_tokenizer

SIZE = 64  # image side: 8x8 latents under every builder's VAE


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _clip(seed: int, hidden: int = 32) -> CLIPTextModelWithProjection:
    torch.manual_seed(seed)
    config = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=514, hidden_size=hidden,
                            intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=77, projection_dim=hidden)
    return CLIPTextModelWithProjection(config).eval()


def _vae(seed: int, **extra) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(8, 16, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         sample_size=SIZE, **extra)


def tiny_lcm() -> LatentConsistencyModelPipeline:
    """LCM: tiny-sd's components under the LCM scheduler, which draws fresh noise at every step."""
    parts = tiny_sd_random().components
    torch.manual_seed(0)
    # LCM's guidance is an embedding of the scale (`time_cond_proj_dim`), not classifier-free guidance.
    unet = UNet2DConditionModel(**{**dict(parts["unet"].config), "time_cond_proj_dim": 32})
    scheduler = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                             set_alpha_to_one=False)
    return _quiet(LatentConsistencyModelPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False))


def tiny_sdxl_ancestral() -> StableDiffusionXLPipeline:
    """SDXL (two text encoders, size and crop conditioning) with Euler ancestral, a stochastic scheduler."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=SIZE // 8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64, norm_num_groups=16)
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                steps_offset=1)
    return _quiet(StableDiffusionXLPipeline(
        vae=_vae(1), text_encoder=_clip(2), text_encoder_2=_clip(3), tokenizer=tiny_tokenizer(),
        tokenizer_2=tiny_tokenizer(), unet=unet, scheduler=scheduler))


def tiny_sd3() -> StableDiffusion3Pipeline:
    """SD3 (an MMDiT transformer, flow matching) without its T5 encoder, which the pipeline allows; own guidance 7."""
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=SIZE // 8, patch_size=1, in_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=64, pooled_projection_dim=64, out_channels=4)
    vae = _vae(1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    return _quiet(StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_clip(2),
        tokenizer=tiny_tokenizer(), text_encoder_2=_clip(3), tokenizer_2=tiny_tokenizer(), text_encoder_3=None,
        tokenizer_3=None))


def tiny_img2img() -> StableDiffusionImg2ImgPipeline:
    """Image-to-image on tiny-sd's components: its call needs an input image."""
    return _quiet(StableDiffusionImg2ImgPipeline(**tiny_sd_random().components, requires_safety_checker=False))


def tiny_pixart_sigma() -> PixArtSigmaPipeline:
    """PixArt-Sigma (a DiT with cross-attention to T5, DPM-Solver). At this toy size its resolution binning has no
    table: the call needs `use_resolution_binning=False`, as diffusers' own tests pass it."""
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=SIZE // 8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
        caption_channels=32, in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6)
    torch.manual_seed(3)
    t5 = T5EncoderModel(T5Config(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, vocab_size=259,
                                 d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4)).eval()
    return _quiet(PixArtSigmaPipeline(transformer=transformer.eval(), vae=_vae(1),
                                      scheduler=DPMSolverMultistepScheduler(), text_encoder=t5,
                                      tokenizer=t5_tokenizer(64)))


# ---- Wan 2.1 text-to-video ----


def tiny_wan() -> WanPipeline:
    """Wan 2.1 text-to-video, as diffusers' tests/pipelines/wan/test_wan.py builds it: a 2-layer WanTransformer3DModel,
    the Wan VAE (temporal downsampling: `num_frames` is 4k + 1), a T5 encoder, flow matching with shift 7."""
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    torch.manual_seed(0)
    text_encoder = T5EncoderModel(T5Config(vocab_size=259, d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                                           pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
                                        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        rope_max_seq_len=32)
    return _quiet(WanPipeline(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
                              text_encoder=text_encoder, tokenizer=t5_tokenizer(), transformer_2=None))
