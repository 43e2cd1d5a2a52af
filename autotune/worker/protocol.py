"""What the search sends a worker process and what comes back: frozen dataclasses, each default set here once.

The parent sends a task (`Describe`, `TrialTask`, `Prepare`, `Time`, `Reference`, `RedirectLog`) over a pipe and
gets back its result, or a `Failed` that `Worker.request` raises as `exceptions.TrialFailed`. While a trial runs, the
worker sends each batch size's `BatchResult` as it is measured and waits for a `GoOn` before the next: the parent's
pruner decides. Nothing here imports Optuna: `verify` and `bench` talk to workers without the tuner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autotune.measure import quality
from autotune.measure.figures import Stat
from autotune.measure.quality import DEFAULT_METRICS
from autotune.measure.timing import Repeats
from autotune.pipelines import HubOptions
from autotune.workload import Workload

from .batching import BatchPolicy

# Search-time timing is a quick screen; the interleaved re-measurement at the end decides.
SCREEN_REPEATS = Repeats(warmup=1, min_runs=2, max_runs=5, max_seconds=5.0, target_cv=0.05)
# Timed runs per worker per round in the final re-measurement.
RUNS_PER_ROUND = 2


# A model as a worker loads it: a hub id, a folder or a `builtin:*` name, or a function that builds the pipeline.
ModelSource = str | Callable[[], Any]


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker of a search shares: the model, the device, and the memory budget it is held to."""

    model: ModelSource
    device: str = "cpu"
    memory_budget_bytes: int | None = None
    log_path: str | None = None  # where workers write what torch, diffusers and inductor print
    compile_cache: str | None = None  # the study's compile folder; each worker claims a slot of it
    hub: HubOptions = HubOptions()  # the revision, weights variant and offline switch a hub model loads with


# ---- tasks ----


@dataclass(frozen=True)
class Describe:
    """Load the model; answer with a `Description`."""


@dataclass(frozen=True)
class RedirectLog:
    """Write this worker's output (file descriptors 1 and 2) to `path` from now on; with `worker.compile_cache`,
    compile in a slot of that folder (the study's)."""

    path: str
    compile_cache: str | None = None


@dataclass(frozen=True)
class ScoreAgainst:
    """A reference rendering (saved by a `Reference` task) that a trial's images are scored against."""

    reference_path: str
    metrics: tuple[str, ...] = DEFAULT_METRICS
    # The floor, when there is one: a batch-dependent configuration stops growing its batch at the first that misses.
    metric: str | None = None
    minimum: float | None = None

    def meets(self, scores: dict[str, float]) -> bool:
        """Whether `scores` meet the floor carried here (always, without one), as `Scoring.meets` says."""
        return self.metric is None or self.minimum is None or quality.meets(scores, self.metric, self.minimum)


@dataclass(frozen=True)
class Calibrate:
    """Before timing, find the largest value of `knob` in [low, high] whose images still score `minimum` on `metric`
    (quality falls as it grows, as a step cache's threshold): bracket, then bisect on a log scale, in at most
    `renders` renders of the workload's prompts (`worker.tasks.calibrate`)."""

    knob: str
    low: float
    high: float
    metric: str
    minimum: float
    renders: int = 6


@dataclass(frozen=True)
class TrialTask:
    """Apply `settings` to a fresh pipeline, then time it at the batch sizes `policy` allows."""

    settings: dict[str, Any]
    workload: Workload
    call_kwargs: dict[str, Any]  # at batch size 1; the batch is `policy`'s
    policy: BatchPolicy = BatchPolicy()
    repeats: Repeats = SCREEN_REPEATS
    score: ScoreAgainst | None = None
    calibrate: Calibrate | None = None  # with `score`: a value found by rendering, not sampled


@dataclass(frozen=True)
class GoOn:
    """The parent's answer to a trial's `BatchResult` sent mid-task: time the next batch size, or stop there."""

    next_batch: bool


@dataclass(frozen=True)
class Prepare:
    """Build and warm up one configuration and keep it for `Time` tasks; with `park`, keep it in host memory
    between them (`Time.park`)."""

    settings: dict[str, Any]
    workload: Workload
    call_kwargs: dict[str, Any]
    park: bool = False


@dataclass(frozen=True)
class Time:
    """Time the prepared configuration `runs` times; with `render`, also its image for every prompt. With `park`, the
    pipeline goes to host memory afterwards and comes back to the device (warmed by a one-step call) before the next
    timing: re-measured candidates that do not fit the GPU together then take turns on it."""

    workload: Workload
    runs: int = RUNS_PER_ROUND
    render: bool = False
    park: bool = False


