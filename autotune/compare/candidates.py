"""The configurations of the final re-measurement: the study's top trials or its Pareto front, and the picks.

Optuna-free: trials are read through their records (`records.TrialRecord`) and values, and `verify` and `bench`
make candidates of their own.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.measure import quality
from autotune.measure.comparison import Ratio, ratio_of_medians
from autotune.measure.figures import Stat
from autotune.measure.timing import summarize

from .records import TrialRecord


@dataclass
class Candidate:
    """A configuration in the final interleaved re-measurement."""

    label: str
    settings: dict[str, Any]
    trial_peak_bytes: int | None = None  # what its trial measured
    latency_s: list[float] = field(default_factory=list)
    peak_memory_bytes: int | None = None  # None until something was measured
    warmup_s: float = 0.0
    failure: str | None = None
    quality: dict[str, float] = field(default_factory=dict)  # `quality.aggregate` of quality_by_prompt
    quality_by_prompt: dict[str, list[float]] = field(default_factory=dict)
    images: Any = None  # prompts x H x W x 3, rendered in the first round of the re-measurement
    trial: int | None = None  # the study's trial it came from (None for the default configuration)
    frames: int | None = None  # frames per output, for a video pipeline
    others_cpu_share: float | None = None  # of all cores, used by other processes while it was timed
    trial_images_per_s: Stat | None = None  # what its trial measured, at its batch size
    trial_quality: dict[str, float] = field(default_factory=dict)  # its trial's scores
    trial_quality_by_prompt: dict[str, list[float]] = field(default_factory=dict)
    # Its trial's batch and figures at each of the workload's other sizes (`trials.size_record`).
    trial_sizes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def frames_per_s(self) -> Stat | None:
        """A video pipeline's frames/s (its images/s counts videos); None for images."""
        if self.frames is None or not self.latency_s:
            return None
        return summarize([self.batch_size * self.frames / seconds for seconds in self.latency_s])

    @property
    def batch_size(self) -> int:
        return int(self.settings.get("batch_size", 1))

    @property
    def images_per_s(self) -> Stat:
        return summarize(self.rates)

    @property
    def rates(self) -> list[float]:
        """images/s of each timed call."""
        return [self.batch_size / seconds for seconds in self.latency_s]

    def vs(self, other: Candidate) -> Ratio | None:
        """This candidate's images/s over `other`'s, with its interval; None when either was not timed."""
        if not self.measured or not other.measured:
            return None
        ratio = ratio_of_medians(self.rates, other.rates)
        shares = [c.others_cpu_share for c in (self, other) if c.others_cpu_share is not None]
        return dataclasses.replace(ratio, others_cpu_share=max(shares)) if ratio and shares else ratio

    def shown_vs(self, other: Candidate, missing: str = "-") -> str:
        """`vs(other)` as a table shows it: `1x` against itself, `missing` when either was not timed."""
        if self is other:
            return "1x"
        ratio = self.vs(other)
        return ratio.show() if ratio is not None else missing

    @property
    def latency(self) -> Stat:
        return summarize(self.latency_s)

    @property
    def measured(self) -> bool:
        """It ran and was timed: its images/s is a number, not the empty summary."""
        return self.failure is None and bool(self.latency_s)

    def fits(self, budget_bytes: int) -> bool:
        return self.measured and self.peak_memory_bytes is not None and self.peak_memory_bytes <= budget_bytes


def settings_key(settings: dict) -> str:
    """One configuration's identity (settings and batch), whatever order its settings came in."""
    return repr(sorted(settings.items(), key=lambda item: item[0]))


def distinct_candidates(trials: list) -> list[Candidate]:
    """The trials as candidates, in order, each configuration (settings and batch) once."""
    chosen: dict[str, Candidate] = {}
    for record in map(TrialRecord.of, trials):
        settings = {**(record.settings or {}), "batch_size": record.batch_size}
        key = settings_key(settings)
        chosen.setdefault(key, Candidate(f"trial {record.number}", settings, record.peak_memory_bytes,
                                         trial=record.number, trial_images_per_s=record.rate,
                                         trial_quality=dict(record.quality),
                                         trial_quality_by_prompt=dict(record.quality_by_prompt),
                                         trial_sizes=list(record.sizes)))
    return list(chosen.values())


