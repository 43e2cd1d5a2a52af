"""Check 4: fp16 on SD 1.x. With autotune's guard (`precision=fp16` keeps a `force_upcast` VAE in fp32) the images
are finite; without it (a plain `pipe.to(torch.float16)`, the VAE in fp16 too) SD 1.5's real VAE overflows and
decodes NaN / black images. The built-in has random weights, whose VAE may not overflow: the check records what it
saw, and the decoder's largest activation against fp16's limit, rather than asserting the failure.
"""

from __future__ import annotations

from .core import FAIL, PASS, Context

FP16_MAX = 65504.0


def _largest_activation(vae) -> dict[str, float]:
    """Hooks that keep each decoder block's largest absolute output (inf or NaN when it overflowed)."""
    import torch

    seen: dict[str, float] = {}
    blocks = {"mid_block": vae.decoder.mid_block, **{f"up_blocks.{i}": b for i, b in enumerate(vae.decoder.up_blocks)}}

    def keep(name):
        def hook(module, args, output):
            tensor = output[0] if isinstance(output, tuple) else output
            seen[name] = max(seen.get(name, 0.0), float(torch.nan_to_num(tensor.float().abs(), nan=float("inf")).max()))
        return hook

    for name, block in blocks.items():
        block.register_forward_hook(keep(name))
    return seen


def run(ctx: Context) -> tuple[str, str | None]:
    import torch

    from autotune.apply import apply_settings

    from .gpu import fresh, hardware, problem, release, render, template

    hw = hardware()
    base = template()
    guarded = fresh(base)
    apply_settings(guarded, {"precision": "fp16"}, hw, fallback=False)
    images, _ = render(guarded, steps=4)
    ctx.figures["guarded"] = {"vae_dtype": str(guarded.vae.dtype), "unet_dtype": str(guarded.unet.dtype),
                              "image_problem": problem(images)}
    del guarded
    release()
    plain = fresh(base).to("cuda", torch.float16)
    seen = _largest_activation(plain.vae)
    images, _ = render(plain, steps=4)
    unguarded = problem(images)
    ctx.figures["unguarded"] = {"vae_dtype": str(plain.vae.dtype), "image_problem": unguarded,
                                "largest_decoder_activation": max(seen.values(), default=None), "fp16_max": FP16_MAX,
                                "seen": ("NaN/black reproduced: the guard is necessary" if unguarded else
                                         "not reproduced on random weights: the decoder stayed within fp16")}
    ctx.figures["decoder_blocks"] = [{"block": name, "largest_abs": value} for name, value in seen.items()]
    if ctx.figures["guarded"]["image_problem"]:
        return FAIL, f"with the guard: {ctx.figures['guarded']['image_problem']}"
    if ctx.figures["guarded"]["vae_dtype"] != "torch.float32":
        return FAIL, "the guard left the VAE in " + ctx.figures["guarded"]["vae_dtype"]
    return PASS, ctx.figures["unguarded"]["seen"]
