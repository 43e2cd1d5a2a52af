"""Train a tiny FLUX (transformer, CLIP and T5 text encoders) on the coloured-shape scenes of
`autotune.pipelines.shapes`.

    python training/train_tiny_flux.py --vae autotune/pipelines/weights/tiny-sd/vae \
        --out autotune/pipelines/weights/tiny-flux --minutes 45

FLUX's architecture (double- and single-stream blocks, 2x2-packed latents, rotary position ids, a pooled CLIP vector
and a T5 sequence) trained with rectified flow, as FLUX and SD3 are: the transformer predicts the velocity
noise - x0 at sigma drawn from a logit-normal (SD3's choice). It has no guidance embedding (as FLUX.1-schnell: FLUX.1-
dev's is distilled from a guided teacher, which this budget cannot afford); 10% of captions are dropped to the empty
prompt, so diffusers' true CFG (`true_cfg_scale` with a negative prompt) works too. The VAE is the trained tiny-sd's,
frozen, with FLUX's `shift_factor` and `scaling_factor` set from its latents' mean and spread. Both text encoders are
trained with the transformer (FLUX's are pretrained and frozen; these have nothing to start from), and an EMA copy of
all three is what is saved. Seeded; budgeted by wall time, so a busy machine trains fewer steps rather than longer.

The folder written loads with `FluxPipeline.from_pretrained(out, tokenizer=clip_tokenizer(),
tokenizer_2=t5_tokenizer(64))` (the tokenizers are built in memory, so none is saved); call it with
`max_sequence_length=64`, the length the T5 encoder was trained at.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from torch.nn import functional as F
from train_tiny_sd import latent_pool, lr_factor, save_without_tokenizers, update_ema
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from autotune.pipelines import shapes
from autotune.pipelines.builtins import clip_tokenizer, t5_tokenizer

MAX_SEQUENCE_LENGTH = 64
TRANSFORMER = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=4, attention_head_dim=16,
                   num_attention_heads=8, joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=False,
                   axes_dims_rope=(4, 6, 6))
CLIP = dict(vocab_size=514, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, projection_dim=64, bos_token_id=0, eos_token_id=1, pad_token_id=1)
T5 = dict(vocab_size=259, d_model=64, d_ff=256, d_kv=16, num_layers=4, num_heads=4, pad_token_id=0, eos_token_id=1,
          decoder_start_token_id=0)
# FLUX.1-dev's scheduler config: the shift follows the image's token count (16 here, so about 1.6).
SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                 max_image_seq_len=4096)


def save_pipeline(out: Path, vae: AutoencoderKL, transformer: FluxTransformer2DModel, clip: CLIPTextModel,
                  t5: T5EncoderModel, dtype: torch.dtype) -> None:
    """The pipeline's components under `out` (safetensors in `dtype`), without tokenizer folders."""
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=copy.deepcopy(vae).to(dtype),
        text_encoder=copy.deepcopy(clip).to(dtype), tokenizer=clip_tokenizer(),
        text_encoder_2=copy.deepcopy(t5).to(dtype), tokenizer_2=t5_tokenizer(MAX_SEQUENCE_LENGTH),
        transformer=copy.deepcopy(transformer).to(dtype))
    save_without_tokenizers(pipe, out, ("tokenizer", "tokenizer_2"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", default="autotune/pipelines/weights/tiny-sd/vae")
    parser.add_argument("--out", default="autotune/pipelines/weights/tiny-flux")
    parser.add_argument("--minutes", type=float, default=45.0, help="wall time for everything")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--pool", type=int, default=20000)
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0)
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="of the saved weights")
    parser.add_argument("--log", default="training/tiny-flux-log.txt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="train --out's models further")
    args = parser.parse_args()
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.time()
    out, dtype = Path(args.out), getattr(torch, args.dtype)

    vae = AutoencoderKL.from_pretrained(args.vae, torch_dtype=torch.float32).eval().requires_grad_(False)
    means, stds, scenes = latent_pool(vae, args.pool, generator)
    if args.resume:  # the latents' shift and scale the saved transformer was trained with
        saved = AutoencoderKL.load_config(out / "vae")
        shift, scaling = saved["shift_factor"], saved["scaling_factor"]
    else:
        with torch.no_grad():
            sample = means[:2048] + stds[:2048] * torch.randn(means[:2048].shape, generator=generator)
            shift, scaling = sample.mean().item(), 1.0 / sample.std().item()
    vae.register_to_config(shift_factor=shift, scaling_factor=scaling)
    print(f"encoded a pool of {args.pool} scenes in {time.time() - start:.0f}s; shift {shift:.4f} scaling "
          f"{scaling:.4f}", flush=True)

    clip_tok, t5_tok = clip_tokenizer(), t5_tokenizer(MAX_SEQUENCE_LENGTH)
    vocabulary = shapes.all_scenes()
    prompts = [shapes.caption(scene) for scene in vocabulary] + [""]  # the last is the dropped caption
    # Tokenized as FluxPipeline does: CLIP padded to its 77, T5 to max_sequence_length, neither with a mask.
    clip_ids = clip_tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    t5_ids = t5_tok(prompts, padding="max_length", max_length=MAX_SEQUENCE_LENGTH, truncation=True,
                    return_tensors="pt").input_ids
    index = {scene: i for i, scene in enumerate(vocabulary)}
    scene_ids = torch.tensor([index[scene] for scene in scenes])
    latent_h, latent_w = means.shape[-2:]
    img_ids = FluxPipeline._prepare_latent_image_ids(1, latent_h // 2, latent_w // 2, "cpu", torch.float32)
    txt_ids = torch.zeros(MAX_SEQUENCE_LENGTH, 3)

    if args.resume:  # the saved (EMA) weights, trained further; the optimizer and its schedule start again
        transformer = FluxTransformer2DModel.from_pretrained(out / "transformer", dtype=torch.float32)
        clip = CLIPTextModel.from_pretrained(out / "text_encoder", dtype=torch.float32)
        t5 = T5EncoderModel.from_pretrained(out / "text_encoder_2", dtype=torch.float32)
    else:
        torch.manual_seed(0)
        transformer = FluxTransformer2DModel(**TRANSFORMER)
        torch.manual_seed(2)
        clip = CLIPTextModel(CLIPTextConfig(**CLIP))
        torch.manual_seed(3)
        t5 = T5EncoderModel(T5Config(**T5))
    models = (transformer.train(), clip.train(), t5.train())
    emas = tuple(copy.deepcopy(model).eval().requires_grad_(False) for model in models)
    params = [p for model in models for p in model.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    budget = args.minutes * 60 - (time.time() - start)
    train_start, step, loss_avg, last_save = time.time(), 0, 0.0, time.time()
    while (elapsed := time.time() - train_start) < budget:
        for group in optimizer.param_groups:
            group["lr"] = args.lr * lr_factor(step, elapsed / budget, 300)
        pick = torch.randint(len(scenes), (args.batch,), generator=generator)
        latents = means[pick] + stds[pick] * torch.randn(means[pick].shape, generator=generator)
        x0 = FluxPipeline._pack_latents((latents - shift) * scaling, args.batch, latents.shape[1], latent_h, latent_w)
        prompt = scene_ids[pick]
        prompt = torch.where(torch.rand(args.batch, generator=generator) < 0.1, len(vocabulary), prompt)
        noise = torch.randn(x0.shape, generator=generator)
        sigma = torch.sigmoid(torch.randn(args.batch, generator=generator))
        noisy = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        velocity = transformer(hidden_states=noisy, timestep=sigma, guidance=None,
                               pooled_projections=clip(clip_ids[prompt]).pooler_output,
                               encoder_hidden_states=t5(t5_ids[prompt])[0], txt_ids=txt_ids, img_ids=img_ids).sample
        loss = F.mse_loss(velocity, noise - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        decay = update_ema(emas, models, step, args.ema)
        loss_avg = 0.99 * loss_avg + 0.01 * loss.item()
        if step % 50 == 0:
            print(f"step {step} loss {loss_avg / (1 - 0.99**step):.4f} lr {optimizer.param_groups[0]['lr']:.2e} "
                  f"ema {decay:.4f} {time.time() - train_start:.0f}s", flush=True)
        if time.time() - last_save > args.checkpoint_minutes * 60:
            save_pipeline(out, vae, *emas, dtype)
            last_save = time.time()
            print(f"checkpoint at step {step} saved to {out}", flush=True)
    save_pipeline(out, vae, *emas, dtype)
    counts = [sum(p.numel() for p in model.parameters()) for model in (*models, vae)]
    size = sum(f.stat().st_size for f in out.rglob("*.safetensors"))
    log = (f"command: python {' '.join(sys.argv)} (seed {args.seed}, torch threads 2)\n"
           f"vae: {args.vae}, frozen; shift_factor {shift:.4f}, scaling_factor {scaling:.4f}\n"
           f"transformer+text: {step} steps of batch {args.batch} in {time.time() - train_start:.0f}s "
           f"(+{train_start - start:.0f}s encoding the pool), final loss (EMA of batch losses) "
           f"{loss_avg / (1 - 0.99**max(step, 1)):.4f}, lr {args.lr}, ema {args.ema}\n"
           f"parameters: transformer {counts[0]:,}, clip {counts[1]:,}, t5 {counts[2]:,}, vae {counts[3]:,}\n"
           f"weights: {size / 1e6:.2f} MB of {args.dtype} safetensors\n"
           f"wall time: {(time.time() - start) / 60:.1f} min\n")
    with open(args.log, "a" if args.resume else "w") as file:  # a resumed run adds to the log of the runs before
        file.write(log)
    print(log, end="")


if __name__ == "__main__":
    main()
