"""The final, interleaved re-measurement: each candidate in its own warmed-up worker, timed round-robin.

Slow drifts of the machine then hit every candidate alike. Optuna-free: `verify` and `bench` use it without the tuner.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from autotune import knobs
from autotune.exceptions import TrialFailed
from autotune.measure import quality
from autotune.measure.host_load import OthersCpu
from autotune.profile import Workload
from autotune.worker import protocol
from autotune.worker.process import Worker, WorkerConfig

from .candidates import Candidate
from .scoring import Scoring

# What a CUDA worker holds beyond its pipeline's peak (context, library workspaces), in `takes_turns`.
CONTEXT_ALLOWANCE_BYTES = 2**30


def takes_turns(candidates: list[Candidate], config: WorkerConfig, device_memory_bytes: int | None) -> bool:
    """Whether the candidates' pipelines take turns on the GPU (each in host memory between its turns) instead of
    staying there together: on CUDA, when their trial peaks, each with a context, would not fit the device, or are
    not all known (the default configuration rarely ran as a trial)."""
    if not config.device.startswith("cuda") or len(candidates) < 2:
        return False
    peaks = [candidate.trial_peak_bytes for candidate in candidates]
    if device_memory_bytes is None or None in peaks:
        return True
    return sum(peaks) + CONTEXT_ALLOWANCE_BYTES * len(candidates) > device_memory_bytes


def remeasure(candidates: list[Candidate], config: WorkerConfig, workload: Workload, rounds: int,
              timeout_s: float, runs_per_round: int = protocol.RUNS_PER_ROUND, scoring: Scoring | None = None,
              extra_rounds: int = 0, settled: Callable[[], bool] | None = None,
              device_memory_bytes: int | None = None, deadline: float | None = None) -> bool:
    """Time every candidate in its own warmed-up worker, round-robin; with `scoring`, render and score its images in
    the first round. Fills each candidate's latencies, peak memory, warm-up, images and quality, or its failure, and
    the share of the CPU other processes used while they were timed. With `settled`, up to `extra_rounds` more rounds
    run while `settled()` says the comparison the caller needs is not decided yet. On a GPU of `device_memory_bytes`
    that cannot hold them all, the candidates take turns on it (`takes_turns`).

    With a `deadline` (`time.monotonic()`), it stops there with what it has: a candidate not yet warmed up is not
    re-measured (`TIME_UP`), and the rounds stop. Returns whether it ran every planned round.

    >>> remeasure([Candidate("default", {})], WorkerConfig("builtin:tiny-sd"), workload, 2, 600)  # doctest: +SKIP
    """
    workers = {id(c): Worker(config) for c in candidates}
    park = takes_turns(candidates, config, device_memory_bytes)
    clock = _Clock(timeout_s, deadline)
    completed = 0
    try:
        for worker in workers.values():
            worker.start()  # all at once: their imports and model loads overlap
        for candidate in candidates:
            _ask(candidate, workers[id(candidate)], protocol.Prepare(
                candidate.settings, workload, knobs.call_kwargs(candidate.settings), park=park), clock)
        with OthersCpu() as others:
            for round_number in range(rounds + extra_rounds):
                if round_number >= rounds and (settled is None or settled()) or clock.up:
                    break
                order = candidates[round_number % len(candidates):] + candidates[:round_number % len(candidates)]
                render = scoring is not None and round_number == 0
                for candidate in order:
                    _ask(candidate, workers[id(candidate)],
                         protocol.Time(workload, runs_per_round, render=render, park=park), clock)
                share = others.so_far()  # over every round so far: an interleaved round times them all alike
                for candidate in candidates:
                    candidate.others_cpu_share = share
                completed += not clock.up
    finally:
        for worker in workers.values():
            worker.close()
    if scoring is not None:
        for candidate in candidates:
            if candidate.images is not None:
                candidate.quality_by_prompt = quality.score_by_prompt(candidate.images, scoring.reference,
                                                                      scoring.metrics, workload.prompts)
                candidate.quality = quality.aggregate(candidate.quality_by_prompt)
    return completed >= rounds


# A candidate's failure when the time limit came before it was warmed up.
TIME_UP = "time limit: reached before it was re-measured"
# A request needs at least this long to be worth sending before the deadline.
MIN_REQUEST_S = 1.0


class _Clock:
    """Each request's time: the timeout, or what is left before the deadline; `up` once the deadline has stopped
    one."""

    def __init__(self, timeout_s: float, deadline: float | None):
        self.timeout_s, self.deadline, self.up = timeout_s, deadline, False

    def allowed(self) -> tuple[float, bool]:
        """(seconds the next request may take, whether the deadline rather than the timeout sets it)."""
        if self.deadline is None:
            return self.timeout_s, False
        left = self.deadline - time.monotonic()
        return (left, True) if left < self.timeout_s else (self.timeout_s, False)


def _ask(candidate: Candidate, worker: Worker, task: protocol.Prepare | protocol.Time, clock: _Clock) -> None:
    seconds, cut = clock.allowed()
    clock.up = clock.up or seconds < MIN_REQUEST_S
    if candidate.failure is not None or clock.up:
        if isinstance(task, protocol.Prepare) and candidate.failure is None:
            candidate.failure = TIME_UP
        return
    try:
        answer = worker.request(task, timeout_s=seconds)
    except TrialFailed as failure:
        if cut and failure.kind == "timeout":
            clock.up = True
            if isinstance(task, protocol.Prepare):
                candidate.failure = TIME_UP
            return
        candidate.failure = f"{failure.kind}: {failure.reason}"
        return
    if isinstance(answer, protocol.Prepared):
        candidate.warmup_s, candidate.frames = answer.warmup_s, answer.frames
    else:
        candidate.latency_s.extend(answer.latency_s)
        if answer.rendered is not None:
            candidate.images = answer.rendered
        if answer.image_problem:
            candidate.failure = f"image: {answer.image_problem}"
    peaks = [p for p in (candidate.peak_memory_bytes, candidate.trial_peak_bytes, answer.peak_memory_bytes)
             if p is not None]
    candidate.peak_memory_bytes = max(peaks, default=None)
