"""The search: an Optuna study over the knobs available here, trials run in workers, the winner re-measured.

Flow: probe -> space (knobs available on this hardware and pipeline) -> ask -> worker (apply, measure at growing
batch sizes) -> tell (images/s, with peak memory <= budget as an Optuna constraint) -> re-measure the top candidates
and the default configuration interleaved -> Profile. Every trial is in the study's storage, so a search that stops
resumes with the same command, and workers on other hosts can share it (`distributed`). This module knows nothing of
how a knob is applied.
"""

from __future__ import annotations

import math
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from pydantic import ValidationError

from . import __version__, knobs, quality
from .exceptions import AutotuneError, NothingFits, UnknownModel
from .hardware import Fingerprint, Hardware, probe
from .measure import Repeats, summarize
from .profile import (
    Goal,
    Metrics,
    ModelInfo,
    Profile,
    ProfileSet,
    Provenance,
    QualityFloor,
    Stat,
    Workload,
    now,
)
from .study import (
    GRACE_PERIOD_S,
    Events,
    StudySpec,
    check_machine,
    has_heartbeat,
    open_storage,
    redact,
    surplus,
    wait_for_slot,
)
from .units import format_size, parse_size
from .worker import ModelSource, TrialFailed, Worker, WorkerConfig

DEFAULT_PROMPTS = ["a photograph of an astronaut riding a horse", "a watercolor painting of a lighthouse at dusk"]
OBJECTIVES = ("throughput", "latency", "pareto")
SAMPLERS = ("tpe", "gp", "random")
# Search-time timing is a quick screen; the interleaved re-measurement at the end decides.
SCREEN_REPEATS = Repeats(warmup=1, min_runs=2, max_runs=5, max_seconds=5.0, target_cv=0.05)
# A configuration this many times slower than the best one at the same batch size is not tried at bigger batches.
PRUNE_RATIO = 2.0

optuna.logging.set_verbosity(optuna.logging.WARNING)


class SearchInterrupted(AutotuneError, KeyboardInterrupt):
    """Ctrl-C: the study is saved; the same command resumes it."""

    def __init__(self, message: str = "interrupted: the study is saved; run the same command to resume"):
        super().__init__(message)


@dataclass
class Candidate:
    """A configuration in the final interleaved re-measurement."""

    label: str
    settings: dict[str, Any]
    trial_peak_bytes: int = 0
    latency_s: list[float] = field(default_factory=list)
    peak_memory_bytes: int = 0
    warmup_s: float = 0.0
    failure: str | None = None
    quality: dict[str, float] = field(default_factory=dict)
    images: Any = None  # prompts x H x W x 3, rendered in the last round of the re-measurement
    trial: int | None = None  # the study's trial it came from (None for the default configuration)

    @property
    def batch_size(self) -> int:
        return int(self.settings.get("batch_size", 1))

    @property
    def images_per_s(self) -> Stat:
        return summarize([self.batch_size / seconds for seconds in self.latency_s])

    @property
    def latency(self) -> Stat:
        return summarize(self.latency_s)


@dataclass
class SearchOutcome:
    profile: Profile  # with --objective pareto, the `balanced` pick of `profile_set`
    baseline: Candidate
    best: Candidate
    candidates: list[Candidate]
    study_name: str
    storage: str
    trials: int
    profile_path: Path | None = None
    profile_set: ProfileSet | None = None
    reference: Any = None  # the reference rendering, when quality was measured
    images_path: Path | None = None
    storage_url: str | None = None  # unredacted, for reopening the study in this process; never written

    @property
    def speedup(self) -> float:
        base = self.baseline.images_per_s.median
        return self.best.images_per_s.median / base if base > 0 else math.inf


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


