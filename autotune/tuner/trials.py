"""The trial loop: ask the study, send the configuration to a worker, record what came back.

A failure is data: an out-of-memory error, a crash, a hang, unusable images or a configuration that breaks a rule
between knobs all end as a COMPLETE trial that violates a constraint (`trial.set_constraint`), so the sampler learns
from it; a FAILED trial would teach it nothing. This module knows nothing of how a knob is applied.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import time
from typing import Any

import optuna

from autotune import knobs
from autotune.compare.records import TrialRecord, feasible
from autotune.compare.scoring import Scoring
from autotune.exceptions import AutotuneError, TrialFailed
from autotune.hardware import probe
from autotune.measure import quality
from autotune.measure.memory_model import REFUSE_MARGIN, MemoryModel, Observation, compiles
from autotune.measure.timing import Repeats
from autotune.units import format_size
from autotune.worker import protocol
from autotune.worker.batching import BatchPolicy, doublings
from autotune.worker.process import Worker

from .space import FEWER_STEPS_RECIPE, calibration_for, fewer_steps, suggest
from .spec import Events, StudySpec, scoring_for
from .study import GRACE_PERIOD_S, counts, finished, surplus, wait_for_slot


class DeadlineReached(Exception):
    """The search's time limit passed while a trial ran: the trial is stopped and queued again, so that the study,
    resumed, runs it first, instead of keeping it as a configuration that failed."""


class _QuietStops(logging.Filter):
    """Optuna logs a trial stopped by Ctrl-C or by the time limit as failed, with the whole traceback, then its
    value; the search says it in one line (the trial is queued again)."""

    stopped: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        stopped_by = (KeyboardInterrupt, DeadlineReached)
        if record.exc_info and record.exc_info[0] and issubclass(record.exc_info[0], stopped_by):
            self.stopped = str(record.getMessage()).split(" failed", 1)[0]  # "Trial 3"
            return False
        if self.stopped and record.getMessage().startswith(f"{self.stopped} failed with value"):
            self.stopped = None
            return False
        return True


logging.getLogger("optuna.study._optimize").addFilter(_QuietStops())


class SearchInterrupted(AutotuneError, KeyboardInterrupt):
    """Ctrl-C: the study is saved; the same command resumes it."""

    def __init__(self, message: str = "interrupted: the study is saved; run the same command to resume"):
        super().__init__(message)


def run_trials(study: optuna.Study, worker: Worker, spec: StudySpec, emit: Events,
               timeout_s: float | None = None, scoring: Scoring | None = None, fewer_steps_first: bool = True) -> None:
    """Run trials until the study has `spec.n_trials` complete ones, over all its workers, or a time limit passes.

    Under a quality floor, `fewer_steps_first` queues after each trial the next of a bisection on steps from the
    reference configuration (`space.fewer_steps`), ahead of the sampler's own trials.

    Each trial is one `study.optimize` step: Optuna beats the trial's heartbeat while it runs, and first fails the
    trials of dead workers so that its retry callback queues them again.
    """
    started = time.monotonic()
    limits = (spec.deadline, time.time() + timeout_s if timeout_s is not None else None)
    deadline = min((limit for limit in limits if limit is not None), default=None)
    if scoring is None and spec.reference_steps:
        scoring = scoring_for(spec, worker, probe(worker.config.device), emit)
    asked: list[optuna.Trial] = []

    def objective(trial: optuna.Trial) -> float | list[float]:
        asked[:] = [trial]
        if surplus(study, trial, spec.n_trials):
            raise optuna.TrialPruned("another worker took the study's last trial at the same moment")
        TrialRecord.write(trial, worker=f"{socket.gethostname()}:{os.getpid()}")
        return run_one(trial, study, worker, spec, scoring, deadline)

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            emit("trial", trial_event(study, trial.number, spec.n_trials, started, deadline))
            if fewer_steps_first and scoring is not None:
                queue_fewer_steps(study, spec)

    while wait_for_slot(study, spec.n_trials, deadline, emit):
        try:
            study.optimize(objective, n_trials=1, callbacks=[report])
        except KeyboardInterrupt:
            if asked:  # Optuna failed it; queued again, it runs first when the study resumes
                study.enqueue_trial(asked[0].params, skip_if_exists=False)
            raise SearchInterrupted() from None
        except DeadlineReached:
            study.enqueue_trial(asked[0].params, skip_if_exists=False)
            emit("phase", {"message": f"the time limit stopped trial {asked[0].number}; it is queued again and runs "
                                      "first when the study resumes"})
            break
        except optuna.exceptions.UpdateFinishedTrialError:
            emit("phase", {"message": f"trial {asked[0].number} was taken for dead (no heartbeat for "
                                      f"{GRACE_PERIOD_S} s) and queued again; its result here is dropped"})


def queue_fewer_steps(study: optuna.Study, spec: StudySpec) -> None:
    """Queue the next trial of the bisection for the fewest steps that meet the floor (`space.fewer_steps`): one at a
    time, once the seeds queued before it have run, and never past the study's trials."""
    queued = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    if queued or sum(counts(study)) >= spec.n_trials:
        return
    following = fewer_steps(finished(study), spec.space)
    if following is not None and not knobs.violations({**spec.fixed, **following}):
        study.enqueue_trial(following, user_attrs={"recipe": FEWER_STEPS_RECIPE}, skip_if_exists=True)


