"""The worker's side: in its own process, load the model once, then serve tasks from the search (`worker.Worker`),
each from a pristine copy of the pipeline: describe it, run a trial, prepare and time a configuration, render the
reference. A task's failure is its answer (`protocol.Failed`), never the worker's end.
"""

from __future__ import annotations

import copy
import gc
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from autotune.measure import timing
from autotune.quiet import quiet_library_noise

quiet_library_noise()  # a spawned CUDA worker imports diffusers here, before its output goes to the study's log

from diffusers import DiffusionPipeline  # noqa: E402

from autotune.exceptions import first_line  # noqa: E402
from autotune.measure import quality  # noqa: E402
from autotune.measure.memory_facts import tensor_bytes  # noqa: E402

from . import compile_cache, protocol  # noqa: E402
from .calibration import calibrate  # noqa: E402
from .protocol import WorkerConfig  # noqa: E402
from .server import cuda_fork_problem, exit_with_parent  # noqa: E402


def serve(conn, config: WorkerConfig, parent: int, environment: dict[str, str]) -> None:
    """The worker process's life: answer each task `conn` brings until the parent sends None or goes away."""
    exit_with_parent(parent)
    # The fork server has the driver's environment from when it started; the driver's, now, is the one that holds.
    os.environ.clear()
    os.environ.update(environment)
    # Ctrl-C reaches the whole process group: the parent decides what happens to the trial, and kills this worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if config.log_path:
        _redirect_output(config.log_path)
    compile_cache.claim(config.compile_cache or compile_cache.study_folder(None))
    # tqdm (diffusers' progress bars) otherwise makes a multiprocessing lock in every worker, which a killed worker
    # leaves behind for the parent's resource tracker to complain about.
    import tqdm

    tqdm.tqdm.set_lock(threading.RLock())
    import torch

    problem = cuda_fork_problem(config.device)
    if problem is not None:
        _refuse_every_task(conn, problem)
        return
    from autotune.hardware import probe

    hardware = probe(config.device).hardware
    if config.device == "cuda" and config.memory_budget_bytes:
        from autotune.measure.timing import budget_fraction

        # Hold this process to the target card's memory, so a config that would not fit it fails fast here instead
        # of borrowing memory a bigger card has.
        torch.cuda.init()
        torch.cuda.set_per_process_memory_fraction(budget_fraction(config.memory_budget_bytes))
    state = WorkerState(config, hardware, conn)
    for task in _tasks(conn):
        try:
            answer = _HANDLERS[type(task)](state, task)
        except Exception as error:
            if is_oom(error):
                answer = protocol.Failed("oom", first_line(error) or "out of memory")
            else:
                answer = protocol.Failed("error", f"{type(error).__name__}: {first_line(error)}",
                                         traceback.format_exc(limit=8))
        conn.send(answer)


def _tasks(conn) -> Iterator[Any]:
    """The tasks the parent sends, until it sends None or goes away."""
    while True:
        try:
            task = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if task is None:
            return
        yield task


def _refuse_every_task(conn, reason: str) -> None:
    """Answer each task with `reason` as its failure, until the parent closes: a worker that cannot do its work
    says why, in one line, instead of dying on its first CUDA call with a traceback."""
    for _task in _tasks(conn):
        conn.send(protocol.Failed("error", reason))


def _redirect_output(path: str) -> None:
    # File descriptors, not sys.stdout: inductor's compiler subprocesses and C++ code write to them directly.
    try:
        log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:  # its folder removed or made read-only mid-search: a log lost, not every later trial
        log = os.open(os.devnull, os.O_WRONLY)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


