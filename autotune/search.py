"""The search: an Optuna study over the knobs available here, trials run in workers, the winner re-measured.

Flow: probe -> space (knobs available on this hardware and pipeline) -> ask -> worker (apply, measure at growing
batch sizes) -> tell (images/s, with peak memory <= budget as an Optuna constraint) -> re-measure the top candidates
and the default configuration interleaved -> Profile. Every trial is in the study's storage, so a search that stops
resumes with the same command. This module knows nothing of how a knob is applied.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from . import __version__, knobs, quality
from .exceptions import AutotuneError, NothingFits, UnknownModel
from .hardware import Fingerprint, probe
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


Events = Callable[[str, dict[str, Any]], None]


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
    quality_floor: str | quality.FloorSpec | None = None,
    reference_steps: int = quality.DEFAULT_REFERENCE_STEPS,
    on_event: Events | None = None,
) -> SearchOutcome:
    """The engine behind `search` and `autotune search`; returns the profile with the baseline comparison.

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
        fixed = {**({} if "steps" in space else {"steps": steps}), **pinned}
        name = study_name or default_study_name(model_id, fingerprint, workload, objective, floor)
        out = str(out).replace("{study}", name) if out is not None else None
        storage_url = storage or default_storage(out, name)
        log_path = str(Path(out).with_suffix(".log")) if out is not None else os.devnull
        emit("phase", {"message": f"worker output goes to {log_path}"})
        worker.redirect_output(log_path)
        scoring = None
        if scored:
            scoring = prepare_reference(worker, model_id, workload, reference_steps, fingerprint, floor,
                                        trial_timeout_s, emit)
            if floor is not None:
                emit("phase", {"message": f"quality floor {floor}: {floor.metric} >= {scoring.minimum:.4g}"})
        study = open_study(name, storage_url, sampler, seed, objective, fingerprint, workload, model_id, fixed,
                           floor=str(floor) if floor else None, reference_steps=reference_steps if scored else None)
        if not _finished(study):
            warm_start(study, space, hardware.device, previous, warm_start_recipes,
                       reference={"scheduler": "default", "steps": reference_steps} if scored else None,
                       defaults={"steps": steps, "batch_size": 1})
        _warn_if_busy(emit)
        run_trials(study, worker, space, fixed, workload, budget_bytes, objective, n_trials, timeout_s,
                   trial_timeout_s, max_batch, emit, scoring)
    finally:
        worker.close()

    finished = [t for t in _finished(study) if _feasible(t)]
    if not finished:
        raise NothingFits(_nothing_fits_message(study, budget_bytes, scoring))
    if objective == "pareto":
        candidates = _pareto_candidates(study, limit=max(top_k, 8))
    else:
        candidates = _top_candidates(finished, top_k, objective)
    baseline = Candidate("default", {**{k.name: k.default for k in knobs.in_order()}, "steps": steps, "batch_size": 1})
    emit("phase", {"message": f"re-measuring the top {len(candidates)} and the default configuration, interleaved"})
    _warn_if_busy(emit)
    remeasure([baseline, *candidates], worker.config, workload, rounds, trial_timeout_s, scoring=scoring)
    fitting = [c for c in candidates if c.failure is None and c.peak_memory_bytes <= budget_bytes
               and (scoring is None or scoring.meets(c.quality))]
    if not fitting:
        raise NothingFits(f"none of the top configurations fit {format_size(budget_bytes)}"
                          + (f" and meet {floor}" if floor else "") + " when re-measured")

    def profile_of(candidate: Candidate) -> Profile:
        return Profile(
            hardware=hardware,
            software=fingerprint.software,
            model=ModelInfo(id=model_id, pipeline=info["pipeline"], denoiser=info["denoiser"]),
            workload=workload,
            goal=Goal(objective=objective, memory_budget_bytes=budget_bytes,
                      quality_floor=scoring.floor_record() if scoring and floor else None),
            settings=candidate.settings,
            metrics=Metrics(images_per_s=candidate.images_per_s, latency_s=candidate.latency,
                            peak_memory_bytes=max(1, candidate.peak_memory_bytes),
                            quality={k: round(v, 4) for k, v in candidate.quality.items()},
                            warmup_s=round(candidate.warmup_s, 3)),
            provenance=Provenance(sampler=type(study.sampler).__name__, seed=seed, trials=len(_finished(study)),
                                  study=name, storage=redact(storage_url), created=now(), autotune=__version__,
                                  trial=_trial_number(candidate)),
        )

    profile_set = None
    if objective == "pareto":
        front = pareto_front(fitting, scoring.metric if scoring else "ssim")
        picks = choose_picks(front, scoring.metric if scoring else "ssim")
        profile_set = ProfileSet(profiles=[profile_of(c) for c in front], picks=picks)
        best = front[picks["balanced"]]
    elif objective == "latency":
        best = min(fitting, key=lambda c: c.latency.median)
    else:
        best = max(fitting, key=lambda c: c.images_per_s.median)
    profile = profile_of(best)
    outcome = SearchOutcome(profile, baseline, best, candidates, name, redact(storage_url), len(_finished(study)),
                            profile_set=profile_set, reference=scoring.reference if scoring else None,
                            storage_url=storage_url)
    if out is not None:
        outcome.profile_path = (profile_set or profile).save(out)
        if scoring is not None:
            outcome.images_path = save_images(Path(out), scoring.reference, baseline, candidates)
    return outcome