def run_one(trial: optuna.Trial, study: optuna.Study, worker: Worker, spec: StudySpec,
            scoring: Scoring | None = None, deadline: float | None = None) -> float | list[float]:
    """Sample one configuration, run it in `worker` (unless it breaks a rule between knobs) and record the result,
    with where the trial's time went (`seconds`: the worker's split, and the whole trial as the driver saw it).

    With a `deadline` (seconds since the epoch), the trial may run only until then (`DeadlineReached`)."""
    started, spent = time.perf_counter(), {}
    try:
        value = _run_one(trial, study, worker, spec, scoring, spent, deadline)
    except DeadlineReached:  # its time is the search's too: `time_split` reports it apart
        TrialRecord.write(trial, seconds={"trial": round(time.perf_counter() - started, 4)}, stopped="time limit")
        raise
    TrialRecord.write(trial, seconds={**spent, "trial": round(time.perf_counter() - started, 4)})
    return value


def _run_one(trial: optuna.Trial, study: optuna.Study, worker: Worker, spec: StudySpec, scoring: Scoring | None,
             spent: dict[str, float], deadline: float | None) -> float | list[float]:
    settings = suggest(trial, spec.space, spec.fixed)
    broken = knobs.violations(settings)
    if broken:  # never run: the sampler learns it from an infeasible trial
        return record_failure(trial, spec.objective, "rules", "; ".join(broken), scoring)
    policy = batch_policy(spec, settings)
    model = memory_model(study, spec)
    if model is not None:
        trial.set_user_attr("prediction_trials", model.calibration.trials)
        smallest = policy.sizes[0]
        if model.refuses(settings, smallest, spec.memory_budget_bytes):
            return record_predicted_oom(trial, spec, model.predict(settings, smallest), smallest, scoring)
    task = protocol.TrialTask(
        settings=settings, workload=spec.workload,
        call_kwargs=knobs.call_kwargs({**settings, "batch_size": 1}),
        policy=policy, repeats=screen_repeats(settings), score=scoring.task() if scoring else None,
        calibrate=calibration_for(spec.calibrated, settings, scoring.metric, scoring.minimum) if scoring else None)
    timeout = trial_timeout(spec, settings)
    cut = deadline is not None and deadline - time.time() < timeout
    try:
        answer = worker.request(task, timeout_s=max(1.0, deadline - time.time()) if cut else timeout,
                                on_batch=lambda measured: not pruned(trial, measured))
    except TrialFailed as failure:
        if cut and failure.kind == "timeout":
            raise DeadlineReached() from None
        value = record_failure(trial, spec.objective, failure.kind, failure.reason, scoring)
    except KeyboardInterrupt:
        worker.kill()
        raise
    else:
        value = record_result(trial, spec.objective, answer, spec.memory_budget_bytes, scoring)
        spent.update(answer.seconds)  # the worker's split
        if answer.recycle or not reversible(answer.settings):
            worker.kill()
    if model is not None:
        # Beside the measurement, at the batch it was measured at: the report shows the model's error.
        batch = TrialRecord.of(trial).batch_size or policy.sizes[0]
        TrialRecord.write(trial, predicted_peak_bytes=model.predict(settings, batch))
    return value