class WorkerState:
    """What a worker keeps between tasks: the pristine pipeline, the configuration kept for timing, references."""

    def __init__(self, config: WorkerConfig, hardware, conn):
        self.config = config
        self.hardware = hardware
        self._conn = conn
        self._pristine: DiffusionPipeline | None = None
        self._pristine_bytes = 0
        self.kept: DiffusionPipeline | None = None
        self.kept_kwargs: dict[str, Any] = {}
        self.kept_movable = True
        self.parked = False
        self._references: dict[str, Any] = {}

    def score(self, pipe, workload, call_kwargs: dict, first_images: dict,
              against: protocol.ScoreAgainst) -> dict[str, list[float]]:
        """Each prompt's fidelity to the reference; prompts the timed calls did not reach are rendered."""
        images = timing.render_missing(pipe, workload, call_kwargs, first_images)
        return quality.score_by_prompt(images, self.reference(against.reference_path), tuple(against.metrics),
                                       workload.prompts)

    def reference(self, path: str) -> Any:
        """The reference rendering saved at `path`, read once per worker."""
        if path not in self._references:
            self._references[path] = quality.load_reference(path)[0]
        return self._references[path]

    def park(self) -> None:
        """Move the kept pipeline to host memory and give its device memory back (`protocol.Time.park`)."""
        if self.kept is not None and self.kept_movable:
            self.kept.to("cpu")
            self.parked = True
            release_memory(self.hardware.device)

    def unpark(self, workload) -> None:
        """Bring the kept pipeline back to the device, and call it once with one step so that the allocator's pool
        and the kernels' caches are warm again before it is timed."""
        from autotune.measure.timing import Repeats, measure

        assert self.kept is not None
        self.kept.to(self.hardware.device)
        self.parked = False
        measure(self.kept, workload, self.kept_kwargs, Repeats(warmup=1, warmup_steps=1, min_runs=0, max_runs=0))

    def go_on(self, measured: protocol.BatchResult) -> bool:
        """Send a trial's batch result to the parent mid-task; whether to time the next batch size."""
        self._conn.send(measured)
        answer = self._conn.recv()
        return bool(answer.next_batch) if isinstance(answer, protocol.GoOn) else False

    def fresh_pipeline(self, settings: dict[str, Any] | None = None) -> DiffusionPipeline:
        """A pipeline no trial has touched: the model is loaded once, each trial works on a copy.

        The model is loaded in the dtype `settings` ask for (precision's `dtype`): an fp16 trial never copies an
        fp32 model to cast it (SDXL: 10 GB of host memory and minutes), and a trial of another precision loads it
        again in its own. What the previous task left is released first: on CUDA the allocator keeps freed blocks
        reserved, and a peak measured from a reset starts at what is reserved, so a small configuration after a big
        one would carry the big one's memory (and a pipeline caught in a reference cycle is not freed until
        collected)."""
        from autotune import knobs, pipelines

        self.kept, self.parked = None, False
        dtype = knobs.load_kwargs(settings).get("dtype") if settings is not None else None
        if self._pristine is not None and dtype not in (None, pipelines.denoiser(self._pristine).dtype):
            self._pristine = None  # loaded again below, in the dtype this task runs
        release_memory(self.hardware.device)
        if self._pristine is None:
            model = self.config.model
            if isinstance(model, str):
                self._pristine = pipelines.load(model, dtype, hub=self.config.hub)
            else:  # a function builds it as it builds it: cast after, as nothing else can be done
                self._pristine = model() if dtype is None else model().to(dtype)
            self._pristine.set_progress_bar_config(disable=True)
            self._pristine_bytes = tensor_bytes(self._pristine)
        return copy.deepcopy(self._pristine)

    def app_peak(self, peak_bytes: int | None) -> int | None:
        """`peak_bytes` as an app applying the profile would see it.

        On the CPU the peak is this process's resident set, which also holds the pristine pipeline each trial is
        copied from; an app holds one pipeline, so the pristine copy's parameters and buffers are taken off. (On a
        GPU the pristine copy stays in host memory and the device's peak does not count it.)
        """
        if peak_bytes is None or self.hardware.device != "cpu":
            return peak_bytes
        return max(0, peak_bytes - self._pristine_bytes)

    def baseline_bytes(self, pipe: DiffusionPipeline) -> int | None:
        """On the CPU, what this process holds now besides the pristine pipeline and `pipe` (a copy of it): the
        runtime that every trial's peak also counts. None on a GPU, whose peak does not count host memory."""
        if self.hardware.device != "cpu":
            return None
        import psutil

        return max(0, psutil.Process().memory_info().rss - self._pristine_bytes - tensor_bytes(pipe))


