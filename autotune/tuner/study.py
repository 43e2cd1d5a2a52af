"""The shared study: its name, storage and sampler, opening and resuming it (what it records is `spec`'s), and
when a trial may start.

Optuna is the distributed engine: every worker, on any host, asks the same study in one storage for its next trial.
An RDB storage (SQLite on one host, PostgreSQL or MySQL for many) runs Optuna's heartbeat: a trial whose worker died
stops beating, is failed by the next worker that looks, and is queued again by Optuna's retry callback. A journal file
(a plain path, for a shared filesystem) has no heartbeat. Opening a storage, and what its failures say, is `storages`'.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from autotune.compare.records import TrialRecord
from autotune.exceptions import CannotWrite
from autotune.files import storage_file
from autotune.hardware import Fingerprint
from autotune.worker.server import pid_alive
from autotune.workload import Workload

from .spec import Events, StudySpec
from .storages import GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S, StorageError, open_storage, redact

if TYPE_CHECKING:
    from autotune.options import FloorSpec

# Where `autotune worker` also reads its storage URL: workers started here get it there, not on a command line (`ps`).
STORAGE_ENV = "AUTOTUNE_STORAGE"


@contextlib.contextmanager
def optuna_warnings_only() -> Iterator[None]:
    """Optuna's INFO lines (a line per trial, one per study created) off while autotune runs a study, which prints its
    own; the level is put back after, so that importing or running autotune leaves an app's logging as it was."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def has_heartbeat(study: optuna.Study) -> bool:
    # Optuna's own test (its ask() makes the same one); a journal file has no heartbeat.
    return optuna.storages._heartbeat.is_heartbeat_enabled(study._storage)


def load(url: str, name: str, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """Join the existing study `name`; a missing study says how to start one. A missing SQLite or journal file holds
    no study, and is refused before Optuna opens it: opening would leave an empty database behind a typo."""
    start = f"start it with autotune search --storage URL --study {name} (and the model, budget and trials)"
    file = storage_file(url)
    if file is not None and not file.is_file():
        raise StorageError(f"no study {name!r} in {redact(url)}: no such file; {start}")
    try:
        return optuna.load_study(study_name=name, storage=open_storage(url), sampler=sampler)
    except KeyError:
        raise StorageError(f"no study {name!r} in {redact(url)}; {start}") from None


# ---- naming, opening and resuming a study ----


def default_study_name(model_id: str, fingerprint: Fingerprint, workload: Workload, objective: str,
                       floor: FloorSpec | None = None, budget_bytes: int | None = None) -> str:
    """The model, the hardware, the size, the objective, the budget and the floor, as one name fit for a file: the
    same command with another --budget starts a study of its own (its trials' feasibility depends on it)."""
    hardware = fingerprint.hardware
    where = hardware.gpu if hardware.device == "cuda" else "cpu"
    sizes = "-".join(f"{height}x{width}" for height, width in workload.sizes())
    text = f"{model_id}-{where}-{sizes}-{objective}"
    if budget_bytes is not None:
        text += f"-{budget_bytes / 2**30:.3g}gib"
    if floor is not None:
        text += f"-{floor.metric}{floor.value:g}{'pct' if floor.relative else ''}"
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text).strip("-").lower()


def output_paths(out: str | Path | None, study_name: str) -> tuple[str | None, str]:
    """The profile to write ("{study}" in it becomes the study's name) and its `.log` sibling for worker output.

    The profile's folder is made now (`check_writable` allowed one that does not exist yet): the log and the default
    SQLite study go there long before the profile does, and SQLite makes no folder."""
    if out is None:
        return None, os.devnull
    out = str(out).replace("{study}", study_name)
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CannotWrite(f"cannot write {out}: {error.strerror or error}") from None
    return out, str(Path(out).with_suffix(".log"))


def default_storage(out: str | Path | None, study_name: str) -> str:
    """An SQLite file next to the output profile (or in the current folder)."""
    base = Path(out).with_suffix(".db") if out is not None else Path(f"{study_name}.db")
    return f"sqlite:///{base.resolve()}"