def memory_model(study: optuna.Study, spec: StudySpec) -> MemoryModel | None:
    """The study's memory model, calibrated on its measured trials so far; None when the study records no facts
    about its pipeline (made by an older autotune)."""
    if spec.memory_facts is None:
        return None
    workload = spec.workload
    model = MemoryModel(spec.memory_facts, workload.height, workload.width, workload.guidance_scale)
    return model.calibrated([o for o in map(observation, finished(study)) if o is not None])


def observation(trial: optuna.trial.FrozenTrial) -> Observation | None:
    """A trial's measured (batch, peak) points, with the settings it ran; None when it measured none."""
    record = TrialRecord.of(trial)
    points = tuple((b["batch_size"], b["peak_memory_bytes"]) for b in record.batches
                   if b.get("peak_memory_bytes") is not None and not b.get("oom"))
    return Observation(record.settings, points) if record.settings and points else None


def record_predicted_oom(trial: optuna.Trial, spec: StudySpec, predicted: int, batch: int,
                         scoring: Scoring | None = None) -> float | list[float]:
    """Record a configuration the memory model says cannot fit as infeasible, without running it; its memory
    constraint is the predicted excess, so the sampler learns how far over it is."""
    budget = spec.memory_budget_bytes
    value = record_failure(trial, spec.objective, "predicted-oom",
                           f"predicted {format_size(predicted)} at batch {batch}, over {REFUSE_MARGIN:g}x the "
                           f"budget {format_size(budget)}: not run", scoring, (predicted - budget) / 2**30)
    TrialRecord.write(trial, predicted_peak_bytes=predicted)
    return value


def screen_repeats(settings: dict[str, Any]) -> Repeats:
    """A trial's timing: the quick screen, its warm-up call cut to one step unless the configuration compiles (a
    compiled step cache takes branches in later steps that compile when first reached, and a compiled warm-up is
    compile time anyway, reported apart)."""
    if compiles(settings):
        return protocol.SCREEN_REPEATS
    return dataclasses.replace(protocol.SCREEN_REPEATS, warmup_steps=1)


def trial_timeout(spec: StudySpec, settings: dict[str, Any]) -> float:
    """The trial timeout, scaled by how many more steps than the workload's this trial renders: the reference
    configuration (the reference's steps, under a quality floor) must have the time it needs, or no configuration
    that meets the floor is left."""
    steps, workload_steps = settings.get("steps"), spec.steps or spec.fixed.get("steps")
    if not isinstance(steps, int) or not workload_steps or steps <= workload_steps:
        return spec.trial_timeout_s
    return spec.trial_timeout_s * steps / workload_steps


def batch_policy(spec: StudySpec, settings: dict[str, Any]) -> BatchPolicy:
    """A latency trial times batch 1; a pinned batch (`--pin batch_size=4`) or a Pareto trial's sampled one is the
    only size timed; a throughput trial doubles the batch while it pays and the study's pruner lets it (`pruned`)."""
    if spec.objective == "latency":
        sizes: tuple[int, ...] = (1,)
    elif "batch_size" in spec.space or "batch_size" in spec.fixed:
        sizes = (settings["batch_size"],)
    else:
        sizes = doublings(spec.max_batch)
    return BatchPolicy(sizes, spec.memory_budget_bytes)


