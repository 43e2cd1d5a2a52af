"""Check 2: every knob value available on CUDA, applied to `builtin:sd15-arch` at 512x512 with `apply_settings` (no
fallback), read back from the pipeline's real state as the knob declares it (`reads_as`, the contract test's rule),
and one call rendered and checked finite and not black. `builtin:flux-arch` only with --with-flux.

A value goes with what it needs: its parent's value (an option of compile runs under a compile mode) and what it
requires of other knobs (`knobs.with_requirements`: `attention=sdpa-flash` runs in fp16); a value whose requirement
cannot be met here is listed unavailable with the reason. Values that can be undone in place share one pipeline
(each `apply_settings` call sets every knob, so the previous value is replaced); offload and compile get a fresh
copy each. The costly values run last, so a short time box skips compile cases first, each with that reason; the
max-autotune modes (minutes of GEMM autotuning each) only run with --full-sweep.
"""

from __future__ import annotations

import time
from typing import Any

from .core import FAIL, PASS, SKIPPED, Context

# Seconds a case needs on an H100, by kind, the first compile's cold inductor start included; a case starts only
# when this much of the box is left. Regional compile builds one transformer block (~30 s); the whole UNet takes
# ~1.5 min; max-autotune benchmarks every GEMM and conv template per shape (minutes).
COST_S = {"state": 3.0, "fresh": 10.0, "compile": 40.0, "compile-whole": 100.0, "max-autotune": 300.0}
UNAVAILABLE = "unavailable"
MAX_AUTOTUNE = ("max-autotune", "max-autotune-no-cudagraphs")
NOT_SWEPT = "max-autotune autotunes every GEMM and conv for minutes: only with --full-sweep"


def _parent_value(knob, hw, pipe) -> dict[str, Any] | None:
    """The parent value an option needs ({} for a knob without a parent); None when no such value runs here."""
    from autotune import knobs

    if knob.parent is None:
        return {}
    name, allowed = knob.parent
    value = next((v for v in knobs.get(name).values(hw, pipe) if v in allowed), None)
    return None if value is None else {name: value}


def _kind(settings: dict[str, Any]) -> str:
    from autotune import knobs

    if settings.get("compile", "none") in MAX_AUTOTUNE:
        return "max-autotune"
    if settings.get("compile", "none") != "none":
        return "compile-whole" if settings.get("compile_scope") == "denoiser" else "compile"
    undoable = all(knobs.get(name).reversible or value == knobs.get(name).default for name, value in settings.items())
    return "state" if undoable else "fresh"


def _settings(knob, value, hw, pipe) -> tuple[dict[str, Any] | None, str | None]:
    """The settings a case of `knob=value` runs with, or None and why it cannot run here."""
    from autotune import knobs

    parent = _parent_value(knob, hw, pipe)
    if parent is None:
        return None, f"an option of {knob.parent[0]}, and no value it needs runs here"
    wanted = {**parent, knob.name: value}
    settings = knobs.with_requirements(wanted, hw, pipe)
    if settings is None:
        broken = "; ".join(knobs.violations(wanted)) or "a rule between knobs breaks"
        return None, f"what it requires cannot be met here: {broken}"
    if settings.get("compile", "none") != "none" and "compile_scope" not in settings:
        # Regional compile (the repeated blocks) takes seconds, whole-model compile a minute: the mode is what this
        # case checks, so it takes the cheap scope; compile_scope=denoiser gets its own case.
        if "regional" in knobs.get("compile_scope").values(hw, pipe):
            settings["compile_scope"] = "regional"
    return settings, None


