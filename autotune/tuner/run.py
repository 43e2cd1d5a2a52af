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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna

from autotune import options, pipelines
from autotune.compare.ablation import wanted as ablation_wanted
from autotune.compare.scoring import Scoring
from autotune.exceptions import InvalidInput, TrialFailed, UnknownModel
from autotune.files import check_writable
from autotune.hardware import Fingerprint, choose_gpu, probe
from autotune.measure import quality
from autotune.measure.memory_facts import ModelFacts
from autotune.options import DEFAULT_MODEL, DEFAULT_REFERENCE_STEPS, SearchOptions
from autotune.pipelines import HubOptions
from autotune.profile import Profile
from autotune.recommendation import free_cores, recommend_settings
from autotune.units import parse_size
from autotune.worker import compile_cache, protocol
from autotune.worker.batching import doublings
from autotune.worker.process import ModelSource, Worker, WorkerConfig
from autotune.workload import Workload, check_call, check_sizes

from .outcome import SearchOutcome, finish_study, warn_if_busy
from .space import build_space, calibrated_part, narrow, steps_range, validate_pinned, warm_start
from .spec import Events, StudySpec, scoring_for
from .storages import surface_storage_failures
from .study import (
    default_storage,
    default_study_name,
    finished,
    open_study,
    optuna_warnings_only,
    output_paths,
)
from .time_split import time_split
from .trials import SearchInterrupted, run_trials

__all__ = ["DEFAULT_PROMPTS", "SearchInterrupted", "SearchOutcome", "run_search", "search"]

# Four prompts that ask for different things (subject, medium, light, detail): a floor holds for the worst of them.
DEFAULT_PROMPTS = ["a photograph of an astronaut riding a horse", "a watercolor painting of a lighthouse at dusk",
                   "a close-up portrait of an old fisherman, studio lighting",
                   "an isometric illustration of a tiny city with many small windows"]


def search(
    model: ModelSource = DEFAULT_MODEL,
    *,
    budget: str | int | None = None,
    objective: str = "throughput",
    n_trials: int = 30,
    timeout_s: float | None = None,
    height: int | None = None,
    width: int | None = None,
    sizes: Sequence[tuple[int, int]] | None = None,
    steps: int | None = None,
    prompts: Sequence[str] | None = None,
    negative_prompt: str | None = None,
    guidance_scale: float | None = None,
    call: Mapping[str, Any] | None = None,
    seed: int = 0,
    image_seed: int | None = None,
    sampler: str = "tpe",
    pruner: str = "percentile",
    storage: str | None = None,
    study_name: str | None = None,
    out: str | Path | None = None,
    previous: Profile | None = None,
    pinned: Mapping[str, Any] | None = None,
    only: Mapping[str, Sequence[Any]] | None = None,
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
    quality_floor: str | options.FloorSpec | None = None,
    reference_steps: int = DEFAULT_REFERENCE_STEPS,
    ablation: bool | None = None,
) -> Profile:
    """Find the fastest configuration of `model` that fits `budget`, and return its profile.

    `model` is a hub id, a folder, `builtin:tiny-sd`, or a picklable function that builds the pipeline (it runs in
    the worker processes). The options are `SearchOptions`' fields (`run_search` says what they do); for the study,
    the comparison with the default and the ablation too, use `run_search`.

    >>> profile = search("builtin:tiny-sd", budget="4GB", n_trials=20, out="tiny.yaml")  # doctest: +SKIP
    >>> pipe(prompt, **profile.call_kwargs())  # doctest: +SKIP
    """
    given = {name: value for name, value in locals().items() if name != "model"}
    options = SearchOptions(**{**given, "call": call or {}, "pinned": pinned or {}, "only": only or {}})
    return run_search(model, options).profile


