"""Train the `autotune.pipelines.shapes.Judge` on scenes rendered by `autotune.pipelines.shapes.render` and save its
weights.

    python training/train_judge.py --out autotune/pipelines/weights/judge.safetensors --minutes 4

Seeded. Images are made on the fly; a few are blurred or noised so the judge also reads a diffusion model's slightly
soft output. Prints the judge's accuracy per attribute on fresh scenes and on the held-out prompts' scenes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from autotune.pipelines import shapes


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Blur a third of the batch a little and add light noise to all of it."""
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    pick = (torch.rand(len(images), 1, 1, 1, generator=generator) < 0.33).float()
    mixed = pick * (0.5 * images + 0.5 * blurred) + (1 - pick) * images
    noise = torch.randn(images.shape, generator=generator) * torch.rand(len(images), 1, 1, 1, generator=generator) * 0.1
    return mixed + noise


@torch.no_grad()
def accuracy(judge: shapes.Judge, scenes: list[shapes.Scene], generator: torch.Generator) -> dict[str, float]:
    judge.eval()
    logits = judge(shapes.render_batch(scenes, generator=generator))
    truth = shapes.labels(scenes)
    return {name: (logits[name].argmax(1) == truth[name]).float().mean().item() for name, _ in shapes.Judge.heads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="autotune/pipelines/weights/judge.safetensors")
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    judge = shapes.Judge()
    optimizer = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    start, step, deadline = time.time(), 0, time.time() + args.minutes * 60
    while time.time() < deadline:
        judge.train()
        scenes = shapes.sample(args.batch, generator, held_out=True)
        logits = judge(augment(shapes.render_batch(scenes, generator=generator), generator))
        truth = shapes.labels(scenes)
        loss = sum(F.cross_entropy(logits[name], truth[name]) for name, _ in shapes.Judge.heads)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)
    test = torch.Generator().manual_seed(args.seed + 1)
    fresh = accuracy(judge, shapes.sample(2000, test, held_out=True), test)
    held = accuracy(judge, sorted(shapes.HELD_OUT_SCENES) * 25, test)
    print(f"trained {step} steps in {time.time() - start:.0f}s")
    print("accuracy on fresh scenes:    " + ", ".join(f"{k} {v:.3f}" for k, v in fresh.items()))
    print("accuracy on held-out scenes: " + ", ".join(f"{k} {v:.3f}" for k, v in held.items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