# A trial at less than this share of the best trial's speed cannot overtake it in the re-measurement: trials of one
# configuration spread by 10-20%, not 2x, and re-measuring a slow configuration costs the most time.
CONTENDER_SHARE = 0.5


def top_candidates(trials: list, top_k: int, objective: str, fallbacks: bool = True) -> list[Candidate]:
    """The `top_k` best distinct configurations of `trials` (finished, feasible) by their trial's value.

    Without `fallbacks`, only those within `CONTENDER_SHARE` of the best one's speed: the others cannot win the
    re-measurement, and are worth re-measuring only as fallbacks, where it may drop the leader (under a quality
    floor, or near the memory budget)."""
    latency = objective == "latency"
    ranked = sorted(trials, key=lambda t: t.value, reverse=not latency)
    if not fallbacks and ranked:
        best = ranked[0].value
        ranked = [t for t in ranked
                  if (t.value <= best / CONTENDER_SHARE if latency else t.value >= best * CONTENDER_SHARE)]
    return distinct_candidates(ranked)[:top_k]


def pareto_candidates(best_trials: list, limit: int) -> list[Candidate]:
    """The feasible Pareto-optimal trials (a study's `best_trials`, which honour the constraints), fastest first;
    more than `limit` are thinned to the extremes and an even spread between them."""
    front = sorted(best_trials, key=lambda t: -t.values[0])
    chosen = distinct_candidates(front)
    if len(chosen) > limit:
        step = (len(chosen) - 1) / (limit - 1)
        chosen = [chosen[round(index * step)] for index in range(limit)]
    return chosen


def _objectives(candidate: Candidate, metric: str) -> tuple[float, float, float]:
    """Images/s, peak memory and quality, each turned so that bigger is better."""
    peak = candidate.peak_memory_bytes
    return (candidate.images_per_s.median, -float(peak) if peak is not None else -math.inf,
            candidate.quality.get(metric, quality.worst_score(metric)))


def pareto_front(candidates: list[Candidate], metric: str) -> list[Candidate]:
    """The re-measured candidates no other one beats on every objective, fastest first."""
    points = {id(c): _objectives(c, metric) for c in candidates}

    def dominated(c: Candidate) -> bool:
        mine = points[id(c)]
        return any(all(o >= m for o, m in zip(points[id(other)], mine, strict=True)) and points[id(other)] != mine
                   for other in candidates if other is not c)

    return sorted((c for c in candidates if not dominated(c)), key=lambda c: -c.images_per_s.median)


def choose_picks(front: list[Candidate], metric: str) -> dict[str, int]:
    """`fastest`, `smallest`, and `balanced`: the one nearest the ideal point once each objective is scaled to [0, 1]
    over the front."""
    points = [_objectives(c, metric) for c in front]
    lows = [min(p[axis] for p in points) for axis in range(3)]
    spans = [max(p[axis] for p in points) - lows[axis] or 1.0 for axis in range(3)]
    distance = [math.dist([(p[axis] - lows[axis]) / spans[axis] for axis in range(3)], [1.0, 1.0, 1.0])
                for p in points]
    return {
        "fastest": max(range(len(front)), key=lambda i: points[i][0]),
        "balanced": min(range(len(front)), key=lambda i: distance[i]),
        "smallest": max(range(len(front)), key=lambda i: points[i][1]),
    }


def save_images(out: Path, reference: Any, baseline: Candidate, candidates: list[Candidate]) -> Path:
    """The reference and each re-measured configuration's images, for the report: `<profile>.images.npz`."""
    images = {"reference": reference}
    images |= {c.label: c.images for c in [baseline, *candidates] if c.images is not None}
    return quality.save_images(quality.images_path(out), images)