@surface_storage_failures
@optuna_warnings_only()
def run_search(model: ModelSource = DEFAULT_MODEL, options: SearchOptions | None = None,
               on_event: Events | None = None, **fields: Any) -> SearchOutcome:
    """The engine behind `search` and `autotune search`: the profile with its comparison to the default
    configuration, the study and the ablation (`SearchOutcome`). `options` (or, instead, its fields as keywords:
    `run_search(model, budget="6GB", n_trials=20)`) says what to search; `on_event(kind, data)` hears each phase and
    trial.

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
    if options is not None and fields:
        raise TypeError("run_search takes the options or their fields as keywords, not both")
    options = options if options is not None else SearchOptions(**fields)
    options.check_model(model)
    if options.out is not None:  # before the model loads: a read-only folder found after the search loses the profile
        check_writable(str(options.out).replace("{study}", "study"))
    if pipelines.is_single_file(model):
        pipelines.check_single_file(model)
    emit = on_event or (lambda kind, data: None)
    started, started_at = time.monotonic(), datetime.now()
    fingerprint = probe(choose_gpu(options.device) if options.device else None)
    budget_bytes = (parse_size(options.budget, fingerprint.hardware.memory_bytes) if options.budget is not None
                    else fingerprint.hardware.memory_bytes)
    hub = HubOptions(options.revision, options.variant, options.local_files_only, options.config)
    # Until the study's log is known, what the worker prints loading the model (the libraries' progress bars and
    # warnings) goes to a log of its own: a model that cannot load is then one line on the terminal.
    loading_log = Path(tempfile.gettempdir()) / f"autotune-{os.getpid()}-loading.log"
    worker = Worker(WorkerConfig(model=model, device=fingerprint.hardware.device, memory_budget_bytes=budget_bytes,
                                 hub=hub, log_path=str(loading_log)))
    try:
        info = describe_model(worker, model, options, loading_log, emit)
        spec = make_spec(model, options, info, fingerprint, budget_bytes, hub, started)
        opened = open_study_for(spec, options, info, fingerprint, worker, loading_log, emit)
        if not finished(opened.study):
            seed_study(opened.study, spec, options, info, fingerprint, opened.others_cpu_share)
        if options.workers > 1:
            from .distributed import launch_workers

            worker.close()  # the workers load their own
            launch_workers(options.workers, opened.storage_url, opened.study, spec, opened.log_path, emit)
        else:
            run_trials(opened.study, worker, spec, emit, scoring=opened.scoring,
                       fewer_steps_first=options.warm_start_recipes)
        worker_config = worker.config
    finally:
        worker.close()
    outcome = finish_study(opened.study, spec, fingerprint, worker_config, opened.storage_url, opened.out,
                           options.top_k, options.rounds, emit, opened.scoring,
                           deadline=started + options.timeout_s - WRITE_RESERVE_S if options.timeout_s else None,
                           others_cpu_share=opened.others_cpu_share, ablation=ablation_wanted(options.ablation))
    outcome.time_split = time_split(opened.study, started_at, time.monotonic() - started,
                                    [outcome.baseline, *outcome.candidates])
    return outcome


def describe_model(worker: Worker, model: ModelSource, options: SearchOptions, loading_log: Path,
                   emit: Events) -> protocol.Description:
    """What the worker finds loading the model: its classes, knob domains, defaults and memory facts."""
    model_id = model_name(model)
    emit("phase", {"message": f"loading {model_id} in a worker"})
    try:
        described: protocol.Description = worker.request(protocol.Describe(), timeout_s=options.trial_timeout_s)
        return described
    except TrialFailed as failure:
        raise UnknownModel(f"cannot load {model_id}: {failure.reason} (the loading's output: {loading_log})"
                           ) from None


def make_workload(options: SearchOptions, info: protocol.Description) -> Workload:
    """What the app will render: the options' size, prompts, guidance and call; where they give none, a built-in's
    own default workload's, else the pipeline's."""
    height, width, other_sizes = options.height, options.width, list[tuple[int, int]]()
    if options.sizes is not None:
        height, width, other_sizes = check_sizes([(h, w) for h, w in options.sizes], options.height, options.width,
                                                 options.several_sizes_allowed)
    guidance = options.guidance_scale if options.guidance_scale is not None else info.default_guidance_scale
    negative = options.negative_prompt if options.negative_prompt is not None else info.default_negative_prompt
    workload = Workload(
        height=height or info.default_size, width=width or info.default_size, other_sizes=other_sizes,
        prompts=list(options.prompts or info.default_prompts or DEFAULT_PROMPTS),
        seed=options.seed if options.image_seed is None else options.image_seed,
        guidance_scale=guidance, negative_prompt=negative, output=info.output,
        call=check_workload_arguments(info, {**info.default_call, **(options.call or {})}, options.negative_prompt,
                                      options.guidance_scale),
    )
    quality.check_judgeable(options.floor, workload.prompts)
    return workload


def make_spec(model: ModelSource, options: SearchOptions, info: protocol.Description, fingerprint: Fingerprint,
              budget_bytes: int, hub: HubOptions, started: float) -> StudySpec:
    """The study's specification: the workload, the space of knobs available here, what is fixed, the goal."""
    workload = make_workload(options, info)
    floor = options.floor
    steps = options.steps or info.default_steps
    scored = floor is not None or options.objective == "pareto"
    pinned = validate_pinned(dict(options.pinned or {}))
    # Quality-changing knobs join when quality is measured: under a floor, or as a Pareto objective.
    space = build_space(info.domains, steps_range(steps, options.reference_steps) if scored else None,
                        batch_sizes=doublings(options.max_batch) if options.objective == "pareto" else None)
    space = narrow({name: domain for name, domain in space.items() if name not in pinned}, options.only or {})
    return StudySpec(
        model=model_name(model), loadable=isinstance(model, str), pipeline=info.pipeline, denoiser=info.denoiser,
        workload=workload, objective=options.objective,
        fixed={**({} if "steps" in space else {"steps": steps}), **pinned},
        hardware=fingerprint.hardware, space=space, memory_budget_bytes=budget_bytes,
        n_trials=options.n_trials, max_batch=options.max_batch, trial_timeout_s=options.trial_timeout_s,
        sampler=options.sampler, seed=options.seed, deadline=trials_deadline(started, options.timeout_s),
        steps=steps, quality_floor=floor,
        reference_steps=options.reference_steps if scored else None, pruner=options.pruner, hub=hub.given(),
        # The snapshot the worker loaded (from the hub's cache, once it has loaded it): what the profile records.
        commit=pipelines.resolved_commit(model, hub) if isinstance(model, str) else None,
        calibrated=calibrated_part(space, floor is not None) or None,
        # For the memory model of every worker of the study, on any host.
        memory_facts=ModelFacts.from_dict(info.memory) if info.memory else None,
    )


