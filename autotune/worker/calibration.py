"""Calibrating a step cache's threshold by rendering, instead of sampling it: under a quality floor, a trial with
First Block Cache finds the largest threshold whose images still meet the floor, then times that.

The threshold trades quality for skipped work monotonically (a larger one skips more blocks and drifts further), so
the largest value that meets the floor is the fastest one that may be chosen, and bracketing then bisecting finds
it in a handful of renders, where a sampler spends whole trials (renders and timed calls) probing the float range.
The renders are the workload's prompts at batch 1, scored against the reference the trial is scored against; they
run uncompiled, since compile changes no image and a compiled model would recompile when the cache is set again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

from autotune import knobs
from autotune.hardware import Hardware
from autotune.measure import quality, timing

from . import protocol


class Renderer(Protocol):
    """What calibrating needs of a worker (`worker.tasks.WorkerState`): fresh pipelines, the hardware, references."""

    hardware: Hardware

    def fresh_pipeline(self, settings: dict[str, Any] | None = None) -> Any: ...

    def reference(self, path: str) -> Any: ...


def calibrate(state: Renderer, task: protocol.TrialTask) -> tuple[float, tuple[tuple[float, float], ...]]:
    """The largest value of `task.calibrate.knob` in its range that meets the floor, and each render's (value,
    score). When even the lowest value misses the floor, the lowest (the trial is then scored, and fails, as any)."""
    from autotune.apply import apply_settings

    spec, against = task.calibrate, task.score
    assert spec is not None and against is not None, "calibration needs a floor and a reference"
    settings = uncompiled(task.settings)
    pipe = state.fresh_pipeline(settings)
    apply_settings(pipe, settings, state.hardware, fallback=False)
    knob = knobs.get(spec.knob)
    owner = knobs.get(knob.parent[0]) if knob.parent else knob
    reference = state.reference(against.reference_path)
    tried: list[tuple[float, float]] = []

    def meets(value: float) -> bool:
        owner.apply(pipe, settings[owner.name], {**settings, spec.knob: value}, state.hardware)
        images = timing.render_missing(pipe, task.workload, task.call_kwargs, {})
        score = quality.score(images, reference, (spec.metric,), task.workload.prompts)[spec.metric]
        tried.append((value, round(score, 4)))
        return score >= spec.minimum

    value = largest_meeting(meets, spec.low, spec.high, spec.renders)
    return value, tuple(tried)


def largest_meeting(meets: Callable[[float], bool], low: float, high: float, renders: int) -> float:
    """The largest value in [low, high] for which `meets` holds, `meets` being true up to some value and false
    above it: the high end, else the low end (returned even when it fails), else bisection on a log scale between
    them, `renders` calls of `meets` in all.

    >>> calls = []
    >>> round(largest_meeting(lambda v: calls.append(v) or v <= 0.1, 0.02, 0.3, 6), 4), len(calls)
    (0.0917, 6)
    """
    if meets(high):
        return high
    if not meets(low):
        return low
    for _ in range(renders - 2):  # low meets it, high does not
        middle = math.sqrt(low * high)
        low, high = (middle, high) if meets(middle) else (low, middle)
    return low


def uncompiled(settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` without compile (and its options at their defaults): the same images, rendered without compiling."""
    options = {knob.name: knob.default for knob in knobs.in_order() if knob.parent and knob.parent[0] == "compile"}
    return {**settings, **options, "compile": "none"}