def release_memory(device: str) -> None:
    """Free what no one references any more, and on CUDA give the allocator's cached blocks back to the driver."""
    import torch

    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _describe(state: WorkerState, task: protocol.Describe) -> protocol.Description:
    from autotune import knobs, pipelines, workload
    from autotune.measure.memory_facts import facts_of

    pipe = state.fresh_pipeline()
    pipelines.check_text_to_image(pipe)
    builtin = pipelines.find_builtin(state.config.model)
    return protocol.Description(
        pipeline=type(pipe).__name__,
        denoiser=type(pipelines.denoiser(pipe)).__name__,
        default_size=pipelines.default_call_size(pipe, state.config.model),
        default_steps=pipelines.default_steps(pipe, state.config.model),
        default_prompts=builtin.prompts if builtin else (), default_call=dict(builtin.call) if builtin else {},
        default_guidance_scale=builtin.guidance_scale if builtin else None,
        default_negative_prompt=builtin.negative_prompt if builtin else None,
        scheduler=type(pipe.scheduler).__name__,
        domains=knobs.domains(state.hardware, pipe),
        hardware=state.hardware.model_dump(),
        call_parameters=workload.call_parameters(type(pipe)),
        output=workload.output_kind(type(pipe)),
        memory=facts_of(pipe, state.baseline_bytes(pipe)).to_dict(),
    )


def _trial(state: WorkerState, task: protocol.TrialTask) -> protocol.TrialResult:
    """Apply the settings, then time growing batch sizes for as long as the task's batch policy says it pays, at
    each size of the workload."""
    from autotune.apply import apply_settings

    started = time.perf_counter()
    wanted, calibration = task.settings, ()
    if task.calibrate is not None:  # the value is found by rendering, before the timed pipeline is built
        value, calibration = calibrate(state, task)
        wanted = {**wanted, task.calibrate.knob: value}
    calibrated = time.perf_counter()
    pipe = state.fresh_pipeline(wanted)
    copied = time.perf_counter()
    settings = apply_settings(pipe, wanted, state.hardware, fallback=False)
    # Where the trial's time went, the timed calls apart from the rest (`protocol.TrialResult.seconds`).
    seconds = {**({"calibration": calibrated - started} if calibration else {}), "model": copied - calibrated,
               "knobs": time.perf_counter() - copied, "warmup": 0.0, "timed": 0.0, "scoring": 0.0}
    own = task.workload.at(task.workload.height, task.workload.width)
    measured = _batches(state, pipe, own, task, seconds, first_size=True)
    # The other sizes the app renders, with the same knobs: each finds its own batch (the pruner judges the first).
    sizes = [] if any(entry.oom for entry in measured) else task.workload.other_sizes
    others = tuple(protocol.SizeResult(height, width, _batches(state, pipe, task.workload.at(height, width), task,
                                                                seconds, first_size=False))
                   for height, width in sizes)
    # After an out-of-memory error the allocator's state is suspect: the parent replaces this worker.
    seconds["worker"] = time.perf_counter() - started
    batches = [*measured, *(entry for size in others for entry in size.batches)]
    return protocol.TrialResult(settings=settings, batches=measured, other_sizes=others,
                                quality=measured[0].quality, quality_by_prompt=measured[0].quality_by_prompt,
                                calibration=calibration, recycle=any(entry.oom for entry in batches),
                                seconds={key: round(value, 4) for key, value in seconds.items()})


def _batches(state: WorkerState, pipe: DiffusionPipeline, workload, task: protocol.TrialTask,
             seconds: dict[str, float], first_size: bool) -> tuple[protocol.BatchResult, ...]:
    """Time growing batches at one size, for as long as the task's batch policy says it pays (and, at the first
    size, the parent's pruner); the first size's first batch is scored when the task asks, and each of its batches
    when the images depend on the batch (a batch that misses the floor ends the growth)."""
    from autotune import knobs
    from autotune.measure.timing import measure

    measured: list[protocol.BatchResult] = []
    each_batch = first_size and knobs.images_depend_on_batch(task.settings)
    for batch in task.policy.sizes:
        kwargs = {**task.call_kwargs, "num_images_per_prompt": batch}
        try:
            result = measure(pipe, workload, kwargs, task.repeats)
        except Exception as error:
            if not is_oom(error) or (first_size and not measured):  # another size's OOM: it does not fit there
                raise
            measured.append(protocol.BatchResult(batch_size=batch, oom=first_line(error)))
            break
        seconds["warmup"] += result.warmup_s or 0.0
        seconds["timed"] += sum(result.latency_s)
        by_prompt = None
        if task.score is not None and first_size and (each_batch or not measured) and not result.image_problem:
            # Scored at the first batch: per-image seeding keeps each image the same at every batch size, unless a
            # knob makes an image depend on its batch (`Knob.batch_dependent`); then at every batch.
            scoring_started = time.perf_counter()
            by_prompt = state.score(pipe, workload, kwargs, result.first_images, task.score)
            seconds["scoring"] += time.perf_counter() - scoring_started
        measured.append(protocol.BatchResult(
            batch_size=batch, images_per_s=result.images_per_s,
            seconds_per_image=result.latency.median / batch, peak_memory_bytes=state.app_peak(result.peak_memory_bytes),
            warmup_s=result.warmup_s, image_problem=result.image_problem,
            quality=quality.aggregate(by_prompt) if by_prompt else None, quality_by_prompt=by_prompt))
        if (not task.policy.worth_next(measured) or (first_size and not state.go_on(measured[-1]))
                or (each_batch and by_prompt and not task.score.meets(measured[-1].quality))):
            break
    return tuple(measured)


