"""Check 5b: the seeds' table re-measured in one run at 512x512, 20 steps, batch 1 (the search's profile at its own
batch), in interleaved rounds: each round calls every configuration once, so a drift of the GPU's clocks or
temperature hits all of them alike. Ratios are to fp32 default within each round; their spread is over rounds.
cuDNN benchmark, TF32 and threads are process-wide: each configuration puts its own back before its timed call
(`knobs.apply_process_state`), or the one built last would hold for every row.

Every configuration lives in this one process, so its peak is the allocator's: the weights it added plus the most
its call allocated on top (no CUDA context, which all of them share; check 3a compares that with NVML).
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from .core import FAIL, PASS, Context

# 20 steps: an fp32 call takes ~1 s on an H100, so two rounds of six fit the box beside the builds and a compile.
STEPS, MAX_ROUNDS, MIN_ROUNDS = 20, 5, 2
FP16_SDPA_CL = {"precision": "fp16", "attention": "sdpa", "channels_last": True}


def configurations(ctx: Context) -> dict[str, dict[str, Any]]:
    # max-autotune-no-cudagraphs is the guide's mode but autotunes every GEMM for minutes; default fits a short box.
    mode = "max-autotune-no-cudagraphs" if ctx.left() > 300 else "default"
    scope = "denoiser" if ctx.left() > 120 else "regional"
    found = {
        "fp32 default": {},
        "fp16": {"precision": "fp16"},
        "fp16 + SDPA + channels-last": FP16_SDPA_CL,
        f"fp16 + SDPA + channels-last + compile ({mode}, {scope})": {**FP16_SDPA_CL, "compile": mode,
                                                                     "compile_scope": scope},
        "fp16 + attention slicing": {"precision": "fp16", "attention": "sliced"},
    }
    search = ctx.out / "checks" / "search.json"
    profile = json.loads(search.read_text()).get("figures", {}).get("profile") if search.is_file() else None
    if profile:
        from autotune.profile import load_profile

        found["the search's profile"] = load_profile(profile).settings_dict()
    return found


def _build(base, settings: dict[str, Any], hw) -> dict[str, Any]:
    import torch

    from autotune.apply import apply_settings

    from .gpu import fresh, render

    before = torch.cuda.memory_allocated()
    pipe = fresh(base)
    apply_settings(pipe, settings, hw, fallback=False)
    weights = torch.cuda.memory_allocated() - before
    batch = int(settings.get("batch_size", 1))
    _, warmup_s = render(pipe, steps=3, batch=batch)  # compiles, autotunes cuDNN
    return {"pipe": pipe, "batch": batch, "weights": weights, "warmup_s": warmup_s, "calls": [], "call_peak": 0,
            "problem": None}


def _timed(entry: dict[str, Any]) -> float:
    import torch

    from .gpu import problem, render

    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    images, seconds = render(entry["pipe"], steps=STEPS, batch=entry["batch"])
    entry["call_peak"] = max(entry["call_peak"], torch.cuda.max_memory_allocated() - before)
    entry["problem"] = entry["problem"] or problem(images)
    entry["calls"].append(seconds)
    return seconds


def one_round(ready: dict[str, dict[str, Any]], settings: dict[str, dict[str, Any]], hw) -> None:
    """Call every ready configuration once, each under its own process-wide flags; one that fails leaves `ready`."""
    from autotune import knobs

    for name, entry in list(ready.items()):
        try:
            knobs.apply_process_state(settings[name], hw)
            _timed(entry)
        except Exception as error:  # this configuration stops; the others go on
            entry["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            del ready[name]


def _rows(entries: dict[str, dict[str, Any]], settings: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    base = entries.get("fp32 default")
    rows = []
    for name, entry in entries.items():
        row = {"configuration": name, "settings": settings[name] or "as loaded"}
        if "error" in entry:
            rows.append({**row, "status": FAIL, "reason": entry["error"]})
            continue
        rates = [entry["batch"] / seconds for seconds in entry["calls"]]
        # Round by round: this configuration's images/s over fp32 default's (batch 1: its seconds per call).
        paired = zip(rates, base["calls"], strict=False) if base and "calls" in base else []
        ratios = [rate * fp32_seconds for rate, fp32_seconds in paired]
        rows.append({**row, "status": FAIL if entry["problem"] else PASS, "reason": entry["problem"],
                     "batch": entry["batch"], "rounds": len(rates),
                     "images_per_s": statistics.median(rates) if rates else None,
                     "peak_gib": round((entry["weights"] + entry["call_peak"]) / 2**30, 3),
                     "ratio_to_fp32": statistics.median(ratios) if ratios else None,
                     "ratio_range": f"{min(ratios):.3g}-{max(ratios):.3g}" if ratios else None,
                     "warmup_s": round(entry["warmup_s"], 1)})
    return rows


def run(ctx: Context) -> tuple[str, str | None]:
    from .gpu import hardware, template

    hw = hardware()
    base = template()
    settings = configurations(ctx)
    entries: dict[str, dict[str, Any]] = {}
    for name, config in settings.items():
        try:
            entries[name] = _build(base, config, hw)
        except Exception as error:
            entries[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    ready = {name: entry for name, entry in entries.items() if "error" not in entry}
    round_s = None
    for index in range(MAX_ROUNDS):
        if index >= MIN_ROUNDS and round_s is not None and ctx.left() < round_s * 1.2:
            break
        started = time.monotonic()
        one_round(ready, settings, hw)
        round_s = time.monotonic() - started
        ctx.figures["table"] = _rows(entries, settings)
        ctx.save()
        if ctx.left() < round_s * 1.2:
            break
    ctx.figures["table"] = _rows(entries, settings)
    ctx.figures |= {"size": "512x512", "steps": STEPS, "peak": "allocator: weights + the call's own peak, no context"}
    bad = [row["configuration"] for row in ctx.figures["table"] if row["status"] == FAIL]
    rounds = min((row.get("rounds") or 0 for row in ctx.figures["table"] if row["status"] == PASS), default=0)
    if bad:
        return FAIL, f"failed: {', '.join(bad)}"
    if rounds < MIN_ROUNDS:
        return FAIL, f"only {rounds} round(s) fitted the time box; ratios need {MIN_ROUNDS}"
    return PASS, None