def pruned(trial: optuna.Trial, measured: protocol.BatchResult) -> bool:
    """Report a throughput trial's images/s at the batch size just timed (the step is the batch) and ask the
    study's pruner whether it stops there. A stopped trial still completes, with the batch it reached: it is a
    measured configuration, only not at its best batch, and the sampler and the memory model learn from it."""
    if measured.images_per_s is None:
        return False
    trial.report(measured.images_per_s.median, step=measured.batch_size)
    if not trial.should_prune():
        return False
    TrialRecord.write(trial, pruned_at_batch=measured.batch_size)
    return True


def reversible(settings: dict[str, Any]) -> bool:
    """Whether a worker that applied `settings` can serve another trial (no compile, no offload hooks)."""
    return all(knob.reversible or settings.get(knob.name, knob.default) == knob.default for knob in knobs.in_order())


def record_result(trial: optuna.Trial, objective: str, answer: protocol.TrialResult, budget_bytes: int,
                  scoring: Scoring | None = None) -> float | list[float]:
    """Record a trial the worker finished: the chosen batch's numbers, its constraints, and its objective value(s)."""
    batches = [b for b in answer.batches if b.oom is None]
    if not batches:  # out of memory at the only batch size asked for
        return record_failure(trial, objective, "oom", answer.batches[0].oom, scoring)
    problem = next((b.image_problem for b in batches if b.image_problem), None)
    # A batch-dependent configuration's batches are each scored: one that misses the floor is not chosen.
    meeting = [b for b in batches if b.quality is None or scoring is None or scoring.meets(b.quality)]
    chosen, fitting = choose_batch(meeting or batches, budget_bytes, objective)
    others = [(size, *choose_batch([b for b in size.batches if b.oom is None], budget_bytes, objective))
              for size in answer.other_sizes]
    if others:  # each other size at its own best batch; the objective weighs every size alike (geometric mean)
        TrialRecord.write(trial, sizes=[size_record(size, best) for size, best, _ in others])
        fitting = fitting and all(fits for _, _, fits in others)
    TrialRecord.write(trial, batch_size=chosen.batch_size, images_per_s=chosen.images_per_s_median,
                      seconds_per_image=chosen.seconds_per_image, peak_memory_bytes=chosen.peak_memory_bytes,
                      warmup_s=round(chosen.warmup_s, 3) if chosen.warmup_s is not None else None,
                      settings=answer.settings, batches=[b.record() for b in answer.batches])
    if answer.calibration:
        TrialRecord.write(trial, calibration=[list(pair) for pair in answer.calibration])
    if problem:
        TrialRecord.write(trial, failure="image", reason=problem)
    scores, by_prompt = chosen.quality or answer.quality, chosen.quality_by_prompt or answer.quality_by_prompt
    if scoring is not None:
        TrialRecord.write(trial, quality=scores or {}, quality_by_prompt=by_prompt or {})
        if scores and not scoring.meets(scores) and not problem:
            TrialRecord.write(trial, failure="quality",
                              reason=f"{scoring.metric} {scores[scoring.metric]:.4g} < {scoring.minimum:.4g}")
    # Constraints are <= 0 when met; in GiB, so the sampler sees sizes it can compare. Unmeasured memory violates.
    peaks = [chosen.peak_memory_bytes, *(best.peak_memory_bytes if best else None for _, best, _ in others)]
    peak = None if None in peaks else max(peaks)
    trial.set_constraint("memory", (peak - budget_bytes) / 2**30 if peak is not None else 1.0)
    trial.set_constraint("image", 1.0 if problem and not fitting else 0.0)
    trial.set_constraint("failure", 0.0)
    if scoring is not None:
        trial.set_constraint("quality", scoring.violation(scores) if scores else 1.0)
    if not fitting:
        return worst(objective)
    if objective == "pareto":
        return [chosen.images_per_s_median, peak / 2**30,
                (scores or {}).get(scoring.metric if scoring else "ssim", quality.worst_score("ssim"))]
    if objective == "latency":
        return geometric_mean([chosen.seconds_per_image, *(best.seconds_per_image for _, best, _ in others)])
    return geometric_mean([chosen.images_per_s_median, *(best.images_per_s_median for _, best, _ in others)])