def _prepare(state: WorkerState, task: protocol.Prepare) -> protocol.Prepared:
    """Build and warm up one configuration and keep it, for interleaved re-measurement (`_time`)."""
    from autotune.apply import apply_settings
    from autotune.measure.timing import Repeats, measure

    pipe = state.fresh_pipeline(task.settings)
    apply_settings(pipe, task.settings, state.hardware, fallback=False)
    state.kept, state.kept_kwargs = pipe, task.call_kwargs
    state.kept_movable = task.settings.get("offload", "none") == "none"  # offload hooks place the weights themselves
    result = measure(pipe, task.workload, task.call_kwargs, Repeats(warmup=1, min_runs=0, max_runs=0))
    if task.park:
        state.park()
    return protocol.Prepared(warmup_s=result.warmup_s, peak_memory_bytes=state.app_peak(result.peak_memory_bytes),
                             frames=result.frames)


def _time(state: WorkerState, task: protocol.Time) -> protocol.Timed:
    from autotune.measure.timing import Repeats, measure

    assert state.kept is not None, "prepare must come before time"
    if state.parked:
        state.unpark(task.workload)
    result = measure(state.kept, task.workload, state.kept_kwargs,
                     Repeats(warmup=0, min_runs=task.runs, max_runs=task.runs, max_seconds=float("inf")))
    rendered = None
    if task.render:
        rendered = timing.render_missing(state.kept, task.workload, state.kept_kwargs, result.first_images)
    if task.park:
        state.park()
    return protocol.Timed(latency_s=list(result.latency_s), peak_memory_bytes=state.app_peak(result.peak_memory_bytes),
                          image_problem=result.image_problem, rendered=rendered)


def _reference(state: WorkerState, task: protocol.Reference) -> protocol.ReferenceSaved:
    """Render the reference (fp32, the pipeline's own scheduler, the reference steps) with its noise floor; cache it."""
    from autotune.apply import apply_settings

    pipe = state.fresh_pipeline({})
    apply_settings(pipe, {}, state.hardware, fallback=False)
    images, noise_floor = timing.render_reference(pipe, task.workload, task.steps, tuple(task.metrics))
    quality.save_reference(Path(task.path), images, noise_floor)
    return protocol.ReferenceSaved(noise_floor=noise_floor)


def _log(state: WorkerState, task: protocol.RedirectLog) -> protocol.Done:
    _redirect_output(task.path)
    if task.compile_cache:
        compile_cache.claim(task.compile_cache)
    return protocol.Done()


_HANDLERS: dict[type, Callable[[WorkerState, Any], Any]] = {
    protocol.Describe: _describe, protocol.RedirectLog: _log, protocol.TrialTask: _trial, protocol.Prepare: _prepare,
    protocol.Time: _time, protocol.Reference: _reference,
}


# How CUDA libraries say they ran out of memory when torch does not raise its own error (cuBLAS, cuDNN handles and
# workspaces are allocated outside torch's allocator).
_OOM_WORDS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "cudaErrorMemoryAllocation")


def is_oom(error: BaseException) -> bool:
    """Whether `error` is running out of memory, also when another error wraps it: inductor raises
    `BackendCompilerFailed` around an OOM met while compiling, and cuBLAS / cuDNN report theirs as RuntimeError."""
    import torch

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
            return True
        if isinstance(error, RuntimeError) and any(word in str(error) for word in _OOM_WORDS):
            return True
        error = error.__cause__ or error.__context__
    return False