@dataclass(frozen=True)
class Reference:
    """Render the reference (fp32, the pipeline's own scheduler, `steps`) twice, and save it with its noise floor."""

    workload: Workload
    steps: int
    path: str
    metrics: tuple[str, ...] = DEFAULT_METRICS


Task = Describe | RedirectLog | TrialTask | Prepare | Time | Reference


# ---- results ----


@dataclass(frozen=True)
class Description:
    pipeline: str
    denoiser: str
    default_size: int
    default_steps: int
    scheduler: str
    domains: dict[str, Any]  # knob name -> its `knobs.Domain` here (frozen dataclasses: the pipe pickles them)
    hardware: dict[str, Any]
    # Each argument of the pipeline's call -> the scalar kinds it takes (`workload.call_parameters`).
    call_parameters: dict[str, tuple[str, ...]] = field(default_factory=dict)
    output: str = "image"  # or "video" (`workload.output_kind`)
    memory: dict[str, Any] = field(default_factory=dict)  # `measure.memory_facts.ModelFacts.to_dict()`
    default_prompts: tuple[str, ...] = ()  # a built-in's own (`pipelines.Builtin.prompts`)
    default_call: dict[str, Any] = field(default_factory=dict)  # a built-in's own call arguments
    default_guidance_scale: float | None = None  # a built-in's own (`pipelines.Builtin.guidance_scale`)
    default_negative_prompt: str | None = None  # a built-in's own (`pipelines.Builtin.negative_prompt`)


@dataclass(frozen=True)
class BatchResult:
    """One batch size of a trial: its timing, or the out-of-memory error that ended it."""

    batch_size: int
    images_per_s: Stat | None = None
    seconds_per_image: float | None = None
    peak_memory_bytes: int | None = None
    warmup_s: float | None = None
    image_problem: str | None = None
    oom: str | None = None
    # Scored at the first batch, and at every batch of a batch-dependent configuration (`quality.aggregate`).
    quality: dict[str, float] | None = None
    quality_by_prompt: dict[str, list[float]] | None = None  # each prompt's scores, in the workload's order

    @property
    def images_per_s_median(self) -> float:
        return self.images_per_s.median if self.images_per_s else 0.0

    def record(self) -> dict[str, Any]:
        """The JSON form a study stores in its trial's user attrs."""
        return {"batch_size": self.batch_size, "images_per_s": self.images_per_s.model_dump() if self.images_per_s
                else None, "peak_memory_bytes": self.peak_memory_bytes, "oom": self.oom,
                "image_problem": self.image_problem, **({"quality": self.quality} if self.quality else {})}


@dataclass(frozen=True)
class SizeResult:
    """A trial's batches at one of the workload's other sizes (`Workload.other_sizes`)."""

    height: int
    width: int
    batches: tuple[BatchResult, ...]


@dataclass(frozen=True)
class TrialResult:
    settings: dict[str, Any]  # as applied (read back from the pipeline)
    batches: tuple[BatchResult, ...]  # at the workload's own size
    other_sizes: tuple[SizeResult, ...] = ()
    quality: dict[str, float] | None = None
    quality_by_prompt: dict[str, list[float]] | None = None
    calibration: tuple[tuple[float, float], ...] = ()  # (value, score) of each calibration render, in order
    recycle: bool = False  # the worker's state is suspect (after an out-of-memory error): replace it
    # Seconds in the worker: copying the pristine pipeline (loading it, the first time), applying the knobs, warm-up
    # calls (compile included), timed calls, quality scoring, and the whole task ("worker").
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Prepared:
    warmup_s: float
    peak_memory_bytes: int | None
    frames: int | None = None  # frames per output of a video pipeline


@dataclass(frozen=True)
class Timed:
    latency_s: list[float]
    peak_memory_bytes: int | None
    image_problem: str | None = None
    rendered: Any = None  # prompts x H x W x 3, with `Time(render=True)`


@dataclass(frozen=True)
class ReferenceSaved:
    noise_floor: dict[str, float]


@dataclass(frozen=True)
class Done:
    """The answer to a task that returns nothing (`RedirectLog`)."""


@dataclass(frozen=True)
class Failed:
    """The task failed in the worker; `kind` is oom or error (timeout and crash are seen by the parent)."""

    kind: str
    reason: str
    traceback: str | None = field(default=None, repr=False)