def choose_batch(batches: list[protocol.BatchResult], budget_bytes: int,
                 objective: str) -> tuple[protocol.BatchResult | None, bool]:
    """The batch a trial keeps at one size: the best under the budget with usable images, else the smallest
    measured (recorded, infeasible); and whether it fits."""
    fitting = [b for b in batches if b.peak_memory_bytes is not None and b.peak_memory_bytes <= budget_bytes
               and not b.image_problem]
    if not fitting:
        return min(batches, key=lambda b: b.peak_memory_bytes or 0, default=None), False
    key = (lambda b: -b.seconds_per_image) if objective == "latency" else (lambda b: b.images_per_s_median)
    return max(fitting, key=key), True


def size_record(size: protocol.SizeResult, chosen: protocol.BatchResult | None) -> dict[str, Any]:
    """What a trial records of one of the workload's other sizes: its batch and that batch's figures."""
    return {"height": size.height, "width": size.width, "batch_size": chosen.batch_size if chosen else None,
            "images_per_s": chosen.images_per_s_median if chosen else None,
            "peak_memory_bytes": chosen.peak_memory_bytes if chosen else None,
            "oom": next((b.oom for b in size.batches if b.oom), None)}


def geometric_mean(values: list[float]) -> float:
    return math.prod(values) ** (1 / len(values))


def record_failure(trial: optuna.Trial, objective: str, kind: str, reason: str,
                   scoring: Scoring | None = None, memory_violation: float | None = None) -> float | list[float]:
    """Record a trial that did not run to the end (`kind`: oom, error, timeout, crash, rules, predicted-oom) as
    infeasible."""
    TrialRecord.write(trial, failure=kind, reason=reason)
    if memory_violation is None:
        memory_violation = 1.0 if kind == "oom" else 0.0
    trial.set_constraint("memory", memory_violation)
    trial.set_constraint("image", 0.0)
    trial.set_constraint("failure", 1.0)
    if scoring is not None:
        trial.set_constraint("quality", 0.0)
    return worst(objective)


def worst(objective: str) -> float | list[float]:
    """An objective value anything that ran beats."""
    if objective == "pareto":
        return [0.0, 1e3, -1.0]  # no images/s, a terabyte, no likeness: dominated by anything that ran
    return 1e9 if objective == "latency" else 0.0


def trial_event(study: optuna.Study, number: int, n_trials: int, started: float,
                deadline: float | None) -> dict[str, Any]:
    """A finished trial as a progress event: its numbers, the best so far, and an estimate of the time left."""
    trial = study.trials[number]
    record = TrialRecord.of(trial)
    done = len(finished(study))
    best = max((TrialRecord.of(t).images_per_s or 0.0 for t in finished(study) if feasible(t)), default=None)
    elapsed = time.monotonic() - started
    left = elapsed / max(1, done) * max(0, n_trials - done)
    if deadline is not None:
        left = min(left, max(0.0, deadline - time.time()))
    settings = {**(record.settings or record.params), "batch_size": record.batch_size}
    return {"number": number, "done": done, "total": n_trials, "best_images_per_s": best,
            "images_per_s": record.images_per_s, "failure": record.failure, "reason": record.reason,
            "feasible": feasible(trial), "seconds_left": left,
            "changed": knobs.show_changed({k: v for k, v in settings.items() if v is not None and k in knobs.KNOBS}),
            "peak_memory_bytes": record.peak_memory_bytes}
