"""Train a tiny Stable Diffusion (VAE, UNet, CLIP text encoder) on the coloured-shape scenes of
`autotune.pipelines.shapes`.

    python training/train_tiny_sd.py --out autotune/pipelines/weights/tiny-sd --minutes 60

Seeded; budgeted by wall time (`--minutes` for everything, `--vae-minutes` of it for the VAE), so a busy machine
trains fewer steps rather than longer. Stages:

1. an `AutoencoderKL` (32x32 RGB -> 4x8x8 latents, two downsamples), reconstruction (MSE) plus a small KL; its
   `scaling_factor` is set so the scaled latents have unit standard deviation;
2. a `UNet2DConditionModel` with cross-attention and a tiny `CLIPTextModel`, trained jointly on the frozen VAE's
   latents with SD 1.5's noise schedule (scaled_linear betas 0.00085-0.012, 1000 steps, epsilon prediction), 10% of
   captions dropped to the empty prompt for classifier-free guidance, and an EMA copy of both, which is what is saved
   (every `--checkpoint-minutes` and at the end).

The folder written loads with
`StableDiffusionPipeline.from_pretrained(out, tokenizer=clip_tokenizer(), safety_checker=None,
feature_extractor=None, requires_safety_checker=False)` (the tokenizer is built in memory, so none is saved).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from torch.nn import functional as F
from transformers import CLIPTextConfig, CLIPTextModel

from autotune.pipelines import shapes
from autotune.pipelines.builtins import clip_tokenizer

VAE = dict(in_channels=3, out_channels=3, block_out_channels=(16, 32, 64), layers_per_block=1, latent_channels=4,
           down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
           norm_num_groups=16, sample_size=32)
UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(64, 128), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32)
TEXT = dict(vocab_size=514, hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
            max_position_embeddings=77, projection_dim=64, bos_token_id=0, eos_token_id=1, pad_token_id=1)
# SD 1.5's noise schedule, with the scheduler SDXL ships (Euler) on the timesteps diffusers' Euler defaults to
# ("linspace"). SD 1.5 ships PNDM on "leading" timesteps: this small model's noise predictions, under SD's guidance of
# 7.5, are not smooth enough in time for PNDM's 4th-order extrapolation (it never converged), and DPM-Solver++ 2M
# diverged with steps on "leading" timesteps even unguided. The built-in's default guidance is 2 (`trained.py`): at
# 2 on "linspace" timesteps every scheduler the knob offers converges with steps (docs/benchmarks.md). The weights
# were trained under "leading"; the spacing only picks which timesteps sampling visits.
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 steps_offset=1, timestep_spacing="linspace", prediction_type="epsilon")


def lr_factor(step: int, fraction: float, warmup: int) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to 10% over the stage's wall-time `fraction`."""
    return min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, fraction))))


def train_vae(minutes: float, batch: int, generator: torch.Generator, kl_weight: float,
              lr: float) -> tuple[AutoencoderKL, str]:
    torch.manual_seed(1)
    vae = AutoencoderKL(**VAE)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    start, step, mse_avg, kl_avg = time.time(), 0, 0.0, 0.0
    while (elapsed := time.time() - start) < minutes * 60:
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(step, elapsed / (minutes * 60), 100)
        images = shapes.render_batch(shapes.sample(batch, generator), generator=generator)
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample(generator)).sample
        mse = F.mse_loss(recon, images)
        kl = posterior.kl().mean() / posterior.mean[0].numel()  # per latent element
        loss = mse + kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        step += 1
        mse_avg, kl_avg = 0.98 * mse_avg + 0.02 * mse.item(), 0.98 * kl_avg + 0.02 * kl.item()
        if step % 100 == 0:
            print(f"vae step {step} mse {mse_avg / (1 - 0.98**step):.5f} kl {kl_avg / (1 - 0.98**step):.3f} "
                  f"{time.time() - start:.0f}s", flush=True)
    vae.eval()
    with torch.no_grad():  # the scaling factor that gives the diffusion model unit-variance latents, as SD's 0.18215
        images = shapes.render_batch(shapes.sample(1024, generator), generator=generator)
        latents = vae.encode(images).latent_dist.sample(generator)
        recon = vae.decode(vae.encode(images).latent_dist.mode()).sample.clamp(-1, 1)
        mse = F.mse_loss(recon, images).item()
    scaling = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scaling)
    summary = (f"vae: {step} steps of batch {batch} in {time.time() - start:.0f}s, final recon MSE {mse:.5f} "
               f"(PSNR {10 * math.log10(4 / mse):.1f} dB on [-1,1]), KL/elem {kl_avg / (1 - 0.98**step):.3f}, "
               f"latent std {latents.std().item():.3f} -> scaling_factor {scaling:.4f}")
    print(summary, flush=True)
    return vae, summary


