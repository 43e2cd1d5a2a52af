"""Which chosen knobs mattered: the chosen configuration re-measured beside copies of itself with one changed knob
each put back to the default configuration's value, interleaved, so that each knob's worth is a ratio measured in
the same rounds (an ablation).

Optuna-free, like the re-measurement it runs on. A knob's options go back with it (`cache_threshold` with `cache`);
a knob another chosen knob requires (`precision=fp16` under `attention=sdpa-flash`) cannot go back alone and is
reported with that reason rather than measured.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autotune import knobs
from autotune.measure.figures import KnobEffect, SpeedRatio
from autotune.worker.process import WorkerConfig
from autotune.workload import Workload

from .candidates import Candidate
from .remeasure import remeasure
from .scoring import Scoring

# `AUTOTUNE_ABLATION=0` skips the ablation wherever a search or an export is not told either way (a test suite, a CI).
ABLATION_ENV = "AUTOTUNE_ABLATION"


def wanted(ablation: bool | None) -> bool:
    """Whether to measure the ablation: as asked, or unless `AUTOTUNE_ABLATION=0`."""
    return ablation if ablation is not None else os.environ.get(ABLATION_ENV, "1").strip().lower() not in (
        "0", "false", "no", "off")


@dataclass
class Ablated:
    """One changed knob of the chosen configuration and the configuration without it (None when it cannot go back
    alone: `note` says why)."""

    knob: str
    value: Any
    default: Any
    candidate: Candidate | None
    note: str | None = None


def ablations(chosen: Mapping[str, Any], default: Mapping[str, Any]) -> list[Ablated]:
    """Each knob whose value in `chosen` differs from `default`'s, in application order, with `chosen` where that
    knob and its options take `default`'s values.

    >>> for a in ablations({"precision": "bf16", "batch_size": 4}, {"precision": "fp32", "batch_size": 1}):
    ...     print(a.knob, a.default, a.candidate.settings)
    precision fp32 {'precision': 'fp32', 'batch_size': 4}
    batch_size 1 {'precision': 'bf16', 'batch_size': 1}
    """
    neutral = knobs.defaults()
    before, after = {**neutral, **default}, {**neutral, **chosen}
    found = []
    for knob in knobs.in_order():
        if knob.parent is not None or after[knob.name] == before[knob.name]:
            continue  # unchanged, or an option: it goes back with its parent
        options = [k.name for k in knobs.in_order() if k.parent is not None and k.parent[0] == knob.name]
        settings = {**chosen, **{name: before[name] for name in (knob.name, *options) if name in chosen
                                 or name == knob.name}}
        broken = knobs.violations(settings)
        found.append(Ablated(knob.name, after[knob.name], before[knob.name],
                             None if broken else Candidate(f"without {knob.name}", settings),
                             f"cannot go back alone: {broken[0]}" if broken else None))
    return found


def measure_ablation(chosen: Candidate, default: Mapping[str, Any], config: WorkerConfig, workload: Workload,
                     rounds: int, timeout_s: float, scoring: Scoring | None = None,
                     device_memory_bytes: int | None = None, deadline: float | None = None) -> list[KnobEffect]:
    """Re-measure `chosen` (a fresh copy: its own figures stay those of the search's re-measurement) beside each of
    its `ablations`, interleaved, and give each knob's effect."""
    ablated = ablations(chosen.settings, default)
    runs = [a.candidate for a in ablated if a.candidate is not None]
    again = Candidate("chosen", dict(chosen.settings), chosen.trial_peak_bytes or chosen.peak_memory_bytes)
    if runs:
        remeasure([again, *runs], config, workload, rounds, timeout_s, scoring=scoring,
                  device_memory_bytes=device_memory_bytes, deadline=deadline)
    return [effect_of(item, again) for item in ablated]


def effect_of(item: Ablated, chosen: Candidate) -> KnobEffect:
    """What `item`'s re-measurement says its knob is worth against `chosen`, measured beside it."""
    run = item.candidate
    note = item.note
    if run is not None and not run.measured:
        note = f"not measured without it: {run.failure or 'not timed'}"
    elif run is not None and not chosen.measured:
        note = f"the chosen configuration was not measured again: {chosen.failure or 'not timed'}"
    ratio = chosen.vs(run) if run is not None else None
    return KnobEffect(knob=item.knob, value=item.value, default=item.default,
                      speedup=SpeedRatio(**ratio.record()) if ratio is not None else None,
                      peak_memory_bytes=(run.peak_memory_bytes or None) if run is not None else None,
                      quality={k: round(v, 4) for k, v in run.quality.items()} if run is not None else {},
                      note=note)

