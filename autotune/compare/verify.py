"""Verify: re-measure a profile on this machine and hold it to what it records.

The profile runs the way the search measured it (`remeasure.remeasure`): in a worker process, warmed up, then timed
in rounds of 2 runs. Several workers, one after the other: on a small CPU a whole process can run ~25% slower than
the next one with the same settings and nothing else running.

Checks: images/s no more than `tolerance` below the recorded median (only on the hardware model it was measured on;
faster is never a failure), peak memory within the profile's budget, and quality at or above its floor. A check that
cannot be made here is `skip`, with the reason. Images/s is judged on the fastest worker's median, since
interference only ever slows a run down; the median over all runs is reported beside it, with the share of the CPU
that other processes used meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from autotune.apply import ProfileLike, check_pipeline_fits, resolve_profile
from autotune.exceptions import IncompatibleProfile, InvalidInput
from autotune.hardware import Hardware, probe
from autotune.measure.figures import Stat
from autotune.measure.host_load import BUSY_SHARE as SEARCH_BUSY_SHARE
from autotune.measure.host_load import OthersCpu
from autotune.options import DEFAULT_REFERENCE_STEPS, DEFAULT_TOLERANCE, FloorSpec
from autotune.pipelines import HubOptions
from autotune.profile import Profile
from autotune.profile.library import SearchPath
from autotune.units import format_size
from autotune.worker.process import Worker, WorkerConfig

from .candidates import Candidate
from .remeasure import remeasure
from .scoring import Scoring, prepare_reference

# Other processes using more than this share of the machine's CPU time while verify measures make its timings suspect.
BUSY_SHARE = 0.10
Status = Literal["pass", "fail", "skip"]


@dataclass
class Check:
    metric: str
    recorded: str
    measured: str
    limit: str
    status: Status
    note: str = ""


@dataclass
class Verification:
    """What `verify_profile` measured, and each metric's verdict."""

    profile: Profile
    model: str
    hardware: Hardware
    same_hardware: bool
    checks: list[Check] = field(default_factory=list)
    images_per_s: Stat | None = None
    peak_memory_bytes: int | None = None
    warmup_s: float | None = None
    workers: int = 0
    rounds: int = 0
    failure: str | None = None
    others_cpu_share: float = 0.0  # of all cores, used by other processes while this measured
    worker_images_per_s: list[float] = field(default_factory=list)  # each worker's median
    quality: dict[str, float] = field(default_factory=dict)  # against a reference rendered (or cached) here

    @property
    def best_worker_images_per_s(self) -> float | None:
        """What images/s is judged on. Interference (a busy neighbour, an unlucky process) only ever slows a run
        down, so the fastest worker's median is the best estimate of what the profile does here (the reasoning of
        `timeit`'s advice to take the minimum); each worker's median keeps one lucky run from counting."""
        return max(self.worker_images_per_s, default=None)

    @property
    def busy(self) -> bool:
        return self.others_cpu_share > BUSY_SHARE

    @property
    def passed(self) -> bool:
        return all(check.status != "fail" for check in self.checks)