def make_sampler(sampler: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # Pinned, since Optuna 5 changed defaults (multivariate, constant_liar): the profile records what ran.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True, constant_liar=True)


# PercentilePruner's percentile is the share of trials it keeps at each step.
PRUNE_PERCENTILE = 75.0


def make_pruner(pruner: str | None = "percentile") -> optuna.pruners.BasePruner:
    """The pruner of a throughput trial's batch doubling: after each batch size the trial reports its images/s there
    (the step is the batch size), and with "percentile" a trial in the bottom quarter of the study's trials at that
    batch stops growing it. A quarter, not a half: timings of near-equal configurations spread by 10-20% between
    trials, and a stopped trial keeps the rate of the batch it stopped at. "none" never stops one; None is a study
    recorded before the choice, which pruned."""
    if pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.PercentilePruner(PRUNE_PERCENTILE, n_startup_trials=4, n_min_trials=3)


# A Pareto study's objectives, in order.
PARETO_DIRECTIONS = ("maximize", "minimize", "maximize")  # images/s, peak memory (GiB), quality


def directions(objective: str) -> list[str]:
    if objective == "pareto":
        return list(PARETO_DIRECTIONS)
    return ["minimize" if objective == "latency" else "maximize"]


def open_study(name: str, storage: str, spec: StudySpec) -> optuna.Study:
    """Create the study, or resume it when it was made for the same model, workload, objective and hardware.

    The spec is recorded (again) so that the workers that join see this search's trial count, budget and time limit.
    """
    study = optuna.create_study(study_name=name, storage=open_storage(storage),
                                sampler=make_sampler(spec.sampler, spec.seed), pruner=make_pruner(spec.pruner),
                                directions=directions(spec.objective),
                                load_if_exists=True)
    if spec.objective == "pareto" and study.metric_names is None:
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what its plots label axes with
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            floor = spec.quality_floor
            study.set_metric_names(["images/s", "peak memory (GiB)", floor.metric if floor else "ssim"])
    spec.check_resumes(study.user_attrs, name, redact(storage))
    _reclaim_interrupted(study)  # before the seed: a dead search's trial is no other process running
    if (seed := seed_for(study, spec.seed)) != spec.seed:
        study.sampler = make_sampler(spec.sampler, seed)
    spec.record(study)
    return study


def seed_for(study: optuna.Study, seed: int) -> int:
    """The sampler seed of a search that opens `study`: `seed` itself, so that one search is reproducible, unless
    other processes are running trials of it; then `seed` mixed with this host and pid, since two searches with one
    seed would otherwise suggest the same configurations side by side."""
    if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        return seed
    mixed = zlib.crc32(f"{seed}:{socket.gethostname()}:{os.getpid()}".encode())
    return mixed if mixed != seed else mixed + 1


def _reclaim_interrupted(study: optuna.Study) -> None:
    # Without a heartbeat (a journal file) nothing tells a dead worker's trial from a live one: a search that starts
    # takes every RUNNING trial for the remains of a killed search, fails it and queues it again. With one, a trial
    # that no live process holds is taken at once rather than after the grace period, and one that never beat (its
    # search met a failed storage between asking and beating) at all: the heartbeat would never fail it.
    heartbeat = has_heartbeat(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not heartbeat or abandoned(trial):
            _queue_again(study, trial)


def reclaim_abandoned(study: optuna.Study) -> None:
    """Fail and queue again the running trials that never recorded their worker and started more than the grace
    period ago: their search met a failed storage between asking and beating, and a heartbeat never fails a trial
    that never beat, so a search waiting for the study's last slots would wait for them forever. A trial that
    recorded its worker has beaten: the heartbeat fails it and Optuna's retry callback queues it again."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if TrialRecord.of(trial).worker is None and abandoned(trial):
            _queue_again(study, trial)


def _queue_again(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    try:
        study.tell(trial.number, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:  # another process reclaimed it first, or it just finished
        return
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)


def abandoned(trial: optuna.trial.FrozenTrial) -> bool:
    """A running trial whose worker was a process of this host that is gone, or that never recorded its worker and
    started more than the grace period ago (a live worker records itself as its trial starts)."""
    host, _, pid = (TrialRecord.of(trial).worker or "").rpartition(":")
    if host:
        return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))
    started = trial.datetime_start  # Optuna's clock: local time, naive
    return started is not None and (datetime.datetime.now() - started).total_seconds() > GRACE_PERIOD_S


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's complete trials (feasible or not), over all workers."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


# ---- when a trial may start ----


def counts(study: optuna.Study) -> tuple[int, int]:
    """(complete, running) trials of the study, over all workers."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    complete = sum(1 for t in trials if t.state == TrialState.COMPLETE)
    return complete, len(trials) - complete


def wait_for_slot(study: optuna.Study, n_trials: int, deadline: float | None, emit: Events,
                  poll_s: float = HEARTBEAT_INTERVAL_S) -> bool:
    """True when a new trial may start: fewer than `n_trials` trials are complete or running.

    While the last slots are held by other workers' running trials, wait: if one of those workers dies, Optuna's
    heartbeat fails its trial and the retry callback queues it again, for this worker to take. False when the study
    has its trials, when `deadline` passed, or when the storage has no heartbeat to tell a dead worker from a slow one.
    """
    said = False
    while True:
        if deadline is not None and time.time() >= deadline:
            emit("phase", {"message": "the study's time limit is reached"})
            return False
        if has_heartbeat(study):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fail_stale_trials(study)
            reclaim_abandoned(study)
        complete, running = counts(study)
        if complete >= n_trials:
            return False
        if complete + running < n_trials:
            return True
        if not has_heartbeat(study):
            return False
        if not said:
            emit("phase", {"message": f"{running} trials of other workers hold the study's last slots; waiting in "
                                      f"case one dies (its trial is retried {GRACE_PERIOD_S} s after its last beat)"})
            said = True
        time.sleep(poll_s)


def surplus(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """True when `n_trials` trials (complete or running) started before `trial`: two workers asked at once.

    Every worker orders the study's trials the same way, by start time then number, and only the first `n_trials`
    run: the total never overshoots. (Start times come from each host's clock: keep the hosts' clocks in sync.)
    """
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))

    def order(t: optuna.trial.FrozenTrial) -> tuple[datetime.datetime, int]:
        return t.datetime_start or datetime.datetime.min, t.number

    mine = next((order(t) for t in trials if t.number == trial.number), None)
    return mine is not None and sum(1 for t in trials if order(t) < mine) >= n_trials

