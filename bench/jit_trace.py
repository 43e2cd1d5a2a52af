"""`torch.jit.trace` against `torch.compile` on the denoiser, the way diffusers' old speed guide traced SD's UNet
(x2.88 -> x2.96 on a TITAN RTX): the same UNet call timed eager, traced (and frozen), and compiled, in one process.

    python bench/jit_trace.py [--model builtin:tiny-sd] [--size 64] [--calls 30]

Prints each variant's median seconds per UNet call, its ratio to eager, its first call (trace or compile included)
and the largest difference of its output from eager's. Run it alone: two cores saturate easily.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch


class Step(torch.nn.Module):
    """The UNet call as a tensor in, tensor out module: what tracing records."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.unet(latents, timestep, text, return_dict=False)[0]


def timed(call, calls: int) -> tuple[float, float]:
    """(first call's seconds, median of the next `calls`)."""
    started = time.perf_counter()
    call()
    first = time.perf_counter() - started
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return first, statistics.median(seconds)


def main() -> None:
    from autotune import pipelines

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-sd")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    pipe = pipelines.load(args.model)
    unet = pipe.unet.eval()
    side = args.size // pipe.vae_scale_factor
    # One denoising step under classifier-free guidance: the latents twice, the prompt's and the empty embedding.
    latents = torch.randn(2, unet.config.in_channels, side, side)
    timestep = torch.tensor(500)
    text = torch.randn(2, pipe.tokenizer.model_max_length, unet.config.cross_attention_dim)
    inputs = (latents, timestep, text)

    with torch.no_grad():  # inference_mode, too, for eager: TorchScript runs slow after inference tensors
        eager = unet(*inputs, return_dict=False)[0]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings, and torch.jit's deprecation
        started = time.perf_counter()
        traced = torch.jit.freeze(torch.jit.trace(Step(unet).eval(), inputs, check_trace=False))
        trace_s = time.perf_counter() - started
    compiled = torch.compile(unet)
    variants = {
        "eager": lambda: unet(*inputs, return_dict=False)[0],
        "jit.trace + freeze": lambda: traced(*inputs),
        "torch.compile": lambda: compiled(*inputs, return_dict=False)[0],
    }
    rows = []
    for name, call in variants.items():
        with torch.no_grad():
            first, median = timed(call, args.calls)
            difference = (call() - eager).abs().max().item()
        rows.append((name, first + (trace_s if name.startswith("jit") else 0.0), median, difference))
    base = rows[0][2]
    print(f"{args.model}, {args.size}x{args.size}, UNet call at batch 2 (CFG); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'variant':20s} {'median s/call':>14s} {'vs eager':>9s} {'first call s':>13s} {'max |diff|':>11s}")
    for name, first, median, difference in rows:
        print(f"{name:20s} {median:14.4f} {base / median:8.2f}x {first:13.2f} {difference:11.2e}")


if __name__ == "__main__":
    main()