def verify_profile(
    profile: ProfileLike,
    model: str | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    workers: int = 5,
    rounds: int = 2,
    timeout_s: float = 600.0,
    search_path: SearchPath = None,
    time_limit_s: float | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> Verification:
    """Re-measure `profile` here on `model` (default: the profile's own) and check it against its record.

    `on_progress` is told each step as it starts. With `time_limit_s`, no further worker starts once that time has
    passed (the first always runs): the verdict is then on the workers measured, and `workers` says how many.

    >>> result = verify_profile("tiny-sd-cpu")  # doctest: +SKIP
    >>> result.passed, [(c.metric, c.status) for c in result.checks]  # doctest: +SKIP
    (True, [('images/s', 'pass'), ('peak memory', 'pass'), ('quality', 'skip')])
    """
    if not 0 < tolerance < 1:
        raise InvalidInput(f"tolerance must be between 0 and 1 (0.10 is 10%), got {tolerance}")
    if workers < 1 or rounds < 1:
        raise InvalidInput("verify needs at least one worker and one round")
    resolved = resolve_profile(profile, search_path)
    model = model or resolved.model.id
    hardware = probe().hardware
    _check_runnable_here(resolved, model, hardware)
    result = Verification(resolved, model, hardware, resolved.hardware.same_model(hardware), workers=workers,
                          rounds=rounds)
    with OthersCpu() as others:
        _measure(result, timeout_s, time.monotonic() + time_limit_s if time_limit_s else None,
                 on_progress or (lambda message: None))
    result.others_cpu_share = others.share
    result.checks = [_speed_check(result, tolerance), _memory_check(result), _quality_check(result),
                     _load_check(result)]
    return result


def _check_runnable_here(profile: Profile, model: str, hardware: Hardware) -> None:
    if profile.hardware.device != hardware.device:
        raise IncompatibleProfile(f"the profile runs on {profile.hardware.device} ({profile.hardware.describe()}); "
                                  f"this machine runs on {hardware.device}: verify it on such a machine")
    check_pipeline_fits(profile, model)


def _measure(result: Verification, timeout_s: float, deadline: float | None, tell: Callable[[str], None]) -> None:
    profile = result.profile
    settings = profile.settings_dict()
    # The profile's own model at the commit and weights variant it was tuned on.
    tuned = profile.model if result.model == profile.model.id else None
    hub = HubOptions(tuned.revision, tuned.variant, config=tuned.config) if tuned is not None else HubOptions()
    config = WorkerConfig(model=result.model, device=result.hardware.device,
                          memory_budget_bytes=profile.goal.memory_budget_bytes, hub=hub)
    runs = [Candidate(f"worker {number}", settings) for number in range(1, result.workers + 1)]
    if profile.goal.quality_floor is not None:
        tell("rendering (or reading) the reference to score quality against")
    scoring = _reference(profile, result.model, config, timeout_s)
    started = time.monotonic()
    for number, run in enumerate(runs, 1):
        if number > 1 and deadline is not None and time.monotonic() > deadline:
            tell(f"time limit reached after {number - 1} of {len(runs)} workers")
            runs = runs[:number - 1]
            result.workers = len(runs)
            break
        so_far = ", ".join(f"{r.images_per_s.median:.3g}" for r in runs[:number - 1] if r.latency_s)
        tell(f"worker {number} of {len(runs)}: warm-up and {result.rounds} round{'s' * (result.rounds != 1)}"
             + (f" (so far {so_far} images/s" + f", {time.monotonic() - started:.0f} s)" if so_far else ""))
        # One worker alive at a time, as an app runs: on a 2-core machine, the same profile measured ~20% slower with
        # two idle workers alive beside it than alone.
        remeasure([run], config, profile.workload, result.rounds, timeout_s,
                  scoring=scoring if run is runs[0] else None)
    result.quality = runs[0].quality
    failed = [run for run in runs if run.failure]
    if failed:
        result.failure = failed[0].failure
    pooled = Candidate("all", settings, latency_s=[s for run in runs if not run.failure for s in run.latency_s])
    result.worker_images_per_s = [run.images_per_s.median for run in runs if run.latency_s and not run.failure]
    if pooled.latency_s:
        result.images_per_s = pooled.images_per_s
        result.warmup_s = max(run.warmup_s for run in runs)
    result.peak_memory_bytes = max((run.peak_memory_bytes for run in runs if run.peak_memory_bytes), default=None)


def _speed_check(result: Verification, tolerance: float) -> Check:
    metrics = result.profile.metrics
    recorded = metrics.images_per_s if metrics else None
    best, pooled = result.best_worker_images_per_s, result.images_per_s
    shown = (f"{best:.3g} (best worker; all runs: {pooled.median:.3g}, cv {pooled.cv:.0%}, n {pooled.n})"
             if best is not None and pooled is not None else "not measured")
    check = Check("images/s", f"{recorded.median:.3g} (cv {recorded.cv:.0%}, n {recorded.n})" if recorded else
                  "not recorded", shown, "-", "skip")
    if result.failure:
        check.status, check.note = "fail", f"the profile did not run here: {result.failure}"
    elif not result.same_hardware:
        check.note = (f"measured elsewhere ({result.profile.hardware.describe()}): only the budget and the quality "
                      "floor are checked here")
    elif recorded is None or best is None:
        check.note = "no recorded images/s to compare with"
    else:
        low = recorded.median * (1 - tolerance)
        check.limit = f">= {low:.3g} (-{tolerance:.0%})"
        check.status = "pass" if best >= low else "fail"
        check.note = f"{best / recorded.median - 1:+.0%} vs recorded"
        if check.status == "fail" and result.busy:
            check.note += (f"; other processes used {result.others_cpu_share:.0%} of the CPU meanwhile: re-run on an "
                           "idle machine")
    return check


def _memory_check(result: Verification) -> Check:
    metrics = result.profile.metrics
    budget = result.profile.goal.memory_budget_bytes
    peak = result.peak_memory_bytes
    check = Check("peak memory", format_size(metrics.peak_memory_bytes if metrics else None), format_size(peak),
                  f"<= {format_size(budget)} (budget)" if budget else "-", "skip")
    if result.failure and "oom" in result.failure:
        check.status, check.note = "fail", "ran out of memory under the budget"
    elif budget is None:
        check.note = "no memory budget recorded"
    elif peak is None:
        check.note = "not measured: the profile did not run"
    else:
        check.status = "pass" if peak <= budget else "fail"
    return check


def _load_check(result: Verification) -> Check:
    """Whether the profile's own figures were measured on a quiet machine: made under load, its choice and figures
    may not hold on a quiet one (threads picked for the free cores, a ratio no interval could back), so it fails
    until a search on a quiet machine makes it again."""
    metrics = result.profile.metrics
    share = metrics.others_cpu_share if metrics else None
    check = Check("quiet when made", "not recorded" if share is None else f"others used {share:.0%} of the CPU",
                  f"others used {result.others_cpu_share:.0%}", f"<= {SEARCH_BUSY_SHARE:.0%}", "skip")
    if share is None:
        check.note = "the profile does not record the load it was measured under"
    elif share > SEARCH_BUSY_SHARE:
        check.status = "fail"
        check.note = "measured on a busy machine: search again on a quiet one before it ships"
    else:
        check.status = "pass"
    if metrics is not None and metrics.measured_in == "trial":
        check.note += ("; " if check.note else "") + ("its figures are its search trial's: the time limit stopped "
                                                     "the re-measurement first")
    return check


def _reference(profile: Profile, model: str, config: WorkerConfig, timeout_s: float) -> Scoring | None:
    """The profile's reference rendering on this machine (from the cache, or rendered now) when it has a floor."""
    floor = profile.goal.quality_floor
    if floor is None:
        return None
    with Worker(config) as worker:
        return prepare_reference(worker, model, profile.workload, floor.reference_steps or DEFAULT_REFERENCE_STEPS,
                                 probe(config.device), FloorSpec(floor.metric, floor.min), timeout_s,
                                 lambda kind, data: None)


def _quality_check(result: Verification) -> Check:
    metrics = result.profile.metrics
    floor = result.profile.goal.quality_floor
    recorded = ", ".join(f"{k} {v:.4g}" for k, v in metrics.quality.items()) if metrics and metrics.quality else ""
    measured = ", ".join(f"{k} {v:.4g}" for k, v in result.quality.items())
    check = Check("quality", recorded or "not recorded", measured or "not measured",
                  f">= {floor.min:g} {floor.metric}" if floor else "-", "skip")
    if floor is None:
        check.note = "the profile has no quality floor"
    elif floor.metric not in result.quality:
        check.status = "fail"
        check.note = "the images could not be scored here"
    else:
        check.status = "pass" if result.quality[floor.metric] >= floor.min else "fail"
        check.note = f"against a {floor.reference_steps or DEFAULT_REFERENCE_STEPS}-step reference rendered here"
    return check
