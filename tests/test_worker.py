"""The worker protocol against real worker processes: what `describe` answers, and peak memory as an app sees it."""

from __future__ import annotations

import pytest
import torch
from faulty_pipelines import COUNT_FILE_ENV, counting_tiny_sd

from autotune import knobs, pipelines, protocol
from autotune.hardware import probe
from autotune.profile import Workload
from autotune.worker import Worker, WorkerConfig, tensor_bytes

pytestmark = pytest.mark.slow

BIG_BYTES = 192 * 2**20
WORKLOAD = Workload(height=64, width=64, prompts=["a cube"])


def tiny_sd_with_a_big_buffer():
    """The tiny pipeline carrying BIG_BYTES more of (touched, so resident) buffer: weights an app would hold once."""
    pipe = pipelines.tiny_sd()
    pipe.unet.register_buffer("ballast", torch.ones(BIG_BYTES // 4))
    return pipe


def _prepared_peak(model) -> int:
    with Worker(WorkerConfig(model=model)) as worker:
        answer = worker.request(protocol.Prepare({}, WORKLOAD, {"num_inference_steps": 1}), timeout_s=300)
    assert isinstance(answer, protocol.Prepared)
    return answer.peak_memory_bytes


def test_describe_gives_each_knobs_domain_as_data():
    with Worker(WorkerConfig(model="builtin:tiny-sd")) as worker:
        info = worker.request(protocol.Describe(), timeout_s=300)
    assert isinstance(info, protocol.Description) and info.pipeline == "StableDiffusionPipeline"
    assert set(info.domains) == set(knobs.KNOBS)
    here = knobs.domains(probe().hardware, pipelines.tiny_sd())
    assert {name: knobs.domain_from_dict(data) for name, data in info.domains.items()} == here


def test_cpu_peak_memory_counts_one_copy_of_the_pipeline_not_the_pristine_one_too():
    assert tensor_bytes(tiny_sd_with_a_big_buffer()) - tensor_bytes(pipelines.tiny_sd()) == BIG_BYTES
    # The worker holds a pristine pipeline and a trial's copy of it; an app holds one: the extra weights must show
    # once in the peak, not twice.
    extra = _prepared_peak(tiny_sd_with_a_big_buffer) - _prepared_peak("builtin:tiny-sd")
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