@torch.no_grad()
def latent_pool(vae: AutoencoderKL, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list]:
    """`n` rendered training scenes encoded once: the posterior's mean and std (a sample is drawn per use)."""
    scenes = shapes.sample(n, generator)
    means, stds = [], []
    for i in range(0, n, 256):
        posterior = vae.encode(shapes.render_batch(scenes[i:i + 256], generator=generator)).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds), scenes


def save_pipeline(out: Path, vae: AutoencoderKL, unet: UNet2DConditionModel, text: CLIPTextModel,
                  dtype: torch.dtype) -> None:
    """The pipeline's components under `out` (safetensors in `dtype`), without a tokenizer folder."""
    scheduler = EulerDiscreteScheduler(**SCHEDULER)
    # Euler ignores these, but DDIM and PNDM built with `from_config` read them (SDXL's config has them too): without
    # clip_sample false DDIM would clip the latents to [-1, 1].
    scheduler.register_to_config(clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True)
    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae).to(dtype), unet=copy.deepcopy(unet).to(dtype),
        text_encoder=copy.deepcopy(text).to(dtype),
        tokenizer=clip_tokenizer(), scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    save_without_tokenizers(pipe, out, ("tokenizer",))


def save_without_tokenizers(pipe: DiffusionPipeline, out: Path, tokenizers: tuple[str, ...]) -> None:
    """`pipe` saved to `out` (beside it first, then renamed over it), without the tokenizer folders (autotune builds
    its tokenizers in memory) and without the `_name_or_path` of the temporary folder."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    for folder in tokenizers:
        shutil.rmtree(tmp / folder)
    index = json.loads((tmp / "model_index.json").read_text())
    index.pop("_name_or_path", None)
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


@torch.no_grad()
def update_ema(emas: tuple, models: tuple, step: int, ema: float) -> float:
    """Move each EMA copy towards its model (decay warmed up over the first steps); the decay used."""
    decay = min(ema, (1 + step) / (10 + step))
    for copy_, model in zip(emas, models, strict=True):
        torch._foreach_lerp_(list(copy_.parameters()), list(model.parameters()), 1 - decay)
    return decay


def train_unet(args: argparse.Namespace, vae: AutoencoderKL, minutes: float, generator: torch.Generator,
               out: Path, dtype: torch.dtype) -> str:
    start = time.time()
    means, stds, scenes = latent_pool(vae, args.pool, generator)
    scaling = vae.config.scaling_factor
    print(f"encoded a pool of {args.pool} scenes in {time.time() - start:.0f}s", flush=True)
    tokenizer = clip_tokenizer()

    def ids(prompts: list[str]) -> torch.Tensor:
        return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids

    vocabulary = shapes.all_scenes()
    caption_ids = ids([shapes.caption(scene) for scene in vocabulary])
    index = {scene: i for i, scene in enumerate(vocabulary)}
    scene_ids = torch.tensor([index[scene] for scene in scenes])
    empty_ids = ids([""])[0]

    if args.resume:  # the saved (EMA) weights, trained further; the optimizer and its schedule start again
        unet = UNet2DConditionModel.from_pretrained(out / "unet", dtype=torch.float32)
        text = CLIPTextModel.from_pretrained(out / "text_encoder", dtype=torch.float32)
    else:
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**UNET)
        torch.manual_seed(2)
        text = CLIPTextModel(CLIPTextConfig(**TEXT))
    unet.train()
    text.train()
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text).eval()
    for p in [*ema_unet.parameters(), *ema_text.parameters()]:
        p.requires_grad_(False)
    params = [*unet.parameters(), *text.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    noise_scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                    num_train_timesteps=1000, prediction_type="epsilon", clip_sample=False)
    snr_table = noise_scheduler.alphas_cumprod / (1 - noise_scheduler.alphas_cumprod)
    budget = minutes * 60 - (time.time() - start)
    train_start, step, loss_avg, last_save = time.time(), 0, 0.0, time.time()
    while (elapsed := time.time() - train_start) < budget:
        for group in optimizer.param_groups:
            group["lr"] = args.lr * lr_factor(step, elapsed / budget, 300)
        pick = torch.randint(len(scenes), (args.batch,), generator=generator)
        eps = torch.randn(means[pick].shape, generator=generator)
        latents = (means[pick] + stds[pick] * eps) * scaling
        tokens = caption_ids[scene_ids[pick]]
        drop = torch.rand(args.batch, generator=generator) < 0.1
        tokens = torch.where(drop[:, None], empty_ids[None], tokens)
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, 1000, (args.batch,), generator=generator)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, text(tokens)[0]).sample
        loss = F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))
        if args.min_snr:  # Min-SNR-gamma weighting (Hang et al. 2023) for epsilon prediction: min(SNR, gamma) / SNR
            snr = snr_table[timesteps]
            loss = loss * snr.clamp(max=args.min_snr) / snr
        loss = loss.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        decay = update_ema((ema_unet, ema_text), (unet, text), step, args.ema)
        loss_avg = 0.99 * loss_avg + 0.01 * loss.item()
        if step % 50 == 0:
            print(f"unet step {step} loss {loss_avg / (1 - 0.99**step):.4f} lr {optimizer.param_groups[0]['lr']:.2e} "
                  f"ema {decay:.4f} {time.time() - train_start:.0f}s", flush=True)
        if time.time() - last_save > args.checkpoint_minutes * 60:
            save_pipeline(out, vae, ema_unet, ema_text, dtype)
            last_save = time.time()
            print(f"checkpoint at step {step} saved to {out}", flush=True)
    save_pipeline(out, vae, ema_unet, ema_text, dtype)
    counts = (sum(p.numel() for p in unet.parameters()), sum(p.numel() for p in text.parameters()),
              sum(p.numel() for p in vae.parameters()))
    summary = (f"unet+text: {step} steps of batch {args.batch} in {time.time() - train_start:.0f}s "
               f"(+{train_start - start:.0f}s encoding the pool), final loss (EMA of batch losses) "
               f"{loss_avg / (1 - 0.99**max(step, 1)):.4f}, lr {args.lr}, ema {args.ema}, min-snr {args.min_snr}\n"
               f"parameters: unet {counts[0]:,}, text encoder {counts[1]:,}, vae {counts[2]:,}")
    print(summary, flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="autotune/pipelines/weights/tiny-sd")
    parser.add_argument("--minutes", type=float, default=60.0, help="wall time for everything")
    parser.add_argument("--vae-minutes", type=float, default=None, help="of --minutes, for the VAE (default 18%%)")
    parser.add_argument("--reuse-vae", action="store_true", help="load --out/vae instead of training one")
    parser.add_argument("--resume", action="store_true", help="train --out's UNet and text encoder further (with "
                        "--reuse-vae)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--vae-lr", type=float, default=2e-3)
    parser.add_argument("--kl-weight", type=float, default=2e-5, help="of the KL per latent element")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--min-snr", type=float, default=5.0, help="Min-SNR-gamma loss weighting; 0 for plain MSE")
    parser.add_argument("--pool", type=int, default=20000)
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0)
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float32", help="of the saved weights")
    parser.add_argument("--log", default="training/tiny-sd-log.txt")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.time()
    out, dtype = Path(args.out), getattr(torch, args.dtype)
    if args.reuse_vae:
        vae = AutoencoderKL.from_pretrained(out / "vae", torch_dtype=torch.float32)
        vae_summary = f"vae: reused {out / 'vae'} (scaling_factor {vae.config.scaling_factor:.4f})"
    else:
        vae_minutes = args.vae_minutes if args.vae_minutes is not None else 0.18 * args.minutes
        vae, vae_summary = train_vae(vae_minutes, args.vae_batch, generator, args.kl_weight, args.vae_lr)
    vae.eval().requires_grad_(False)
    unet_summary = train_unet(args, vae, args.minutes - (time.time() - start) / 60, generator, out, dtype)
    size = sum(f.stat().st_size for f in out.rglob("*.safetensors"))
    log = (f"command: python {' '.join(sys.argv)} (seed {args.seed}, torch threads 2)\n{vae_summary}\n"
           f"{unet_summary}\nweights: {size / 1e6:.2f} MB of {args.dtype} safetensors\n"
           f"wall time: {(time.time() - start) / 60:.1f} min\n")
    Path(args.log).write_text(log)
    print(log, end="")


if __name__ == "__main__":
    main()
