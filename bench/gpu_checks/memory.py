"""Check 3a: memory truth. For a few configurations, the peak autotune records (the allocator's reserved peak plus
the CUDA context, `autotune.measure`) against NVML's figures for this process; then each offload mode's peak against
no offload, which it must undercut.

NVML's per-process figure is hidden in many containers; the GPU's used memory less a baseline taken before this
process touched CUDA is the second witness (it counts other processes too, so the run wants an otherwise idle GPU).
"""

from __future__ import annotations

from typing import Any

from .core import FAIL, PASS, SKIPPED, Context

CONFIGS = {"fp32 default": {}, "fp16 + SDPA": {"precision": "fp16"},
           "fp16 + attention slicing": {"precision": "fp16", "attention": "sliced"}}
# The recorded peak may exceed NVML's current figure (the reserved peak can be given back) but must not undercut it.
TOLERANCE = 0.05
OFFLOAD_COST_S = {"model": 8.0, "group-block": 12.0, "group-leaf": 25.0, "sequential": 30.0}


def _measured_peak(pipe, settings: dict[str, Any], hw) -> dict[str, Any]:
    import torch

    from autotune import knobs
    from autotune.apply import apply_settings
    from autotune.measure import Repeats, measure
    from autotune.profile import Workload

    from .gpu import PROMPT, SIZE, gib, nvml_process_bytes

    apply_settings(pipe, settings, hw, fallback=False)
    workload = Workload(height=SIZE, width=SIZE, prompts=[PROMPT])
    result = measure(pipe, workload, {**knobs.call_kwargs(settings), "num_inference_steps": 2},
                     Repeats(warmup=1, min_runs=1, max_runs=1))
    return {"recorded_peak_gib": gib(result.peak_memory_bytes),
            "reserved_peak_gib": gib(torch.cuda.max_memory_reserved()),
            "reserved_now_gib": gib(torch.cuda.memory_reserved()), "nvml_process_gib": gib(nvml_process_bytes()),
            "image_problem": result.image_problem, "_peak": result.peak_memory_bytes}


def _truth(ctx: Context, base, hw, baseline: int | None) -> list[str]:
    from .gpu import fresh, gib, nvml_used_bytes, release

    rows, wrong = [], []
    ctx.figures["peaks_vs_nvml"] = rows
    for name, settings in CONFIGS.items():
        if ctx.left() < 10:
            rows.append({"configuration": name, "status": SKIPPED, "reason": "time box spent"})
            continue
        pipe = fresh(base)
        row = {"configuration": name, **_measured_peak(pipe, settings, hw)}
        used = nvml_used_bytes()
        row["nvml_gpu_used_less_baseline_gib"] = gib(used - baseline) if used is not None and baseline else None
        witness = row["nvml_process_gib"] or row["nvml_gpu_used_less_baseline_gib"]
        peak = row.pop("_peak") / 2**30
        if witness is None:
            row["status"], row["reason"] = FAIL, "NVML gives no figure to compare with"
        elif peak < witness * (1 - TOLERANCE):
            row["status"], row["reason"] = FAIL, f"the recorded peak undercuts NVML's {witness:.3g} GiB"
        else:
            row["status"] = PASS
        wrong += [f"{name}: {row['reason']}"] if row["status"] == FAIL else []
        rows.append(row)
        del pipe
        release()
        ctx.save()
    return wrong


def _offload(ctx: Context, base, hw) -> list[str]:
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
            row = {"offload": mode, **_measured_peak(pipe, {"precision": "fp16", "offload": mode}, hw)}
        except Exception as error:
            row = {"offload": mode, "status": FAIL, "reason": f"{type(error).__name__}: {str(error)[:200]}"}
        del pipe
        release()
        peak = row.pop("_peak", None)
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
    from .gpu import hardware, nvml_used_bytes, template

    baseline = nvml_used_bytes()  # before this process creates its CUDA context
    ctx.figures["gpu_used_before_gib"] = None if baseline is None else round(baseline / 2**30, 3)
    hw = hardware()
    base = template()
    wrong = _truth(ctx, base, hw, baseline) + _offload(ctx, base, hw)
    return (FAIL, "; ".join(wrong)) if wrong else (PASS, None)