def _trial_number(candidate: Candidate) -> int | None:
    return int(candidate.label.split()[-1]) if candidate.label.startswith("trial ") else None


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


def steps_range(workload_steps: int, reference_steps: int) -> range:
    """Step counts searched under a quality floor: from a tenth of the reference up to the reference itself."""
    high = max(workload_steps, reference_steps)
    return range(max(2, reference_steps // 10), high + 1)


def build_space(available: dict[str, list], steps: range | None = None,
                batch_sizes: list[int] | None = None) -> dict[str, list | range]:
    """Knob name -> the values to search (those available here); `steps` (a range) only with a quality floor.

    `batch_sizes` makes the batch a searched value (a Pareto search trades it for memory) instead of the largest
    batch that pays, found within each trial.
    """
    space: dict[str, list | range] = {
        knob.name: list(available[knob.name]) for knob in searched_knobs(available, with_quality=steps is not None)
    }
    if steps is not None:
        space["steps"] = steps
    if batch_sizes:
        space["batch_size"] = list(batch_sizes)
    return space


def suggest(trial: optuna.trial.BaseTrial, space: dict[str, list | range], fixed: dict[str, Any]) -> dict[str, Any]:
    """Define-by-run: an option (slice size, compile mode's options) is asked only when its parent activates it."""
    settings: dict[str, Any] = {knob.name: knob.default for knob in knobs.in_order()} | fixed
    for name, values in space.items():
        if not knobs.get(name).active(settings):
            continue
        if isinstance(values, range):
            settings[name] = trial.suggest_int(name, values.start, values.stop - 1, step=values.step)
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


def recipes(space: dict[str, list | range], device: str, defaults: dict[str, Any] | None = None) -> list[dict]:
    """The documentation recipes as trial params, restricted to the knobs and values searched here."""
    restricted = (_restrict(recipe, space, defaults) for recipe in documentation_recipes(device).values())
    return [params for params in restricted if params is not None]


def _restrict(recipe: dict[str, Any], space: dict[str, list | range],
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
        if value not in values:
            if name in recipe:
                return None
            value = values[0]
        params[name] = value
    return params


def warm_start(study: optuna.Study, space: dict[str, list | range], device: str, previous: Profile | None,
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


def default_storage(out: str | Path | None, study_name: str) -> str:
    """An SQLite file next to the output profile (or in the current folder)."""
    base = Path(out).with_suffix(".db") if out is not None else Path(f"{study_name}.db")
    return f"sqlite:///{base.resolve()}"


def redact(url: str) -> str:
    """The storage URL without its password, for anything written or printed."""
    if "://" not in url:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://***"


def make_sampler(sampler: str, seed: int) -> optuna.samplers.BaseSampler:
    if sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # Pinned, since Optuna 5 changed defaults (multivariate, constant_liar): the profile records what ran.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True, constant_liar=True)


# A Pareto study's objectives, in order.
PARETO_DIRECTIONS = ("maximize", "minimize", "maximize")  # images/s, peak memory (GiB), quality


def open_study(
    name: str, storage: str, sampler: str, seed: int, objective: str, fingerprint: Fingerprint,
    workload: Workload, model_id: str, fixed: dict[str, Any], floor: str | None = None,
    reference_steps: int | None = None,
) -> optuna.Study:
    if objective == "pareto":
        directions = list(PARETO_DIRECTIONS)
    else:
        directions = ["minimize" if objective == "latency" else "maximize"]
    study = optuna.create_study(study_name=name, storage=storage, sampler=make_sampler(sampler, seed),
                                directions=directions, load_if_exists=True)
    if objective == "pareto" and study.metric_names is None:
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what its plots label axes with
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["images/s", "peak memory (GiB)", (floor or "ssim").split("=")[0]])
    recorded = study.user_attrs
    identity = {"model": model_id, "workload": workload.model_dump(), "objective": objective, "fixed": fixed,
                "quality_floor": floor, "reference_steps": reference_steps,
                "hardware": fingerprint.hardware.model_dump()}
    if not recorded:
        for key, value in identity.items():
            study.set_user_attr(key, value)
    else:
        for key in ("model", "workload", "objective", "fixed", "quality_floor", "reference_steps"):
            if recorded.get(key) != identity[key]:
                raise AutotuneError(f"study {name!r} in {redact(storage)} was made for another {key}; "
                                    "give a new --study name or the same options as before")
    _reclaim_interrupted(study)
    return study


def _reclaim_interrupted(study: optuna.Study) -> None:
    # A trial left RUNNING by a search that was killed is failed and queued again, so resuming loses nothing.
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
        achieved = (scores or {}).get(self.metric, quality._worst(self.metric))
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


# ---- running trials ----


def run_trials(
    study: optuna.Study, worker: Worker, space: dict[str, list | range], fixed: dict[str, Any], workload: Workload,
    budget_bytes: int, objective: str, n_trials: int, timeout_s: float | None, trial_timeout_s: float,
    max_batch: int, emit: Events, scoring: Scoring | None = None,
) -> None:
    started = time.monotonic()
    while len(_finished(study)) < n_trials:
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            emit("phase", {"message": f"time limit of {timeout_s:.0f} s reached"})
            break
        trial = study.ask()
        settings = suggest(trial, space, fixed)
        if objective == "latency":
            batch_sizes = [1]
        elif "batch_size" in space:
            batch_sizes = [settings["batch_size"]]
        else:
            batch_sizes = _doublings(max_batch)
        task = {
            "kind": "trial", "settings": settings, "workload": workload.model_dump(), "batch_sizes": batch_sizes,
            "call_kwargs": knobs.call_kwargs({**settings, "batch_size": 1}),
            "memory_budget_bytes": budget_bytes, "repeats": SCREEN_REPEATS.__dict__,
            "best_images_per_s_at_batch": {} if "batch_size" in space else _best_at_each_batch(study),
            "prune_ratio": PRUNE_RATIO,
        }
        if scoring is not None:
            task |= {"reference_path": str(scoring.path), "metrics": list(scoring.metrics)}
        try:
            answer = worker.request(task, timeout_s=trial_timeout_s)
        except TrialFailed as failure:
            _tell_failure(study, trial, objective, failure.kind, failure.reason, scoring)
        except KeyboardInterrupt:
            worker.kill()
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(trial.params, skip_if_exists=False)
            raise SearchInterrupted("interrupted: the study is saved; run the same command to resume") from None
        else:
            _tell_result(study, trial, objective, answer, budget_bytes, scoring)
            if answer.get("recycle") or not _reversible(answer["settings"]):
                worker.kill()
        emit("trial", _trial_event(study, trial.number, n_trials, started, timeout_s))


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


def _tell_result(study, trial, objective: str, answer: dict, budget_bytes: int, scoring: Scoring | None = None) -> None:
    batches = [b for b in answer["batches"] if "oom" not in b]
    problem = next((b["image_problem"] for b in batches if b.get("image_problem")), None)
    fitting = [b for b in batches if b["peak_memory_bytes"] <= budget_bytes and not b.get("image_problem")]
    if not batches:  # out of memory at the only batch size asked for
        _tell_failure(study, trial, objective, "oom", answer["batches"][0]["oom"], scoring)
        return
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
    if objective == "pareto" and fitting:
        values = [chosen["images_per_s"]["median"], chosen["peak_memory_bytes"] / 2**30,
                  (scores or {}).get(scoring.metric if scoring else "ssim", quality._worst("ssim"))]
        study.tell(trial, values)
    else:
        study.tell(trial, _value(objective, chosen) if fitting else _worst(objective))


def _tell_failure(study, trial, objective: str, kind: str, reason: str, scoring: Scoring | None = None) -> None:
    # A failure is data: a COMPLETE trial that violates a constraint teaches the sampler; a FAILED one would not.
    trial.set_user_attr("failure", kind)
    trial.set_user_attr("reason", reason)
    trial.set_constraint("memory", 1.0 if kind == "oom" else 0.0)
    trial.set_constraint("image", 0.0)
    trial.set_constraint("failure", 1.0)
    if scoring is not None:
        trial.set_constraint("quality", 0.0)
    study.tell(trial, _worst(objective))


def _value(objective: str, batch: dict) -> float:
    return batch["seconds_per_image"] if objective == "latency" else batch["images_per_s"]["median"]


def _worst(objective: str) -> float | list[float]:
    if objective == "pareto":
        return [0.0, 1e3, -1.0]  # no images/s, a terabyte, no likeness: dominated by anything that ran
    return 1e9 if objective == "latency" else 0.0


def _trial_event(study, number: int, n_trials: int, started: float, timeout_s: float | None) -> dict[str, Any]:
    trial = study.trials[number]
    done = len(_finished(study))
    feasible = [t for t in _finished(study) if _feasible(t)]
    best = max((t.user_attrs.get("images_per_s", 0.0) for t in feasible), default=None)
    elapsed = time.monotonic() - started
    left = elapsed / max(1, done) * max(0, n_trials - done)
    if timeout_s is not None:
        left = min(left, max(0.0, timeout_s - elapsed))
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


def _top_candidates(trials: list, top_k: int, objective: str) -> list[Candidate]:
    ranked = sorted(trials, key=lambda t: t.value, reverse=objective != "latency")
    chosen: list[Candidate] = []
    seen: set[str] = set()
    for trial in ranked:
        settings = {**trial.user_attrs["settings"], "batch_size": trial.user_attrs["batch_size"]}
        key = repr(sorted(settings.items(), key=lambda item: item[0]))
        if key in seen:
            continue
        seen.add(key)
        chosen.append(Candidate(f"trial {trial.number}", settings, trial.user_attrs["peak_memory_bytes"]))
        if len(chosen) == top_k:
            break
    return chosen


def _pareto_candidates(study: optuna.Study, limit: int) -> list[Candidate]:
    """The feasible Pareto-optimal trials (Optuna's `best_trials` honour the constraints), fastest first."""
    front = sorted(study.best_trials, key=lambda t: -t.values[0])
    chosen: list[Candidate] = []
    seen: set[str] = set()
    for trial in front:
        if not _feasible(trial):
            continue
        settings = {**trial.user_attrs["settings"], "batch_size": trial.user_attrs["batch_size"]}
        key = repr(sorted(settings.items(), key=lambda item: item[0]))
        if key not in seen:
            seen.add(key)
            chosen.append(Candidate(f"trial {trial.number}", settings, trial.user_attrs["peak_memory_bytes"]))
    if len(chosen) > limit:  # keep the extremes and an even spread between them
        step = (len(chosen) - 1) / (limit - 1)
        chosen = [chosen[round(index * step)] for index in range(limit)]
    return chosen


def _objectives(candidate: Candidate, metric: str) -> tuple[float, float, float]:
    """Images/s, peak memory and quality, each turned so that bigger is better."""
    return (candidate.images_per_s.median, -float(candidate.peak_memory_bytes),
            candidate.quality.get(metric, quality._worst(metric)))


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