def run_search(
    model: ModelSource = "builtin:tiny-sd",
    *,
    budget: str | int | None = None,
    objective: str = "throughput",
    n_trials: int = 30,
    timeout_s: float | None = None,
    height: int | None = None,
    width: int | None = None,
    steps: int | None = None,
    prompts: list[str] | None = None,
    seed: int = 0,
    sampler: str = "tpe",
    storage: str | None = None,
    study_name: str | None = None,
    out: str | Path | None = None,  # "{study}" in it becomes the study name; None writes no file
    previous: Profile | None = None,
    pinned: dict[str, Any] | None = None,
    warm_start_recipes: bool = True,
    device: str | None = None,
    trial_timeout_s: float = 600.0,
    max_batch: int = 16,
    top_k: int = 3,
    rounds: int = 3,
    workers: int = 1,
    quality_floor: str | quality.FloorSpec | None = None,
    reference_steps: int = quality.DEFAULT_REFERENCE_STEPS,
    on_event: Events | None = None,
) -> SearchOutcome:
    """The engine behind `search` and `autotune search`; returns the profile with the baseline comparison.

    `workers` > 1 runs the trials in that many `autotune worker` processes on this host (one per visible GPU), which
    share the study with any worker started elsewhere; then the winner is re-measured here.

    With `quality_floor` (`ssim=0.9`, `psnr=30`, `ssim=-5%`) every trial is scored against a reference rendering
    and must meet the floor; scheduler, steps, precision and VAE tiling then join the search. `objective="pareto"`
    trades images/s, peak memory and quality, and returns a profile set with the picks fastest, balanced, smallest.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not supported; use one of {', '.join(OBJECTIVES)}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is not supported; use one of {', '.join(SAMPLERS)}")
    if n_trials < 1:
        raise ValueError("the number of trials must be at least 1")
    if reference_steps < 1:
        raise ValueError("the reference steps must be at least 1")
    floor = quality.parse_floor(quality_floor) if isinstance(quality_floor, str) else quality_floor
    if workers > 1 and not isinstance(model, str):
        raise ValueError("several workers need a model they can load by name (hub id, folder or builtin:*), "
                         "not a Python function")
    emit = on_event or (lambda kind, data: None)
    fingerprint = probe(device)
    hardware = fingerprint.hardware
    budget_bytes = parse_size(budget, hardware.memory_bytes) if budget is not None else hardware.memory_bytes
    model_id = model if isinstance(model, str) else f"{model.__module__}:{model.__qualname__}"
    pinned = validate_pinned(pinned or {})

    worker = Worker(WorkerConfig(model=model, device=hardware.device, memory_budget_bytes=budget_bytes))
    try:
        emit("phase", {"message": f"loading {model_id} in a worker"})
        try:
            info = worker.request({"kind": "describe"}, timeout_s=trial_timeout_s)
        except TrialFailed as failure:
            raise UnknownModel(f"cannot load {model_id}: {failure.reason}") from None
        workload = Workload(
            height=height or info["default_size"], width=width or info["default_size"],
            prompts=prompts or DEFAULT_PROMPTS, seed=seed,
        )
        steps = steps or info["default_steps"]
        scored = floor is not None or objective == "pareto"
        # Quality-changing knobs join when quality is measured: under a floor, or as a Pareto objective.
        space = build_space(info["available"], steps_range(steps, reference_steps) if scored else None,
                            batch_sizes=_doublings(max_batch) if objective == "pareto" else None)
        space = {name: values for name, values in space.items() if name not in pinned}
        spec = StudySpec(
            model=model_id, loadable=isinstance(model, str), pipeline=info["pipeline"], denoiser=info["denoiser"],
            workload=workload.model_dump(), objective=objective,
            fixed={**({} if "steps" in space else {"steps": steps}), **pinned},
            hardware=hardware.model_dump(), space=space, memory_budget_bytes=budget_bytes, n_trials=n_trials,
            max_batch=max_batch, trial_timeout_s=trial_timeout_s, sampler=sampler, seed=seed,
            deadline=time.time() + timeout_s if timeout_s is not None else None, steps=steps,
            quality_floor=str(floor) if floor else None, reference_steps=reference_steps if scored else None,
        )
        name = study_name or default_study_name(model_id, fingerprint, workload, objective, floor)
        out, log_path = output_paths(out, name)
        storage_url = storage or default_storage(out, name)
        emit("phase", {"message": f"worker output goes to {log_path}"})
        worker.redirect_output(log_path)
        scoring = scoring_for(spec, worker, fingerprint, emit)
        study = open_study(name, storage_url, spec)
        if not _finished(study):
            warm_start(study, space, hardware.device, previous, warm_start_recipes,
                       reference={"scheduler": "default", "steps": reference_steps} if scored else None,
                       defaults={"steps": steps, "batch_size": 1})
        _warn_if_busy(emit)
        if workers > 1:
            from .distributed import launch_workers

            worker.close()  # the workers load their own
            launch_workers(workers, storage_url, study, spec, log_path, emit)
        else:
            run_trials(study, worker, spec, emit, scoring=scoring)
        config = worker.config
    finally:
        worker.close()
    return finish_study(study, spec, fingerprint, config, storage_url, out, top_k, rounds, emit, scoring)


def finish_study(
    study: optuna.Study, spec: StudySpec, fingerprint: Fingerprint, config: WorkerConfig, storage_url: str,
    out: str | Path | None, top_k: int, rounds: int, emit: Events, scoring: Scoring | None = None,
) -> SearchOutcome:
    """Re-measure the study's top candidates (its Pareto front) and the default configuration here, interleaved;
    write the profile (or profile set)."""
    budget_bytes, objective = spec.memory_budget_bytes, spec.objective
    if scoring is None and spec.reference_steps:
        with Worker(config) as worker:
            scoring = scoring_for(spec, worker, fingerprint, emit)
    finished = [t for t in _finished(study) if _feasible(t)]
    if not finished:
        raise NothingFits(_nothing_fits_message(study, budget_bytes, scoring))
    if objective == "pareto":
        candidates = _pareto_candidates(study, limit=max(top_k, 8))
    else:
        candidates = _top_candidates(finished, top_k, objective)
    defaults = {k.name: k.default for k in knobs.in_order()}
    baseline = Candidate("default", {**defaults, "steps": spec.steps or spec.fixed.get("steps"), "batch_size": 1})
    emit("phase", {"message": f"re-measuring the top {len(candidates)} and the default configuration, interleaved"})
    _warn_if_busy(emit)
    workload = Workload(**spec.workload)
    remeasure([baseline, *candidates], config, workload, rounds, spec.trial_timeout_s, scoring=scoring)
    floor = scoring.floor_spec if scoring else None
    fitting = [c for c in candidates if c.failure is None and c.peak_memory_bytes <= budget_bytes
               and (scoring is None or scoring.meets(c.quality))]
    if not fitting:
        raise NothingFits(f"none of the top configurations fit {format_size(budget_bytes)}"
                          + (f" and meet {floor}" if floor else "") + " when re-measured")
    trials = len(_finished(study))

    def profile_of(candidate: Candidate) -> Profile:
        return Profile(
            hardware=fingerprint.hardware,
            software=fingerprint.software,
            model=ModelInfo(id=spec.model, pipeline=spec.pipeline, denoiser=spec.denoiser),
            workload=workload,
            goal=Goal(objective=objective, memory_budget_bytes=budget_bytes,
                      quality_floor=scoring.floor_record() if scoring and floor else None),
            settings=candidate.settings,
            metrics=Metrics(images_per_s=candidate.images_per_s, latency_s=candidate.latency,
                            peak_memory_bytes=max(1, candidate.peak_memory_bytes),
                            quality={k: round(v, 4) for k, v in candidate.quality.items()},
                            warmup_s=round(candidate.warmup_s, 3)),
            provenance=Provenance(sampler=type(study.sampler).__name__, seed=spec.seed, trials=trials,
                                  study=study.study_name, storage=redact(storage_url), created=now(),
                                  autotune=__version__, trial=candidate.trial),
        )

    profile_set = None
    if objective == "pareto":
        metric = scoring.metric if scoring else "ssim"
        front = pareto_front(fitting, metric)
        picks = choose_picks(front, metric)
        profile_set = ProfileSet(profiles=[profile_of(c) for c in front], picks=picks)
        best = front[picks["balanced"]]
    elif objective == "latency":
        best = min(fitting, key=lambda c: c.latency.median)
    else:
        best = max(fitting, key=lambda c: c.images_per_s.median)
    profile = profile_of(best)
    outcome = SearchOutcome(profile, baseline, best, candidates, study.study_name, redact(storage_url), trials,
                            profile_set=profile_set, reference=scoring.reference if scoring else None,
                            storage_url=storage_url)
    if out is not None:
        outcome.profile_path = (profile_set or profile).save(out)
        if scoring is not None:
            outcome.images_path = save_images(Path(out), scoring.reference, baseline, candidates)
    return outcome


def _warn_if_busy(emit: Events) -> None:
    # Another busy process on a small machine can slow a timed run many times over: say so, the numbers will show it.
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.75 * cores:
        emit("phase", {"message": f"warning: the machine is busy (load {load:.1f} on {cores} cores); "
                                  "timings will be noisy"})


# ---- the space ----


def searched_knobs(available: dict[str, list], with_quality: bool = False) -> list[knobs.Knob]:
    """Knobs that change only speed and memory, plus precision (behind the NaN/black-image check).

    Scheduler and VAE tiling change the image: they join only when a quality floor measures what they cost. Batch
    size is not a blind categorical: each trial finds its own best batch.
    """
    return [
        knob for knob in knobs.in_order()
        if not knob.call_time and (knob.exact or knob.name == "precision" or with_quality)
        and len(available.get(knob.name, [])) > 1
    ]


# A searched knob's values: a list (categorical), or {"low": a, "high": b} for an integer range (JSON, for the study).
Values = list | dict


def steps_range(workload_steps: int, reference_steps: int) -> dict[str, int]:
    """Step counts searched under a quality floor: from a tenth of the reference up to the reference itself."""
    return {"low": max(2, reference_steps // 10), "high": max(workload_steps, reference_steps)}


def _allows(values: Values, value: Any) -> bool:
    if isinstance(values, dict):
        return isinstance(value, int) and values["low"] <= value <= values["high"]
    return value in values


def build_space(available: dict[str, list], steps: dict[str, int] | None = None,
                batch_sizes: list[int] | None = None) -> dict[str, Values]:
    """Knob name -> the values to search (those available here); `steps` (a range) only with a quality floor.

    `batch_sizes` makes the batch a searched value (a Pareto search trades it for memory) instead of the largest
    batch that pays, found within each trial.
    """
    space: dict[str, Values] = {
        knob.name: list(available[knob.name]) for knob in searched_knobs(available, with_quality=steps is not None)
    }
    if steps is not None:
        space["steps"] = steps
    if batch_sizes:
        space["batch_size"] = list(batch_sizes)
    return space


def suggest(trial: optuna.trial.BaseTrial, space: dict[str, Values], fixed: dict[str, Any]) -> dict[str, Any]:
    """Define-by-run: an option (slice size, compile mode's options) is asked only when its parent activates it."""
    settings: dict[str, Any] = {knob.name: knob.default for knob in knobs.in_order()} | fixed
    for name, values in space.items():
        if not knobs.get(name).active(settings):
            continue
        if isinstance(values, dict):
            settings[name] = trial.suggest_int(name, values["low"], values["high"])
        else:
            settings[name] = trial.suggest_categorical(name, values)
    return settings


def validate_pinned(pinned: dict[str, Any]) -> dict[str, Any]:
    """Check pinned knob values against the profile schema; return them typed."""
    from .profile import Settings, describe_errors

    try:
        typed = Settings.model_validate(pinned)
    except ValidationError as error:
        raise AutotuneError(f"pinned settings: {describe_errors(error)}") from None
    return {name: getattr(typed, name) for name in pinned}


def documentation_recipes(device: str) -> dict[str, dict[str, Any]]:
    """The diffusers optimization guides' usual recipes, by name."""
    compile_mode = "max-autotune-no-cudagraphs" if device == "cuda" else "default"
    return {
        "as loaded": {},
        "fp16 + SDPA": {"precision": "fp16", "attention": "sdpa"},
        "fp16 + SDPA + channels-last + compile": {"precision": "fp16", "attention": "sdpa", "channels_last": True,
                                                  "compile": compile_mode},
        "fp16 + attention slicing": {"precision": "fp16", "attention": "sliced", "attention_slice_size": "auto"},
        "fp16 + model offload": {"precision": "fp16", "offload": "model"},
        "fp16 + sequential offload": {"precision": "fp16", "offload": "sequential"},
    }


def recipes(space: dict[str, Values], device: str, defaults: dict[str, Any] | None = None) -> list[dict]:
    """The documentation recipes as trial params, restricted to the knobs and values searched here."""
    restricted = (_restrict(recipe, space, defaults) for recipe in documentation_recipes(device).values())
    return [params for params in restricted if params is not None]


def _restrict(recipe: dict[str, Any], space: dict[str, Values],
              defaults: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The recipe as full trial params over `space`, or None when one of its values is not searched here.

    A knob the recipe leaves out takes its value from `defaults` (the workload's steps), else the knob's default.
    """
    params: dict[str, Any] = {}
    for name, values in space.items():
        knob = knobs.get(name)
        if not knob.active({**{k.name: k.default for k in knobs.in_order()}, **params}):
            continue
        value = recipe.get(name, (defaults or {}).get(name, knob.default))
        if not _allows(values, value):
            if name in recipe:
                return None
            value = values["low"] if isinstance(values, dict) else values[0]
        params[name] = value
    return params


def warm_start(study: optuna.Study, space: dict[str, Values], device: str, previous: Profile | None,
               with_recipes: bool = True, reference: dict[str, Any] | None = None,
               defaults: dict[str, Any] | None = None) -> None:
    """Enqueue the documentation recipes, the previous profile's settings, and under a quality floor the reference's
    own scheduler and steps (so the search always has a configuration that meets the floor)."""
    seeds = recipes(space, device, defaults) if with_recipes else []
    if reference is not None:
        restricted = _restrict({k: v for k, v in reference.items() if k in space}, space, defaults)
        if restricted is not None:
            seeds.insert(0, restricted)
    if previous is not None:
        restricted = _restrict({k: v for k, v in previous.settings_dict().items() if k in space}, space, defaults)
        if restricted is not None:
            seeds.insert(0, restricted)
    for params in seeds:
        study.enqueue_trial(params, skip_if_exists=True)


# ---- the study ----


def default_study_name(model_id: str, fingerprint: Fingerprint, workload: Workload, objective: str,
                       floor: quality.FloorSpec | None = None) -> str:
    hardware = fingerprint.hardware
    where = hardware.gpu if hardware.device == "cuda" else "cpu"
    text = f"{model_id}-{where}-{workload.height}x{workload.width}-{objective}"
    if floor is not None:
        text += f"-{floor.metric}{floor.value:g}{'pct' if floor.relative else ''}"
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text).strip("-").lower()


def output_paths(out: str | Path | None, study_name: str) -> tuple[str | None, str]:
    """The profile to write ("{study}" in it becomes the study's name) and its `.log` sibling for worker output."""
    if out is None:
        return None, os.devnull
    out = str(out).replace("{study}", study_name)
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
                                sampler=make_sampler(spec.sampler, spec.seed), directions=directions(spec.objective),
                                load_if_exists=True)
    if spec.objective == "pareto" and study.metric_names is None:
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what its plots label axes with
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["images/s", "peak memory (GiB)", (spec.quality_floor or "ssim").split("=")[0]])
    recorded = study.user_attrs
    for key in StudySpec.IDENTITY if recorded else ():
        if recorded.get(key) != getattr(spec, key):
            raise AutotuneError(f"study {name!r} in {redact(storage)} was made for another {key}; "
                                "give a new --study name or the same options as before")
    if "hardware" in recorded:
        check_machine(Hardware(**recorded["hardware"]), spec.machine, name)
    spec.record(study)
    if not has_heartbeat(study):
        _reclaim_interrupted(study)
    return study


def _reclaim_interrupted(study: optuna.Study) -> None:
    # Without a heartbeat (a journal file) nothing tells a dead worker's trial from a live one: a search that starts
    # takes every RUNNING trial for the remains of a killed search, fails it and queues it again.
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def _feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return all(value <= 0 for value in trial.constraints.values())


# ---- quality ----


@dataclass
class Scoring:
    """The reference a search scores trials against, and the floor they must meet (if any)."""

    path: Path
    reference: Any
    noise_floor: dict[str, float]
    metrics: tuple[str, ...]
    metric: str  # the one that is the floor (or, for a Pareto search without a floor, the quality objective)
    minimum: float | None
    floor_spec: quality.FloorSpec | None
    reference_steps: int

    def meets(self, scores: dict[str, float]) -> bool:
        return self.minimum is None or quality.meets(scores, self.metric, self.minimum)

    def violation(self, scores: dict[str, float] | None) -> float:
        """<= 0 when the floor is met; scaled so that PSNR in dB and SSIM in [0, 1] weigh alike for the sampler."""
        if self.minimum is None:
            return 0.0
        achieved = (scores or {}).get(self.metric, quality.worst_score(self.metric))
        return (self.minimum - achieved) / (10.0 if self.metric == "psnr" else 0.1)

    def floor_record(self) -> QualityFloor:
        spec = self.floor_spec
        return QualityFloor(metric=self.metric, min=round(float(self.minimum), 4), reference_steps=self.reference_steps,
                            relative_percent=spec.value if spec and spec.relative else None)


def prepare_reference(worker: Worker, model_id: str, workload: Workload, reference_steps: int,
                      fingerprint: Fingerprint, floor: quality.FloorSpec | None, timeout_s: float,
                      emit: Events) -> Scoring:
    """The reference rendering from the cache, or rendered now (once per model, workload and library versions)."""
    metrics = tuple(dict.fromkeys([*quality.DEFAULT_METRICS, *([floor.metric] if floor else [])]))
    key = quality.reference_key(model_id, workload.model_dump(), reference_steps, fingerprint.hardware.device,
                                fingerprint.software.model_dump())
    path = quality.reference_path(key)
    if path.exists():
        emit("phase", {"message": f"reference rendering from the cache: {path}"})
        images, noise_floor = quality.load_reference(path)
    else:
        emit("phase", {"message": f"rendering the reference ({reference_steps} steps, fp32, the pipeline's own "
                                  "scheduler)"})
        try:
            worker.request({"kind": "reference", "workload": workload.model_dump(), "steps": reference_steps,
                            "path": str(path), "metrics": list(metrics)}, timeout_s=timeout_s)
        except TrialFailed as failure:
            raise AutotuneError(f"cannot render the reference: {failure.reason}") from None
        images, noise_floor = quality.load_reference(path)
    if floor is not None and floor.metric not in noise_floor:
        raise AutotuneError(f"the cached reference {path} has no {floor.metric} noise floor; delete it to re-render")
    return Scoring(path=path, reference=images, noise_floor=noise_floor, metrics=metrics,
                   metric=floor.metric if floor else "ssim", minimum=floor.resolve(noise_floor) if floor else None,
                   floor_spec=floor, reference_steps=reference_steps)


def scoring_for(spec: StudySpec, worker: Worker, fingerprint: Fingerprint, emit: Events) -> Scoring | None:
    """The study's reference and floor on this host (each host renders or caches its own), or None without one."""
    if not spec.reference_steps:
        return None
    floor = quality.parse_floor(spec.quality_floor) if spec.quality_floor else None
    scoring = prepare_reference(worker, spec.model, Workload(**spec.workload), spec.reference_steps, fingerprint,
                                floor, spec.trial_timeout_s, emit)
    if floor is not None:
        emit("phase", {"message": f"quality floor {floor}: {floor.metric} >= {scoring.minimum:.4g}"})
    return scoring


# ---- running trials ----


def run_trials(study: optuna.Study, worker: Worker, spec: StudySpec, emit: Events,
               timeout_s: float | None = None, scoring: Scoring | None = None) -> None:
    """Run trials until the study has `spec.n_trials` complete ones, over all its workers, or a time limit passes.

    Each trial is one `study.optimize` step: Optuna beats the trial's heartbeat while it runs, and first fails the
    trials of dead workers so that its retry callback queues them again.
    """
    started = time.monotonic()
    limits = (spec.deadline, time.time() + timeout_s if timeout_s is not None else None)
    deadline = min((limit for limit in limits if limit is not None), default=None)
    workload = Workload(**spec.workload)
    if scoring is None and spec.reference_steps:
        scoring = scoring_for(spec, worker, probe(worker.config.device), emit)
    batch_search = "batch_size" in spec.space  # a Pareto search asks for the batch; otherwise a trial finds its own
    asked: list[optuna.Trial] = []

    def objective(trial: optuna.Trial) -> float | list[float]:
        asked[:] = [trial]
        if surplus(study, trial, spec.n_trials):
            raise optuna.TrialPruned("another worker took the study's last trial at the same moment")
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        settings = suggest(trial, spec.space, spec.fixed)
        if spec.objective == "latency":
            batch_sizes = [1]
        else:
            batch_sizes = [settings["batch_size"]] if batch_search else _doublings(spec.max_batch)
        task = {
            "kind": "trial", "settings": settings, "workload": workload.model_dump(), "batch_sizes": batch_sizes,
            "call_kwargs": knobs.call_kwargs({**settings, "batch_size": 1}),
            "memory_budget_bytes": spec.memory_budget_bytes, "repeats": SCREEN_REPEATS.__dict__,
            "best_images_per_s_at_batch": {} if batch_search else _best_at_each_batch(study),
            "prune_ratio": PRUNE_RATIO,
        }
        if scoring is not None:
            task |= {"reference_path": str(scoring.path), "metrics": list(scoring.metrics)}
        try:
            answer = worker.request(task, timeout_s=spec.trial_timeout_s)
        except TrialFailed as failure:
            return _record_failure(trial, spec.objective, failure.kind, failure.reason, scoring)
        except KeyboardInterrupt:
            worker.kill()
            raise
        value = _record_result(trial, spec.objective, answer, spec.memory_budget_bytes, scoring)
        if answer.get("recycle") or not _reversible(answer["settings"]):
            worker.kill()
        return value

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            emit("trial", _trial_event(study, trial.number, spec.n_trials, started, deadline))

    while wait_for_slot(study, spec.n_trials, deadline, emit):
        try:
            study.optimize(objective, n_trials=1, callbacks=[report])
        except KeyboardInterrupt:
            if asked:  # Optuna failed it; queued again, it runs first when the study resumes
                study.enqueue_trial(asked[0].params, skip_if_exists=False)
            raise SearchInterrupted() from None
        except optuna.exceptions.UpdateFinishedTrialError:
            emit("phase", {"message": f"trial {asked[0].number} was taken for dead (no heartbeat for "
                                      f"{GRACE_PERIOD_S} s) and queued again; its result here is dropped"})


def _doublings(max_batch: int) -> list[int]:
    sizes, size = [], 1
    while size <= max_batch:
        sizes.append(size)
        size *= 2
    return sizes


def _reversible(settings: dict[str, Any]) -> bool:
    return all(knob.reversible or settings.get(knob.name, knob.default) == knob.default for knob in knobs.in_order())


def _best_at_each_batch(study: optuna.Study) -> dict[int, float]:
    best: dict[int, float] = {}
    for trial in _finished(study):
        if not _feasible(trial):
            continue
        for measured in trial.user_attrs.get("batches", []):
            if measured.get("images_per_s"):
                batch, rate = measured["batch_size"], measured["images_per_s"]["median"]
                best[batch] = max(best.get(batch, 0.0), rate)
    return best


def _record_result(trial: optuna.Trial, objective: str, answer: dict, budget_bytes: int,
                   scoring: Scoring | None = None) -> float | list[float]:
    batches = [b for b in answer["batches"] if "oom" not in b]
    if not batches:  # out of memory at the only batch size asked for
        return _record_failure(trial, objective, "oom", answer["batches"][0]["oom"], scoring)
    problem = next((b["image_problem"] for b in batches if b.get("image_problem")), None)
    fitting = [b for b in batches if b["peak_memory_bytes"] <= budget_bytes and not b.get("image_problem")]
    key = (lambda b: -b["seconds_per_image"]) if objective == "latency" else (lambda b: b["images_per_s"]["median"])
    chosen = max(fitting, key=key) if fitting else min(batches, key=lambda b: b["peak_memory_bytes"])
    trial.set_user_attr("batch_size", chosen["batch_size"])
    trial.set_user_attr("images_per_s", chosen["images_per_s"]["median"])
    trial.set_user_attr("seconds_per_image", chosen["seconds_per_image"])
    trial.set_user_attr("peak_memory_bytes", chosen["peak_memory_bytes"])
    trial.set_user_attr("warmup_s", round(chosen["warmup_s"], 3))
    trial.set_user_attr("settings", answer["settings"])
    trial.set_user_attr("batches", [{k: b.get(k) for k in ("batch_size", "images_per_s", "peak_memory_bytes",
                                                           "oom", "image_problem")} for b in answer["batches"]])
    if problem:
        trial.set_user_attr("failure", "image")
        trial.set_user_attr("reason", problem)
    scores = answer.get("quality")
    if scoring is not None:
        trial.set_user_attr("quality", scores or {})
        if scores and not scoring.meets(scores) and not problem:
            trial.set_user_attr("failure", "quality")
            trial.set_user_attr("reason", f"{scoring.metric} {scores[scoring.metric]:.4g} < {scoring.minimum:.4g}")
    # Constraints are <= 0 when met; in GiB, so the sampler sees sizes it can compare.
    trial.set_constraint("memory", (chosen["peak_memory_bytes"] - budget_bytes) / 2**30)
    trial.set_constraint("image", 1.0 if problem and not fitting else 0.0)
    trial.set_constraint("failure", 0.0)
    if scoring is not None:
        trial.set_constraint("quality", scoring.violation(scores) if scores else 1.0)
    if not fitting:
        return _worst(objective)
    if objective == "pareto":
        return [chosen["images_per_s"]["median"], chosen["peak_memory_bytes"] / 2**30,
                (scores or {}).get(scoring.metric if scoring else "ssim", quality.worst_score("ssim"))]
    return _value(objective, chosen)


def _record_failure(trial: optuna.Trial, objective: str, kind: str, reason: str,
                    scoring: Scoring | None = None) -> float | list[float]:
    # A failure is data: a COMPLETE trial that violates a constraint teaches the sampler; a FAILED one would not.
    trial.set_user_attr("failure", kind)
    trial.set_user_attr("reason", reason)
    trial.set_constraint("memory", 1.0 if kind == "oom" else 0.0)
    trial.set_constraint("image", 0.0)
    trial.set_constraint("failure", 1.0)
    if scoring is not None:
        trial.set_constraint("quality", 0.0)
    return _worst(objective)


def _value(objective: str, batch: dict) -> float:
    return batch["seconds_per_image"] if objective == "latency" else batch["images_per_s"]["median"]


def _worst(objective: str) -> float | list[float]:
    if objective == "pareto":
        return [0.0, 1e3, -1.0]  # no images/s, a terabyte, no likeness: dominated by anything that ran
    return 1e9 if objective == "latency" else 0.0


def _trial_event(study, number: int, n_trials: int, started: float, deadline: float | None) -> dict[str, Any]:
    trial = study.trials[number]
    done = len(_finished(study))
    feasible = [t for t in _finished(study) if _feasible(t)]
    best = max((t.user_attrs.get("images_per_s", 0.0) for t in feasible), default=None)
    elapsed = time.monotonic() - started
    left = elapsed / max(1, done) * max(0, n_trials - done)
    if deadline is not None:
        left = min(left, max(0.0, deadline - time.time()))
    return {"number": number, "done": done, "total": n_trials, "best_images_per_s": best,
            "images_per_s": trial.user_attrs.get("images_per_s"), "failure": trial.user_attrs.get("failure"),
            "reason": trial.user_attrs.get("reason"), "feasible": _feasible(trial), "seconds_left": left}


def _nothing_fits_message(study: optuna.Study, budget_bytes: int, scoring: Scoring | None = None) -> str:
    if scoring is not None and scoring.minimum is not None:
        scored = [t.user_attrs["quality"][scoring.metric] for t in _finished(study)
                  if t.user_attrs.get("quality") and t.constraints.get("memory", 1) <= 0]
        if scored:
            return (f"nothing meets the quality floor {scoring.metric} >= {scoring.minimum:.4g} within "
                    f"{format_size(budget_bytes)}: the best {scoring.metric} measured was {max(scored):.4g}; "
                    "lower --quality-floor (no profile written)")
    peaks = [t.user_attrs["peak_memory_bytes"] for t in _finished(study) if "peak_memory_bytes" in t.user_attrs]
    if peaks:
        return (f"nothing fits in {format_size(budget_bytes)}: the smallest configuration measured needed "
                f"{format_size(min(peaks))}; raise --budget (no profile written)")
    return f"nothing fits in {format_size(budget_bytes)}: every trial failed (no profile written)"


def _distinct_candidates(trials: list[optuna.trial.FrozenTrial]) -> list[Candidate]:
    """The trials as candidates, in order, each configuration (settings and batch) once."""
    chosen: dict[str, Candidate] = {}
    for trial in trials:
        settings = {**trial.user_attrs["settings"], "batch_size": trial.user_attrs["batch_size"]}
        key = repr(sorted(settings.items(), key=lambda item: item[0]))
        chosen.setdefault(key, Candidate(f"trial {trial.number}", settings, trial.user_attrs["peak_memory_bytes"],
                                         trial=trial.number))
    return list(chosen.values())


def _top_candidates(trials: list, top_k: int, objective: str) -> list[Candidate]:
    ranked = sorted(trials, key=lambda t: t.value, reverse=objective != "latency")
    return _distinct_candidates(ranked)[:top_k]


def _pareto_candidates(study: optuna.Study, limit: int) -> list[Candidate]:
    """The feasible Pareto-optimal trials (Optuna's `best_trials` honour the constraints), fastest first."""
    front = sorted((t for t in study.best_trials if _feasible(t)), key=lambda t: -t.values[0])
    chosen = _distinct_candidates(front)
    if len(chosen) > limit:  # keep the extremes and an even spread between them
        step = (len(chosen) - 1) / (limit - 1)
        chosen = [chosen[round(index * step)] for index in range(limit)]
    return chosen


def _objectives(candidate: Candidate, metric: str) -> tuple[float, float, float]:
    """Images/s, peak memory and quality, each turned so that bigger is better."""
    return (candidate.images_per_s.median, -float(candidate.peak_memory_bytes),
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


# ---- the final, interleaved re-measurement ----


def remeasure(candidates: list[Candidate], config: WorkerConfig, workload: Workload, rounds: int,
              timeout_s: float, runs_per_round: int = 2, scoring: Scoring | None = None) -> None:
    """Time every candidate in its own warmed-up worker, round-robin, so slow drifts of the machine hit all alike."""
    workers = {id(c): Worker(config) for c in candidates}
    try:
        for worker in workers.values():
            worker.start()  # all at once: their imports and model loads overlap
        for candidate in candidates:
            _ask(candidate, workers[id(candidate)], {
                "kind": "prepare", "settings": candidate.settings, "workload": workload.model_dump(),
                "call_kwargs": knobs.call_kwargs(candidate.settings)}, timeout_s)
        for round_number in range(rounds):
            order = candidates[round_number % len(candidates):] + candidates[:round_number % len(candidates)]
            last = round_number == rounds - 1
            for candidate in order:
                _ask(candidate, workers[id(candidate)], {
                    "kind": "time", "runs": runs_per_round, "workload": workload.model_dump(),
                    "render": scoring is not None and last}, timeout_s)
    finally:
        for worker in workers.values():
            worker.close()
    if scoring is not None:
        for candidate in candidates:
            if candidate.images is not None:
                candidate.quality = quality.score(candidate.images, scoring.reference, scoring.metrics,
                                                  workload.prompts)


def _ask(candidate: Candidate, worker: Worker, task: dict, timeout_s: float) -> None:
    if candidate.failure is not None:
        return
    try:
        answer = worker.request(task, timeout_s=timeout_s)
    except TrialFailed as failure:
        candidate.failure = f"{failure.kind}: {failure.reason}"
        return
    if task["kind"] == "prepare":
        candidate.warmup_s = answer["warmup_s"]
    else:
        candidate.latency_s.extend(answer["latency_s"])
        if answer.get("rendered") is not None:
            candidate.images = answer["rendered"]
        if answer.get("image_problem"):
            candidate.failure = f"image: {answer['image_problem']}"
    candidate.peak_memory_bytes = max(candidate.peak_memory_bytes, candidate.trial_peak_bytes,
                                      answer["peak_memory_bytes"])

