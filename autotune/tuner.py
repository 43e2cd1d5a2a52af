"""The search: an Optuna study over the knobs available here, trials run in workers, the winner re-measured.

Flow: probe -> space (knobs available on this hardware and pipeline, `space`) -> the study (`study`) -> ask, run in a
worker, record (`trials`; images/s, with peak memory <= budget as an Optuna constraint) -> re-measure the top
candidates and the default configuration interleaved (`outcome`, `remeasure`) -> Profile. Every trial is in the
study's storage, so a search that stops resumes with the same command, and workers on other hosts can share it
(`distributed`). This module knows nothing of how a knob is applied.
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from . import compile_cache, pipelines, protocol, quality
from .ablation import wanted as ablation_wanted
from .batching import doublings
from .exceptions import InvalidInput, TrialFailed, UnknownModel
from .files import check_writable
from .hardware import choose_gpu, probe
from .memory_facts import ModelFacts
from .memory_model import FACTS_ATTR
from .options import DEFAULT_REFERENCE_STEPS, OBJECTIVES, PRUNERS, SAMPLERS
from .outcome import SearchOutcome, finish_study, warn_if_busy
from .pipelines import HubOptions
from .profile import Profile
from .recommendation import free_cores, recommend_settings
from .scoring import scoring_for
from .space import build_space, calibrated_part, steps_range, validate_pinned, warm_start
from .storages import surface_storage_failures
from .study import (
    Events,
    StudySpec,
    default_storage,
    default_study_name,
    finished,
    open_study,
    optuna_warnings_only,
    output_paths,
)
from .time_split import time_split
from .trials import SearchInterrupted, run_trials
from .units import parse_size
from .worker import ModelSource, Worker, WorkerConfig
from .workload import Workload, check_call, check_controlled, check_sizes

__all__ = ["DEFAULT_PROMPTS", "SearchInterrupted", "SearchOutcome", "run_search", "search"]

# Four prompts that ask for different things (subject, medium, light, detail): a floor holds for the worst of them.
DEFAULT_PROMPTS = ["a photograph of an astronaut riding a horse", "a watercolor painting of a lighthouse at dusk",
                   "a close-up portrait of an old fisherman, studio lighting",
                   "an isometric illustration of a tiny city with many small windows"]


def search(
    model: ModelSource = "builtin:tiny-sd",
    *,
    budget: str | int | None = None,
    objective: str = "throughput",
    n_trials: int = 30,
    **options: Any,
) -> Profile:
    """Find the fastest configuration of `model` that fits `budget`, and return its profile.

    `model` is a hub id, a folder, `builtin:tiny-sd`, or a picklable function that builds the pipeline (it runs in
    the worker processes). Options are those of `run_search`.

    >>> profile = search("builtin:tiny-sd", budget="4GB", n_trials=20, out="tiny.yaml")  # doctest: +SKIP
    >>> pipe(prompt, **profile.call_kwargs())  # doctest: +SKIP
    """
    return run_search(model, budget=budget, objective=objective, n_trials=n_trials, **options).profile


@surface_storage_failures
@optuna_warnings_only()
def run_search(
    model: ModelSource = "builtin:tiny-sd",
    *,
    budget: str | int | None = None,
    objective: str = "throughput",
    n_trials: int = 30,
    timeout_s: float | None = None,
    height: int | None = None,
    width: int | None = None,
    sizes: list[tuple[int, int]] | None = None,
    steps: int | None = None,
    prompts: list[str] | None = None,
    negative_prompt: str | None = None,
    guidance_scale: float | None = None,
    call: dict[str, Any] | None = None,
    seed: int = 0,
    sampler: str = "tpe",
    pruner: str = "percentile",
    storage: str | None = None,
    study_name: str | None = None,
    out: str | Path | None = None,  # "{study}" in it becomes the study name; None writes no file
    previous: Profile | None = None,
    pinned: dict[str, Any] | None = None,
    warm_start_recipes: bool = True,
    device: str | None = None,
    revision: str | None = None,
    variant: str | None = None,
    local_files_only: bool = False,
    config: str | None = None,
    trial_timeout_s: float = 600.0,
    max_batch: int = 16,
    top_k: int = 3,
    rounds: int = 3,
    workers: int = 1,
    quality_floor: str | quality.FloorSpec | None = None,
    reference_steps: int = DEFAULT_REFERENCE_STEPS,
    ablation: bool | None = None,
    on_event: Events | None = None,
) -> SearchOutcome:
    """The engine behind `search` and `autotune search`; returns the profile with the baseline comparison.

    `workers` > 1 runs the trials in that many `autotune worker` processes on this host (one per visible GPU), which
    share the study with any worker started elsewhere; then the winner is re-measured here.

    With `quality_floor` (`ssim=0.9`, `psnr=30`, `ssim=-5%`) every trial is scored against a reference rendering
    and must meet the floor; scheduler, steps, precision and VAE tiling then join the search. `objective="pareto"`
    trades images/s, peak memory and quality, and returns a profile set with the picks fastest, balanced, smallest.

    A hub model loads at `revision` (branch, tag or commit) with the weights `variant` (`fp16`), from the hub's
    cache alone with `local_files_only` (or `HF_HUB_OFFLINE=1`); the profile records the commit it resolved to.
    A single-file checkpoint (`model.safetensors`) loads with diffusers' `from_single_file`, its pipeline described
    by `config` (a diffusers folder or hub id) or, without it, by the repository diffusers infers from its keys.
    `device` is `cpu`, `cuda` or `cuda:N` (the N-th visible GPU, chosen before CUDA starts).

    The workload is what the app will render: its size (`height`, `width`; or `sizes`, several (height, width) that
    one pipeline renders: each trial times every size, each at its own batch, and the objective weighs them alike,
    as their geometric mean), `prompts` (each timed call renders the next), `negative_prompt`,
    `guidance_scale` (None: the pipeline's own) and `call`, any other argument of the pipeline call
    (`{"num_frames": 33}`; text values such as `"256"` are typed from the call's signature). An argument the pipeline
    does not take is refused before any trial runs.

    At the end the chosen configuration is re-measured beside itself without each knob it changes, to say what each
    is worth (`ablation`; None: unless `AUTOTUNE_ABLATION=0`); the profile records it in `metrics.ablation`.
    """
    if objective not in OBJECTIVES:
        raise InvalidInput(f"objective {objective!r} is not supported; use one of {', '.join(OBJECTIVES)}")
    if sampler not in SAMPLERS:
        raise InvalidInput(f"sampler {sampler!r} is not supported; use one of {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise InvalidInput(f"pruner {pruner!r} is not supported; use one of {', '.join(PRUNERS)}")
    if n_trials < 1:
        raise InvalidInput("the number of trials must be at least 1")
    if reference_steps < 1:
        raise InvalidInput("the reference steps must be at least 1")
    if timeout_s is not None and timeout_s <= 0 or trial_timeout_s <= 0:
        raise InvalidInput("a time limit must be more than 0 seconds")
    if guidance_scale is not None and not guidance_scale >= 0:
        raise InvalidInput(f"the guidance scale must be 0 or more, got {guidance_scale:g}")
    if prompts is not None and (not prompts or not all(isinstance(p, str) and p.strip() for p in prompts)):
        raise InvalidInput("the prompts must be a non-empty list of non-blank texts")
    check_controlled(call or {})
    other_sizes: list[tuple[int, int]] = []
    if sizes is not None:
        several = quality_floor is None and objective != "pareto"
        height, width, other_sizes = check_sizes([(h, w) for h, w in sizes], height, width, several)
    if out is not None:  # before the model loads: a read-only folder found after the search loses the profile
        check_writable(str(out).replace("{study}", "study"))
    floor = quality.parse_floor(quality_floor) if isinstance(quality_floor, str) else quality_floor
    if workers > 1 and not isinstance(model, str):
        raise InvalidInput("several workers need a model they can load by name (hub id, folder or builtin:*), "
                           "not a Python function")
    emit = on_event or (lambda kind, data: None)
    started, started_at = time.monotonic(), datetime.now()
    if config is not None and not pipelines.is_single_file(model):
        raise InvalidInput(f"a config describes a single-file checkpoint (.safetensors, .ckpt); {model!r} is not "
                           "one")
    if pipelines.is_single_file(model):
        pipelines.check_single_file(model)
    hub = HubOptions(revision, variant, local_files_only, config)
    fingerprint = probe(choose_gpu(device) if device else None)
    hardware = fingerprint.hardware
    budget_bytes = parse_size(budget, hardware.memory_bytes) if budget is not None else hardware.memory_bytes
    model_id = model if isinstance(model, str) else f"{model.__module__}:{model.__qualname__}"
    pinned = validate_pinned(pinned or {})

    # Until the study's log is known, what the worker prints loading the model (the libraries' progress bars and
    # warnings) goes to a log of its own: a model that cannot load is then one line on the terminal.
    loading_log = Path(tempfile.gettempdir()) / f"autotune-{os.getpid()}-loading.log"
    worker = Worker(WorkerConfig(model=model, device=hardware.device, memory_budget_bytes=budget_bytes, hub=hub,
                                 log_path=str(loading_log)))
    try:
        emit("phase", {"message": f"loading {model_id} in a worker"})
        try:
            info = worker.request(protocol.Describe(), timeout_s=trial_timeout_s)
        except TrialFailed as failure:
            raise UnknownModel(f"cannot load {model_id}: {failure.reason} (the loading's output: {loading_log})"
                               ) from None
        workload = Workload(
            height=height or info.default_size, width=width or info.default_size, other_sizes=other_sizes,
            prompts=prompts or list(info.default_prompts) or DEFAULT_PROMPTS,
            seed=seed, guidance_scale=guidance_scale, negative_prompt=negative_prompt, output=info.output,
            call=check_workload_arguments(info, {**info.default_call, **(call or {})}, negative_prompt,
                                          guidance_scale),
        )
        quality.check_judgeable(floor, workload.prompts)
        steps = steps or info.default_steps
        scored = floor is not None or objective == "pareto"
        # Quality-changing knobs join when quality is measured: under a floor, or as a Pareto objective.
        space = build_space(info.domains, steps_range(steps, reference_steps) if scored else None,
                            batch_sizes=doublings(max_batch) if objective == "pareto" else None)
        space = {name: domain for name, domain in space.items() if name not in pinned}
        calibrated = calibrated_part(space, floor is not None)
        fixed = {**({} if "steps" in space else {"steps": steps}), **pinned}
        spec = StudySpec(
            model=model_id, loadable=isinstance(model, str), pipeline=info.pipeline, denoiser=info.denoiser,
            workload=workload.model_dump(mode="json"), objective=objective, fixed=fixed,
            hardware=hardware.model_dump(), space=space, memory_budget_bytes=budget_bytes, n_trials=n_trials,
            max_batch=max_batch, trial_timeout_s=trial_timeout_s, sampler=sampler, seed=seed,
            deadline=trials_deadline(started, timeout_s), steps=steps,
            quality_floor=str(floor) if floor else None, reference_steps=reference_steps if scored else None,
            pruner=pruner, hub=hub.given(),
            # The snapshot the worker loaded (from the hub's cache, once it has loaded it): what the profile records.
            commit=pipelines.resolved_commit(model, hub) if isinstance(model, str) else None,
            calibrated=calibrated or None,
        )
        name = study_name or default_study_name(model_id, fingerprint, workload, objective, floor, budget_bytes)
        out, log_path = output_paths(out, name)
        storage_url = storage or default_storage(out, name)
        emit("phase", {"message": f"worker output goes to {log_path}"})
        move_log(loading_log, log_path)
        worker.redirect_output(log_path, str(compile_cache.study_folder(name)))
        scoring = scoring_for(spec, worker, fingerprint, emit)
        study = open_study(name, storage_url, spec)
        if info.memory:  # for the memory model of every worker of the study, on any host
            study.set_user_attr(FACTS_ATTR, info.memory)
        load = warn_if_busy(emit)
        if not finished(study):
            recommended = recommend_settings(
                hardware, info.domains, ModelFacts.from_dict(info.memory) if info.memory else None, budget_bytes,
                workload.height, workload.width, guidance_scale, fixed=pinned,
                others_cpu_share=load) if warm_start_recipes else None
            # On a busy CPU every seed runs with the free cores' threads, as the recommendation does.
            free = free_cores(hardware.cpu_cores, load) if hardware.device == "cpu" else hardware.cpu_cores
            threads = {"cpu_threads": free} if free < hardware.cpu_cores else {}
            warm_start(study, space, hardware.device, previous, fixed, warm_start_recipes,
                       reference={"scheduler": "default", "steps": reference_steps} if scored else None,
                       defaults={"steps": steps, "batch_size": 1, **threads},
                       recommended=recommended.changed() if recommended else None)
        if workers > 1:
            from .distributed import launch_workers

            worker.close()  # the workers load their own
            launch_workers(workers, storage_url, study, spec, log_path, emit)
        else:
            run_trials(study, worker, spec, emit, scoring=scoring)
        worker_config = worker.config
    finally:
        worker.close()
    outcome = finish_study(study, spec, fingerprint, worker_config, storage_url, out, top_k, rounds, emit, scoring,
                           deadline=started + timeout_s - WRITE_RESERVE_S if timeout_s is not None else None,
                           others_cpu_share=load, ablation=ablation_wanted(ablation))
    outcome.time_split = time_split(study, started_at, time.monotonic() - started,
                                    [outcome.baseline, *outcome.candidates])
    return outcome


def move_log(source: Path, log_path: str) -> None:
    """Append what `source` holds to the study's log and remove it."""
    try:
        text = source.read_bytes()
        if log_path != os.devnull:
            with open(log_path, "ab") as log:
                log.write(text)
        source.unlink()
    except OSError:  # a log lost, never the search
        pass


# The share of the time limit kept for the end of a search: re-measuring the leaders beside the default, interleaved.
FINISH_SHARE = 0.25
# What the end keeps of its share for writing the profile and the study's last records.
WRITE_RESERVE_S = 5.0


def trials_deadline(started: float, timeout_s: float | None) -> float | None:
    """When the trials of a search started at `started` (`time.monotonic()`) must stop, in seconds since the epoch
    (the study records it for every worker): the time limit less the end's share."""
    if timeout_s is None:
        return None
    return time.time() + started + timeout_s * (1 - FINISH_SHARE) - time.monotonic()


def check_workload_arguments(info: protocol.Description, call: dict[str, Any], negative_prompt: str | None,
                             guidance_scale: float | None) -> dict[str, Any]:
    """The call arguments typed from the pipeline's signature; a negative prompt or guidance the pipeline does not
    take is refused like an unknown call argument, in one line naming it and the pipeline."""
    for flag, key, value in (("--negative-prompt", "negative_prompt", negative_prompt),
                             ("--guidance-scale", "guidance_scale", guidance_scale)):
        if value is not None and info.call_parameters and key not in info.call_parameters:
            raise InvalidInput(f"{flag}: {info.pipeline} takes no {key}")
    return check_call(call, info.call_parameters, info.pipeline)