@dataclass
class OpenedStudy:
    """A search's study, new or resumed, and what goes with it."""

    study: optuna.Study
    storage_url: str
    out: str | None  # the profile's path, "{study}" filled in
    log_path: str  # where the workers' output goes
    scoring: Scoring | None  # the reference the trials are scored against, under a floor or a Pareto objective
    others_cpu_share: float  # of the CPU, used by other processes as the study opened


def open_study_for(spec: StudySpec, options: SearchOptions, info: protocol.Description, fingerprint: Fingerprint,
                   worker: Worker, loading_log: Path, emit: Events) -> OpenedStudy:
    """Open (or resume) the study, render its reference when quality is scored, and move the worker's output to the
    study's log."""
    name = options.study_name or default_study_name(spec.model, fingerprint, spec.workload, spec.objective,
                                                    spec.quality_floor, spec.memory_budget_bytes)
    out, log_path = output_paths(options.out, name)
    storage_url = options.storage or default_storage(out, name)
    emit("phase", {"message": f"worker output goes to {log_path}"})
    move_log(loading_log, log_path)
    worker.redirect_output(log_path, str(compile_cache.study_folder(name)))
    scoring = scoring_for(spec, worker, fingerprint, emit)
    study = open_study(name, storage_url, spec)
    return OpenedStudy(study, storage_url, out, log_path, scoring, warn_if_busy(emit))


def seed_study(study: optuna.Study, spec: StudySpec, options: SearchOptions, info: protocol.Description,
               fingerprint: Fingerprint, load: float) -> None:
    """A new study's first trials: the default configuration, the recommendation, the guides' recipes, a previous
    profile's settings, the reference (under a floor)."""
    hardware, workload = fingerprint.hardware, spec.workload
    pinned = {name: spec.fixed[name] for name in options.pinned or {}}  # typed, as the spec holds them
    recommended = recommend_settings(
        hardware, info.domains, spec.memory_facts, spec.memory_budget_bytes, workload.height, workload.width,
        options.guidance_scale, fixed=pinned, others_cpu_share=load) if options.warm_start_recipes else None
    # On a busy CPU every seed runs with the free cores' threads, as the recommendation does.
    free = free_cores(hardware.cpu_cores, load) if hardware.device == "cpu" else hardware.cpu_cores
    threads = {"cpu_threads": free} if free < hardware.cpu_cores else {}
    warm_start(study, spec.space, hardware.device, options.previous, spec.fixed, options.warm_start_recipes,
               reference={"scheduler": "default", "steps": spec.reference_steps} if spec.reference_steps else None,
               defaults={"steps": spec.steps, "batch_size": 1, **threads},
               recommended=recommended.changed() if recommended else None)


def model_name(model: ModelSource) -> str:
    """A model as the study and the profile name it: its id, or a builder function's module:name."""
    return model if isinstance(model, str) else f"{model.__module__}:{model.__qualname__}"


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