def cases(hw, pipe, full_sweep: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(what to run, cheapest first; the values not run, each with its status and reason)."""
    from autotune import knobs

    runnable, not_run = [], []
    for knob in knobs.in_order():
        for value in knob.choices():
            reason = knob.unavailable(value, hw, pipe)
            settings = None
            if reason is None:
                settings, reason = _settings(knob, value, hw, pipe)
            if reason is not None:
                not_run.append({"knob": knob.name, "value": value, "status": UNAVAILABLE, "reason": reason})
            elif _kind(settings) == "max-autotune" and not full_sweep:
                not_run.append({"knob": knob.name, "value": value, "status": SKIPPED, "reason": NOT_SWEPT})
            else:
                runnable.append({"knob": knob.name, "value": value, "settings": settings, "kind": _kind(settings)})
    order = list(COST_S)
    runnable.sort(key=lambda case: order.index(case["kind"]))
    return runnable, not_run


def expected_read(knob, value, pipe, template) -> Any:
    """What `knob.read(pipe)` must give once `value` is applied: `reads_as`, where `AS_LOADED` means whatever the
    unmodified template reads (the as-loaded scheduler of sd15-arch is PNDM)."""
    from autotune import knobs

    wanted = knob.reads_as(value, pipe)
    return knob.read(template) if wanted == knobs.AS_LOADED else wanted


def run_case(pipe, case: dict[str, Any], hw, template, size: int | None = None) -> dict[str, Any]:
    """Apply one case to `pipe`, read every knob it set back, render one call; the row's status and figures."""
    from autotune import knobs
    from autotune.apply import apply_settings

    from .gpu import SIZE, problem, render

    settings = case["settings"]
    effective = apply_settings(pipe, settings, hw, fallback=False)
    read_back, wrong = {}, []
    for name in settings:
        knob = knobs.get(name)
        if knob.call_time:
            continue
        found, expected = knob.read(pipe), expected_read(knob, effective[name], pipe, template)
        read_back[name] = knobs.show(found)
        if found != expected:
            wrong.append(f"{name} reads {found!r}, expected {expected!r} (set {effective[name]!r})")
    steps, batch = settings.get("steps") or 2, settings.get("batch_size", 1)
    images, seconds = render(pipe, steps=steps, batch=batch, size=size or SIZE)
    issue = problem(images)
    if len(images) != batch:
        issue = f"{len(images)} images for batch {batch}"
    reason = "; ".join(wrong + ([issue] if issue else [])) or None
    return {"status": FAIL if reason else PASS, "reason": reason, "read_back": read_back,
            "call_s": round(seconds, 3)}


def sweep(model: str, ctx: Context, rows: list[dict[str, Any]]) -> None:
    import torch

    from autotune import knobs

    from .gpu import SIZE, fresh, hardware, release, template

    hw = hardware()
    base = template(model)
    shared = fresh(base)
    runnable, not_run = cases(hw, shared, ctx.options.full_sweep)
    rows += [{"model": model, **row} for row in not_run]
    for case in runnable:
        row = {"model": model, "knob": case["knob"], "value": knobs.show(case["value"]),
               "with": {k: v for k, v in case["settings"].items() if k != case["knob"]} or None, "size": SIZE}
        if ctx.left() < COST_S[case["kind"]]:
            rows.append({**row, "status": SKIPPED, "reason": f"time box spent ({ctx.left():.0f} s left, a "
                                                             f"{case['kind']} case needs ~{COST_S[case['kind']]:.0f})"})
            continue
        started = time.monotonic()
        pipe = shared if case["kind"] == "state" else fresh(base)
        try:
            row |= run_case(pipe, case, hw, base)
        except Exception as error:  # one value's failure is data; the sweep goes on
            row |= {"status": FAIL, "reason": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
            if pipe is shared:
                shared = fresh(base)  # its state is unknown now
        row["seconds"] = round(time.monotonic() - started, 1)
        rows.append(row)
        if pipe is not shared:
            del pipe
            torch.compiler.reset()  # compiled graphs hold the copy's weights otherwise
            release()
        ctx.save()


def run(ctx: Context) -> tuple[str, str | None]:
    from .gpu import models

    rows: list[dict[str, Any]] = []
    ctx.figures["values"] = rows
    for model in models(ctx.options):
        sweep(model, ctx, rows)
    ran = [row for row in rows if row["status"] in (PASS, FAIL)]
    failed = [f"{row['knob']}={row['value']}" for row in rows if row["status"] == FAIL]
    ctx.figures |= {"passed": len(ran) - len(failed), "failed": len(failed),
                    "skipped": sum(row["status"] == SKIPPED for row in rows),
                    "unavailable": sum(row["status"] == UNAVAILABLE for row in rows)}
    if failed:
        return FAIL, f"{len(failed)} of {len(ran)} values failed: {', '.join(failed[:6])}"
    if not ran:
        return FAIL, "no value ran in the time box"
    return PASS, None
