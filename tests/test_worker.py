"""The worker protocol against real worker processes: what `describe` answers, and peak memory as an app sees it."""

from __future__ import annotations

import psutil
import pytest
import torch
from faulty_pipelines import COUNT_FILE_ENV, PID_FILE_ENV, counting_tiny_sd, spawning_tiny_sd

from autotune import knobs, pipelines
from autotune.exceptions import TrialFailed
from autotune.hardware import probe
from autotune.measure.timing import Repeats
from autotune.profile import Workload
from autotune.worker import protocol
from autotune.worker.batching import BatchPolicy, doublings
from autotune.worker.process import Worker, WorkerConfig
from autotune.worker.tasks import tensor_bytes

pytestmark = pytest.mark.slow

BIG_BYTES = 192 * 2**20
WORKLOAD = Workload(height=64, width=64, prompts=["a cube"])


def tiny_sd_with_a_big_buffer():
    """The tiny pipeline carrying BIG_BYTES more of (touched, so resident) buffer: weights an app would hold once."""
    pipe = pipelines.tiny_sd_random()
    pipe.unet.register_buffer("ballast", torch.ones(BIG_BYTES // 4))
    return pipe


def _prepared_peak(model) -> int:
    with Worker(WorkerConfig(model=model)) as worker:
        answer = worker.request(protocol.Prepare({}, WORKLOAD, {"num_inference_steps": 1}), timeout_s=300)
    assert isinstance(answer, protocol.Prepared)
    return answer.peak_memory_bytes


def test_describe_gives_each_knobs_domain_as_data():
    with Worker(WorkerConfig(model="builtin:tiny-sd-random")) as worker:
        info = worker.request(protocol.Describe(), timeout_s=300)
    assert isinstance(info, protocol.Description) and info.pipeline == "StableDiffusionPipeline"
    assert set(info.domains) == set(knobs.KNOBS)
    here = knobs.domains(probe().hardware, pipelines.tiny_sd_random())
    assert info.domains == here


def test_cpu_peak_memory_counts_one_copy_of_the_pipeline_not_the_pristine_one_too():
    assert tensor_bytes(tiny_sd_with_a_big_buffer()) - tensor_bytes(pipelines.tiny_sd_random()) == BIG_BYTES
    # The worker holds a pristine pipeline and a trial's copy of it; an app holds one: the extra weights must show
    # once in the peak, not twice.
    extra = _prepared_peak(tiny_sd_with_a_big_buffer) - _prepared_peak("builtin:tiny-sd-random")
    assert 0.5 * BIG_BYTES < extra < 1.5 * BIG_BYTES, f"{extra / 2**20:.0f} MiB more for {BIG_BYTES / 2**20:.0f} MiB"


def test_preparing_a_configuration_times_its_warm_up_call_alone(tmp_path, monkeypatch):
    # warmup_s is the warm-up's time: preparing must run the warm-up call and no timed call after it.
    counter = tmp_path / "unet-calls"
    counter.touch()
    monkeypatch.setenv(COUNT_FILE_ENV, str(counter))
    steps = 3
    with Worker(WorkerConfig(model=counting_tiny_sd)) as worker:
        answer = worker.request(protocol.Prepare({}, WORKLOAD, {"num_inference_steps": steps}), timeout_s=300)
    assert answer.warmup_s is not None and answer.warmup_s > 0
    in_worker = len(counter.read_text().splitlines())
    counter.write_text("")
    counting_tiny_sd()("a cube", num_inference_steps=steps, height=64, width=64, output_type="np")
    assert in_worker == len(counter.read_text().splitlines()), "prepare ran more than its one warm-up call"


def _unet_calls(counter) -> int:
    calls = len(counter.read_text().splitlines())
    counter.write_text("")
    return calls


def test_a_trials_warm_up_call_runs_the_steps_it_is_given_and_the_timed_calls_all_of_them(tmp_path, monkeypatch):
    counter = tmp_path / "unet-calls"
    counter.touch()
    monkeypatch.setenv(COUNT_FILE_ENV, str(counter))
    steps, runs = 4, 2
    calls = {}  # UNet calls of one pipeline call at 1 and at `steps` steps (PNDM adds one to the steps)
    for n in (1, steps):
        counting_tiny_sd()("a cube", num_inference_steps=n, height=64, width=64, output_type="np")
        calls[n] = _unet_calls(counter)
    with Worker(WorkerConfig(model=counting_tiny_sd)) as worker:
        for warmup_steps, warmup_calls in ((1, calls[1]), (None, calls[steps])):
            repeats = Repeats(warmup=1, warmup_steps=warmup_steps, min_runs=runs, max_runs=runs, max_seconds=60)
            worker.request(protocol.TrialTask({}, WORKLOAD, {"num_inference_steps": steps}, repeats=repeats),
                           timeout_s=300)
            assert _unet_calls(counter) == warmup_calls + runs * calls[steps], f"warm-up at {warmup_steps} steps"


def test_the_parent_decides_after_each_batch_whether_a_trial_times_the_next():
    task = protocol.TrialTask({}, WORKLOAD, {"num_inference_steps": 1}, policy=BatchPolicy(doublings(2)),
                              repeats=Repeats(warmup=0, min_runs=2, max_runs=2))
    seen = []
    with Worker(WorkerConfig(model="builtin:tiny-sd-random")) as worker:
        stopped = worker.request(task, timeout_s=300, on_batch=lambda batch: seen.append(batch.batch_size) or False)
        went_on = worker.request(task, timeout_s=300, on_batch=lambda batch: True)
    assert seen == [1] and [b.batch_size for b in stopped.batches] == [1]
    assert [b.batch_size for b in went_on.batches] == [1, 2]


def test_a_killed_worker_takes_the_processes_it_started_with_it(tmp_path, monkeypatch):
    pid_file = tmp_path / "child.pid"
    monkeypatch.setenv(PID_FILE_ENV, str(pid_file))
    task = protocol.TrialTask({}, WORKLOAD, {"num_inference_steps": 1})
    with Worker(WorkerConfig(model=spawning_tiny_sd)) as worker, pytest.raises(TrialFailed, match="timeout"):
        worker.request(task, timeout_s=20)
    # Gone when the request returns, not later: a process still exiting then is counted as another's load.
    assert not _running(int(pid_file.read_text())), "the worker's child outlived it"


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_reused_worker_frees_the_previous_trials_memory_before_the_next_copy(monkeypatch):
    # On CUDA a peak measured from a reset starts at what the allocator holds reserved: the previous trial's blocks
    # must be collected and given back first, or a small configuration after a big one carries the big one's memory.
    import weakref

    from autotune.worker.tasks import WorkerState

    emptied = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    gpu = probe().hardware.model_copy(update={"device": "cuda"})
    state = WorkerState(WorkerConfig(model=pipelines.tiny_sd_random, device="cuda"), gpu, conn=None)
    previous = state.fresh_pipeline()
    previous.unet.cycle = previous  # kept alive by a reference cycle, as hooks and compiled modules can be
    gone = weakref.ref(previous)
    del previous
    emptied.clear()
    state.fresh_pipeline()
    assert gone() is None and emptied


def test_candidates_take_turns_on_a_gpu_that_cannot_hold_them_all():
    from autotune.compare.candidates import Candidate
    from autotune.compare.remeasure import takes_turns

    gpu, cpu = WorkerConfig("builtin:sd15-arch", device="cuda"), WorkerConfig("builtin:sd15-arch")
    small = [Candidate(name, {}, trial_peak_bytes=4 * 10**9) for name in "abc"]
    assert not takes_turns(small, gpu, 80 * 10**9)
    assert takes_turns(small, gpu, 12 * 10**9)  # three 4 GB pipelines and their contexts on a 12 GB card
    assert takes_turns([*small, Candidate("default", {})], gpu, 80 * 10**9)  # a peak never measured: no guess
    assert not takes_turns(small, cpu, 12 * 10**9) and not takes_turns(small[:1], gpu, 1)


def test_a_parked_configuration_is_timed_again_after_coming_back():
    # On a CPU host memory is the device, so the move is a no-op, but the turn's sequence runs as on a GPU: prepare
    # and park, then for each round come back, warm up with one step, time, park again.
    with Worker(WorkerConfig(model="builtin:tiny-sd-random")) as worker:
        kwargs = {"num_inference_steps": 2}
        worker.request(protocol.Prepare({}, WORKLOAD, kwargs, park=True), timeout_s=300)
        for _ in range(2):
            timed = worker.request(protocol.Time(WORKLOAD, runs=1, park=True), timeout_s=300)
            assert len(timed.latency_s) == 1 and timed.image_problem is None


def test_out_of_memory_is_recognised_when_another_error_wraps_it():
    from autotune.worker.tasks import is_oom

    def wrapped(inner: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except BaseException as error:
                raise RuntimeError("backend='inductor' raised: BackendCompilerFailed") from error
        except RuntimeError as outer:
            return outer

    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(wrapped(torch.OutOfMemoryError("CUDA out of memory")))  # inductor compiling
    assert is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert is_oom(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not is_oom(wrapped(ValueError("a shape mismatch"))) and not is_oom(RuntimeError("expected scalar type"))


def test_an_fp16_trial_loads_the_model_in_fp16_and_never_casts_an_fp32_copy(tiny_folder, monkeypatch):
    # SDXL in fp32 is 10 GB of host memory: a worker loads a model in the dtype its task runs, as an app's
    # load_pipeline does, instead of copying the fp32 model and casting the copy.
    from diffusers import DiffusionPipeline

    from autotune.worker.tasks import WorkerState

    cast = []
    real_to = DiffusionPipeline.to
    monkeypatch.setattr(DiffusionPipeline, "to", lambda self, *args, **kwargs: cast.append(args) or real_to(
        self, *args, **kwargs))
    state = WorkerState(WorkerConfig(model=str(tiny_folder)), probe().hardware, conn=None)
    half = state.fresh_pipeline({"precision": "fp16"})
    assert {half.unet.dtype, half.text_encoder.dtype} == {torch.float16} and not cast
    full = state.fresh_pipeline({"precision": "fp32"})  # another precision: loaded again, in its own dtype
    assert full.unet.dtype == torch.float32 and not cast
    assert state.fresh_pipeline({}).unet.dtype == torch.float32  # the default configuration: fp32
