"""Check 3a: memory truth. For a few configurations, the peak autotune records (the allocator's reserved peak plus the
CUDA context, `autotune.measure.timing`) against an independent witness: a thread that reads NVML's device-used memory
every ~5 ms during the measured call; its peak less a baseline read before this process touched CUDA is what this
process took. Then each offload mode's peak against no offload, which it must undercut.

The baseline is read before anything that imports diffusers (its torchao import initialises CUDA), so it holds no
context of this process. The witness counts other processes' changes too: the run wants an otherwise idle GPU.
"""

from __future__ import annotations

from typing import Any

from .core import FAIL, PASS, SKIPPED, Context

CONFIGS = {"fp32 default": {}, "fp16 + SDPA": {"precision": "fp16"},
           "fp16 + attention slicing": {"precision": "fp16", "attention": "sliced"}}
# The recorded peak must not undercut the witness (a budget would be broken) by more than this share of it, nor
# exceed it (a configuration that fits would be rejected) by more than OVER.
UNDER, OVER = 0.05, 0.10
OFFLOAD_COST_S = {"model": 8.0, "group-block": 12.0, "group-leaf": 25.0, "sequential": 30.0}


def judge(recorded: int | None, witness: int | None) -> str | None:
    """Why the recorded peak disagrees with the witness (sampled peak less baseline), or None when it agrees.

    >>> judge(100, 100) is None
    True
    >>> judge(90, 100)
    'the recorded peak 90 B undercuts the sampled 100 B by 10%'
    """
    if recorded is None or witness is None or witness <= 0:
        return "no figure to compare: " + ("autotune recorded none" if recorded is None else "NVML gave none")
    gap = (recorded - witness) / witness
    if gap < -UNDER:
        return f"the recorded peak {_size(recorded)} undercuts the sampled {_size(witness)} by {-gap:.0%}"
    if gap > OVER:
        return f"the recorded peak {_size(recorded)} exceeds the sampled {_size(witness)} by {gap:.0%}"
    return None


def _size(value: int) -> str:
    return f"{value / 2**30:.3g} GiB" if value >= 2**20 else f"{value} B"


def _measured_peak(pipe, settings: dict[str, Any], hw, baseline: int | None = None) -> dict[str, Any]:
    import torch

    from autotune import knobs
    from autotune.apply import apply_settings
    from autotune.measure.timing import Repeats, measure
    from autotune.profile import Workload

    from .gpu import PROMPT, SIZE, gib
    from .nvml import UsedSampler, process_bytes

    apply_settings(pipe, settings, hw, fallback=False)
    workload = Workload(height=SIZE, width=SIZE, prompts=[PROMPT])
    with UsedSampler() as sampler:
        result = measure(pipe, workload, {**knobs.call_kwargs(settings), "num_inference_steps": 2},
                         Repeats(warmup=1, min_runs=1, max_runs=1))
    witness = None if sampler.peak_bytes is None or baseline is None else sampler.peak_bytes - baseline
    return {"recorded_peak_gib": gib(result.peak_memory_bytes), "sampled_peak_less_baseline_gib": gib(witness),
            "nvml_samples": sampler.samples, "reserved_peak_gib": gib(torch.cuda.max_memory_reserved()),
            "nvml_process_gib": gib(process_bytes()), "image_problem": result.image_problem,
            "_peak": result.peak_memory_bytes, "_witness": witness}


def _truth(ctx: Context, base, hw, baseline: int | None) -> list[str]:
    from .gpu import fresh, release

    rows, wrong = [], []
    ctx.figures["peaks_vs_nvml"] = rows
    for name, settings in CONFIGS.items():
        if ctx.left() < 10:
            rows.append({"configuration": name, "status": SKIPPED, "reason": "time box spent"})
            continue
        release()  # the previous configuration's cached blocks would count in this one's NVML figure
        pipe = fresh(base)
        row = {"configuration": name, **_measured_peak(pipe, settings, hw, baseline)}
        reason = judge(row.pop("_peak"), row.pop("_witness"))
        row["status"], row["reason"] = (FAIL, reason) if reason else (PASS, None)
        wrong += [f"{name}: {reason}"] if reason else []
        rows.append(row)
        del pipe
        release()
        ctx.save()
    return wrong


def _offload(ctx: Context, base, hw, baseline: int | None) -> list[str]:
    from autotune import knobs

    from .gpu import fresh, release

    rows, wrong = [], []
    ctx.figures["offload_vs_none"] = rows
    modes = ["none", *(m for m in knobs.get("offload").values(hw, base) if m != "none")]
    none_peak = None
    for mode in modes:
        if ctx.left() < OFFLOAD_COST_S.get(mode, 8.0):
            rows.append({"offload": mode, "status": SKIPPED, "reason": "time box spent"})
            continue
        pipe = fresh(base)
        try:
            row = {"offload": mode, **_measured_peak(pipe, {"precision": "fp16", "offload": mode}, hw, baseline)}
        except Exception as error:
            row = {"offload": mode, "status": FAIL, "reason": f"{type(error).__name__}: {str(error)[:200]}"}
        del pipe
        release()
        peak = row.pop("_peak", None)
        row.pop("_witness", None)
        if mode == "none":
            none_peak = peak
            row.setdefault("status", PASS if peak else FAIL)
        elif "status" not in row:
            lower = none_peak is not None and peak < none_peak
            row["status"] = PASS if lower and not row["image_problem"] else FAIL
            if not lower:
                row["reason"] = "not lower than no offload" if none_peak else "no offload-free peak to compare"
            elif row["image_problem"]:
                row["reason"] = row["image_problem"]
        wrong += [f"offload {mode}: {row.get('reason')}"] if row["status"] == FAIL else []
        rows.append(row)
        ctx.save()
    return wrong


def run(ctx: Context) -> tuple[str, str | None]:
    from .nvml import used_bytes

    baseline = used_bytes()  # first: `.gpu` imports diffusers, whose torchao import initialises CUDA
    ctx.figures["gpu_used_before_gib"] = None if baseline is None else round(baseline / 2**30, 3)
    from .gpu import hardware, template

    hw = hardware()
    base = template()
    wrong = _truth(ctx, base, hw, baseline) + _offload(ctx, base, hw, baseline)
    return (FAIL, "; ".join(wrong)) if wrong else (PASS, None)
