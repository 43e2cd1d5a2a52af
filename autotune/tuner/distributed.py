"""Many workers on one study: `autotune worker` joins a study and runs its trials; `autotune export` closes it.

Optuna is the distributed engine (see `study`): workers on any number of hosts share one study through its storage.
This module only starts workers on this host (one per visible GPU, each pinned with CUDA_VISIBLE_DEVICES), refuses a
machine that is not the study's hardware, and re-measures a study's winners on the host that exports it. Trials are
run by `trials.run_trials`, the profile is made by `outcome.finish_study`, as in a one-process search; this module
never imports `run` (which imports it for `--workers`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna

from autotune.compare.ablation import wanted as ablation_wanted
from autotune.exceptions import AutotuneError, first_line
from autotune.hardware import Fingerprint, Hardware, probe
from autotune.options import SearchOptions
from autotune.pipelines import HubOptions
from autotune.worker import compile_cache
from autotune.worker.process import Worker, WorkerConfig

from .outcome import SearchOutcome, finish_study
from .spec import Events, StudySpec, WrongHardware, check_machine
from .storages import surface_storage_failures
from .study import (
    STORAGE_ENV,
    counts,
    load,
    make_pruner,
    make_sampler,
    optuna_warnings_only,
    output_paths,
)
from .trials import SearchInterrupted, run_trials, trial_event

# How often the process that started local workers reads the study for its progress bar.
FOLLOW_S = 2.0
# After Ctrl-C, how long a worker may take to queue its trial again and leave.
STOP_S = 30.0


@surface_storage_failures
@optuna_warnings_only()
def run_worker(
    storage: str,
    study_name: str,
    *,
    timeout_s: float | None = None,
    log_path: str = os.devnull,
    workers: int = 1,
    on_event: Events | None = None,
) -> int:
    """Join `study_name` and run its trials until the study has its trial count or its time limit passes.

    `workers` > 1 starts that many worker processes on this host instead (one per visible GPU). Returns the number of
    trials this process completed. A machine that is not the study's hardware model is refused (`WrongHardware`).

    >>> run_worker("postgresql://tuner:secret@db.internal/autotune", "sd15-a100")  # doctest: +SKIP
    """
    emit = on_event or (lambda kind, data: None)
    # Unseeded: workers sharing one seed would suggest the same configurations side by side.
    study, spec, _ = join(storage, study_name, seeded=False)
    if workers > 1:
        launch_workers(workers, storage, study, spec, log_path, emit, timeout_s)
        return 0
    completed = 0

    def count(kind: str, data: dict) -> None:
        nonlocal completed
        completed += kind == "trial"
        emit(kind, data)

    with Worker(_worker_config(spec, log_path, study.study_name)) as worker:
        run_trials(study, worker, spec, count, timeout_s)
    return completed


@surface_storage_failures
@optuna_warnings_only()
def export_profile(
    storage: str,
    study_name: str,
    out: str | Path | None = "{study}.yaml",
    *,
    top_k: int = SearchOptions.top_k,
    rounds: int = SearchOptions.rounds,
    ablation: bool | None = SearchOptions.ablation,
    on_event: Events | None = None,
) -> SearchOutcome:
    """Write the profile of a study that workers filled, re-measuring its top candidates on this host.

    This host must be the study's hardware model. `out` may hold `{study}`; its `.log` sibling gets the workers'
    output.

    >>> export_profile("postgresql://tuner:secret@db.internal/autotune", "sd15-a100", "a100.yaml")  # doctest: +SKIP
    """
    emit = on_event or (lambda kind, data: None)
    study, spec, fingerprint = join(storage, study_name)
    complete, running = counts(study)
    if complete < spec.n_trials:
        emit("phase", {"message": f"the study has {complete} of its {spec.n_trials} trials ({running} running); "
                                  "exporting from those"})
    out, log_path = output_paths(out, study_name)
    return finish_study(study, spec, fingerprint, _worker_config(spec, log_path, study.study_name), storage, out,
                        top_k, rounds, emit, ablation=ablation_wanted(ablation))


def join(storage: str, study_name: str, seeded: bool = True) -> tuple[optuna.Study, StudySpec, Fingerprint]:
    """The study, what it records, and this machine's fingerprint, once checked against the study's hardware."""
    study = load(storage, study_name)
    spec = StudySpec.read(study)
    fingerprint = _probe_like(spec.hardware)
    check_machine(spec.hardware, fingerprint.hardware, study_name)
    if not spec.loadable:
        raise AutotuneError(f"study {study_name!r} tunes a Python function ({spec.model}); only the search that "
                            "started it can load it, so it takes no workers")
    study.sampler = make_sampler(spec.sampler, spec.seed if seeded else None)
    study.pruner = make_pruner(spec.pruner)
    return study, spec, fingerprint


def _worker_config(spec: StudySpec, log_path: str, study_name: str) -> WorkerConfig:
    return WorkerConfig(model=spec.model, device=spec.hardware.device, memory_budget_bytes=spec.memory_budget_bytes,
                        hub=HubOptions(**(spec.hub or {})),
                        log_path=log_path, compile_cache=str(compile_cache.study_folder(study_name)))


def _probe_like(machine: Hardware) -> Fingerprint:
    try:
        return probe(machine.device)
    except Exception as error:  # no CUDA here, for a study made on a GPU
        raise WrongHardware(f"this machine cannot probe {machine.device} ({first_line(error)}); the study measures "
                            f"{machine.describe()}") from None


# ---- workers on this host ----


def launch_workers(
    n: int, storage: str, study: optuna.Study, spec: StudySpec, log_path: str, emit: Events,
    timeout_s: float | None = None,
) -> None:
    """Run `n` `autotune worker` processes on this host until the study is done, reporting its progress.

    On CUDA each worker gets one visible GPU; on CPU the workers share the cores (and disturb each other's timings).
    The storage URL reaches them in the environment, never on a command line that `ps` shows.
    """
    gpus = _visible_gpus() if spec.hardware.device == "cuda" else []
    if spec.hardware.device == "cuda" and n > len(gpus):
        raise ValueError(f"{n} workers need {n} GPUs, one each; {len(gpus)} are visible")
    if not gpus:
        emit("phase", {"message": f"{n} CPU workers share this machine's {os.cpu_count()} cores: their timings "
                                  "disturb each other"})
    command = [sys.executable, "-m", "autotune.cli", "worker", "--study", study.study_name, "--log", log_path]
    if timeout_s is not None:
        command += ["--timeout", str(timeout_s)]
    emit("phase", {"message": f"starting {n} workers" + (f" on GPUs {', '.join(gpus[:n])}" if gpus else "")})
    env = {**os.environ, STORAGE_ENV: storage}
    output = open(log_path, "ab") if log_path != os.devnull else None
    try:
        procs = [
            subprocess.Popen(command, stdout=output or subprocess.DEVNULL, stderr=output,
                             env=env | ({"CUDA_VISIBLE_DEVICES": gpus[i]} if gpus else {}))
            for i in range(n)
        ]
        try:
            _follow(procs, study, spec, emit)
        except KeyboardInterrupt:
            _stop(procs)  # Ctrl-C reached them too: each queues its trial again and leaves
            raise SearchInterrupted() from None
    finally:
        if output is not None:
            output.close()
    failed = [f"worker {i + 1} exited with status {p.returncode}" for i, p in enumerate(procs) if p.returncode]
    if failed:
        where = f"; see {log_path}" if output is not None else ""
        if len(failed) == n:
            raise AutotuneError(f"every worker failed ({failed[0]}){where}")
        emit("phase", {"message": ", ".join(failed) + where})


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [device.strip() for device in visible.split(",") if device.strip()]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def _follow(procs: list[subprocess.Popen], study: optuna.Study, spec: StudySpec, emit: Events) -> None:
    started = time.monotonic()
    complete = optuna.trial.TrialState.COMPLETE
    seen = {trial.number for trial in study.get_trials(deepcopy=False, states=(complete,))}
    while True:
        running = [proc for proc in procs if proc.poll() is None]
        for trial in study.get_trials(deepcopy=False, states=(complete,)):
            if trial.number not in seen:
                seen.add(trial.number)
                emit("trial", trial_event(study, trial.number, spec.n_trials, started, spec.deadline))
        if not running:
            return
        try:
            running[0].wait(timeout=FOLLOW_S)
        except subprocess.TimeoutExpired:
            pass


def _stop(procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + STOP_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()  # its trial stops beating and is retried when the study resumes
            proc.wait()
