"""Check 2: every knob value available on CUDA, applied to the built-in at 512x512 with `apply_settings` (no
fallback), read back from the pipeline's real state, and one call rendered and checked finite and not black.

Values that can be undone in place share one pipeline (each `apply_settings` call sets every knob, so the previous
value is replaced); offload and compile get a fresh copy each. The costly values run last, so a short time box
skips compile modes first, each with that reason.
"""

from __future__ import annotations

import time
from typing import Any

from .core import FAIL, PASS, SKIPPED, Context

# Seconds a case needs on an H200 (guesses), by kind; a case starts only when this much of the box is left.
COST_S = {"state": 3.0, "fresh": 12.0, "compile": 30.0, "compile-whole": 60.0}
UNAVAILABLE = "unavailable"


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

    if settings.get("compile", "none") != "none":
        return "compile-whole" if settings.get("compile_scope") == "denoiser" else "compile"
    undoable = all(knobs.get(name).reversible or value == knobs.get(name).default for name, value in settings.items())
    return "state" if undoable else "fresh"


def cases(hw, pipe) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(what to run, the values unavailable here with their reasons)."""
    from autotune import knobs

    runnable, unavailable = [], []
    for knob in knobs.in_order():
        for value in knob.choices():
            reason = knob.unavailable(value, hw, pipe)
            if reason is not None:
                unavailable.append({"knob": knob.name, "value": value, "status": UNAVAILABLE, "reason": reason})
                continue
            parent = _parent_value(knob, hw, pipe)
            if parent is None:
                unavailable.append({"knob": knob.name, "value": value, "status": UNAVAILABLE,
                                    "reason": f"an option of {knob.parent[0]}, and no value it needs runs here"})
                continue
            settings = {**parent, knob.name: value}
            if settings.get("compile", "none") != "none" and "compile_scope" not in settings:
                # Regional compile (the repeated blocks) takes seconds, whole-model compile a minute: the mode is what
                # this case checks, so it takes the cheap scope; compile_scope=denoiser gets its own case.
                if "regional" in knobs.get("compile_scope").values(hw, pipe):
                    settings["compile_scope"] = "regional"
            runnable.append({"knob": knob.name, "value": value, "settings": settings, "kind": _kind(settings)})
    order = list(COST_S)
    runnable.sort(key=lambda case: order.index(case["kind"]))
    return runnable, unavailable


def _run_case(pipe, case: dict[str, Any], hw) -> dict[str, Any]:
    from autotune import knobs
    from autotune.apply import apply_settings

    from .gpu import problem, render

    settings = case["settings"]
    effective = apply_settings(pipe, settings, hw, fallback=False)
    read_back, wrong = {}, []
    for name in settings:
        knob = knobs.get(name)
        if knob.call_time:
            continue
        read_back[name] = knobs.show(knob.read(pipe))
        if knob.read(pipe) != effective[name]:
            wrong.append(f"{name} reads {knob.read(pipe)!r}, set {effective[name]!r}")
    steps, batch = settings.get("steps") or 2, settings.get("batch_size", 1)
    images, seconds = render(pipe, steps=steps, batch=batch)
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
    runnable, unavailable = cases(hw, shared)
    rows += [{"model": model, **row} for row in unavailable]
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
            row |= _run_case(pipe, case, hw)
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
    for model in models():
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
