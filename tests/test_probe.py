"""The machine's fingerprint (NVML faked only at the hardware boundary) and `autotune probe`."""

from __future__ import annotations

import json
import os
import sys
import types

import psutil
import pytest
import torch
from conftest import autotune_process
from typer.testing import CliRunner

from autotune import knobs, pipelines
from autotune.cli import app
from autotune.exceptions import InvalidInput
from autotune.hardware import Hardware, probe
from autotune.measure.timing import PeakMemory, Repeats, measure, summarize
from autotune.profile import Workload


class FakeNVML(types.ModuleType):
    """Just enough of `pynvml` to describe one RTX 3060, recording the GPU index asked for."""

    def __init__(self):
        super().__init__("pynvml")
        self.calls: list[str] = []
        self.index = None

    def nvmlInit(self):
        self.calls.append("init")

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetHandleByIndex(self, index):
        self.index = index
        return "handle"

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA GeForce RTX 3060"  # older bindings answer bytes

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(total=12 * 1024**3, free=11 * 1024**3, used=1024**3)

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return 8, 6

    def nvmlSystemGetDriverVersion(self):
        return "580.95.05"

    def nvmlSystemGetCudaDriverVersion(self):
        return 13000


@pytest.fixture
def nvml(monkeypatch) -> FakeNVML:
    fake = FakeNVML()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake


def test_probe_describes_this_cpu():
    hardware = probe(device="cpu").hardware
    assert hardware.device == "cpu"
    assert hardware.gpu is None and hardware.capability is None
    assert hardware.cpu_cores == os.cpu_count()
    assert hardware.memory_bytes == hardware.ram_bytes > 0
    assert hardware.cpu


def test_probe_records_library_versions():
    software = probe(device="cpu").software
    assert software.torch == torch.__version__
    assert software.diffusers.count(".") >= 1
    assert software.python == ".".join(map(str, sys.version_info[:3]))


def test_probe_on_a_gpu_reads_nvml(nvml):
    hardware = probe().hardware  # torch says a GPU is there, so the default device is cuda
    assert hardware == Hardware(
        device="cuda", gpu="NVIDIA GeForce RTX 3060", memory_bytes=12 * 1024**3, capability="8.6",
        driver="580.95.05", cuda="13.0", cpu=hardware.cpu, cpu_cores=hardware.cpu_cores, ram_bytes=hardware.ram_bytes,
        cpu_capability=hardware.cpu_capability,
    )
    assert hardware.ram_bytes == psutil.virtual_memory().total  # the host's RAM still comes from psutil
    assert nvml.calls == ["init", "shutdown"]
    assert hardware.describe() == "NVIDIA GeForce RTX 3060 (sm 8.6)"


def test_probe_asks_nvml_for_the_first_visible_gpu(nvml, monkeypatch):
    # NVML numbers GPUs physically; CUDA_VISIBLE_DEVICES=3,1 makes GPU 3 torch's device 0.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    probe(device="cuda")
    assert nvml.index == 3


def test_probe_without_nvml_uses_torch_view(monkeypatch):
    broken = types.ModuleType("pynvml")

    def no_driver():
        raise OSError("NVML Shared Library Not Found")

    broken.nvmlInit = no_driver
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    properties = types.SimpleNamespace(name="NVIDIA A100-SXM4-40GB", total_memory=40 * 1024**3, major=8, minor=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: properties)

    hardware = probe(device="cuda").hardware
    assert (hardware.gpu, hardware.memory_bytes, hardware.capability) == ("NVIDIA A100-SXM4-40GB", 40 * 1024**3, "8.0")
    assert hardware.driver is None


def test_probe_refuses_other_devices():
    with pytest.raises(InvalidInput, match="device 'mps' is not supported; use 'cpu' or 'cuda'"):
        probe(device="mps")


def test_probe_names_a_visible_gpu_given_by_uuid(nvml, monkeypatch):
    asked = []
    nvml.nvmlDeviceGetHandleByUUID = lambda uuid: asked.append(uuid) or "handle"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5d3c1a2b-0000-1111-2222-333344445555")
    probe(device="cuda")
    assert asked == ["GPU-5d3c1a2b-0000-1111-2222-333344445555"] and nvml.index is None


# ---- measuring: honest numbers ----

GiB = 1024**3


class TwoGPUs(types.ModuleType):
    """`pynvml` on a host with two GPUs; this process runs on the second (NVML index 1), holding 3 GiB there."""

    def __init__(self):
        super().__init__("pynvml")
        self.uuids = ["GPU-aaaaaaaa-0000-0000-0000-000000000000", "GPU-bbbbbbbb-1111-1111-1111-111111111111"]
        self.held = {1: [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=3 * GiB)]}

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return self.uuids.index(uuid)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return self.held.get(handle, [])


@pytest.fixture
def on_the_second_gpu(monkeypatch) -> TwoGPUs:
    """A worker started with CUDA_VISIBLE_DEVICES=1: torch's device 0 is NVML's GPU 1. torch's allocator reserved
    2 GiB at most; NVML sees 3 GiB, the rest being the CUDA context."""
    fake = TwoGPUs()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(cuda, "current_device", lambda: 0)
    # torch reports the UUID without NVML's "GPU-" prefix.
    properties = types.SimpleNamespace(uuid=fake.uuids[1].removeprefix("GPU-"), name="NVIDIA H100")
    monkeypatch.setattr(cuda, "get_device_properties", lambda index: properties)
    monkeypatch.setattr(cuda, "reset_peak_memory_stats", lambda: None)
    monkeypatch.setattr(cuda, "max_memory_reserved", lambda: 2 * GiB)
    monkeypatch.setattr(cuda, "memory_reserved", lambda: 2 * GiB)
    return fake


def test_the_cuda_context_counts_on_a_gpu_other_than_nvml_s_first(on_the_second_gpu):
    assert PeakMemory(cuda=True).peak() == 3 * GiB  # 2 GiB of allocator pool + 1 GiB of context


def test_the_context_is_found_by_pci_bus_id_when_torch_gives_no_uuid(on_the_second_gpu, monkeypatch):
    buses = {"00000000:41:00.0": 1}
    on_the_second_gpu.nvmlDeviceGetHandleByPciBusId = buses.__getitem__
    properties = types.SimpleNamespace(pci_bus_id=0x41, pci_device_id=0, pci_domain_id=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: properties)
    assert PeakMemory(cuda=True).peak() == 3 * GiB


def test_the_context_is_found_on_a_mig_instance(on_the_second_gpu):
    # On a MIG device torch's UUID is the instance's, which NVML names "MIG-...", not "GPU-...".
    on_the_second_gpu.uuids[1] = "MIG-bbbbbbbb-1111-1111-1111-111111111111"
    assert PeakMemory(cuda=True).peak() == 3 * GiB


def test_no_memory_reading_is_none_not_zero(on_the_second_gpu, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # NVML missing
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda: 0)
    assert PeakMemory(cuda=True).peak() is None


def test_no_values_summarize_to_none_and_one_value_to_n_1():
    assert summarize([]) is None
    assert summarize([2.0]).model_dump() == {"median": 2.0, "cv": 0.0, "n": 1}


def test_warming_up_only_times_no_call_and_reports_no_rate():
    pipe = pipelines.tiny_sd_random()
    result = measure(pipe, Workload(height=64, width=64, prompts=["a cat"]), {"num_inference_steps": 2},
                     Repeats(warmup=1, max_runs=0))
    assert result.latency_s == [] and result.warmup_s is not None and result.warmup_s > 0
    assert result.images_per_s is None and result.latency is None
    assert result.summary()["seconds_per_image"] is None and result.summary()["images_per_s"] is None
    assert result.peak_memory_bytes is not None and result.peak_memory_bytes > 0


def test_a_measurement_without_warm_up_records_no_warm_up_time():
    pipe = pipelines.tiny_sd_random()
    result = measure(pipe, Workload(height=64, width=64, prompts=["a cat"]), {"num_inference_steps": 2},
                     Repeats(warmup=0, min_runs=2, max_runs=2))
    assert result.warmup_s is None and len(result.latency_s) == 2 and result.images_per_s.n == 2


def test_hardware_capability_as_numbers(gpu_hardware):
    assert gpu_hardware.capability_tuple == (8, 6)
    assert gpu_hardware.model_copy(update={"capability": "10.0"}).capability_tuple == (10, 0)
    assert probe(device="cpu").hardware.capability_tuple == (0, 0)


def test_autotune_probe_json_lists_every_knob_value_with_its_availability():
    result = autotune_process("probe", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    assert report["hardware"] == probe().hardware.model_dump(mode="json")
    assert report["software"]["torch"] == torch.__version__
    rows = report["knobs"]
    assert [(row["knob"], row["value"]) for row in rows] == [
        (knob.name, value) for knob in knobs.in_order() for value in knob.choices()]
    for row in rows:
        assert {"knob", "value", "available", "reason"} <= set(row)
        assert row["available"] is (row["reason"] is None)
        assert row["reason"] is None or row["reason"].strip()
    by_value = {(row["knob"], row["value"]): row for row in rows}
    if report["hardware"]["device"] == "cpu":
        assert not by_value[("offload", "model")]["available"]
        assert "accelerator" in by_value[("offload", "model")]["reason"]


def test_autotune_probe_prints_the_machine_and_every_knob():
    result = CliRunner().invoke(app, ["probe"], env={"COLUMNS": "200"}, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Machine" in result.output and "Knobs" in result.output
    assert probe().hardware.cpu in result.output
    for knob in knobs.in_order():
        assert knob.name in result.output
    if probe().hardware.device == "cpu":
        assert "offload requires an accelerator" in result.output


def test_autotune_probe_checks_the_knobs_against_a_model():
    result = CliRunner().invoke(app, ["probe", "--json", "--model", "builtin:tiny-sd-random"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["knobs"]
    assert {row["knob"] for row in rows} == set(knobs.KNOBS)


def test_autotune_probe_with_an_unknown_model_is_one_line():
    result = autotune_process("probe", "--model", "builtin:nope")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "autotune: error: unknown built-in model 'builtin:nope'; known: builtin:tiny-sd, builtin:tiny-flux, "
        "builtin:tiny-sd-random, builtin:sd15-arch, builtin:tiny-flux-random, builtin:flux-arch")
    assert "Traceback" not in result.stderr


def test_cuda_n_is_chosen_as_the_only_visible_gpu_before_cuda_starts(monkeypatch):
    from autotune.exceptions import InvalidInput
    from autotune.hardware import choose_gpu

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert choose_gpu("cuda:1") == "cuda" and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    # Already narrowed by the user: cuda:1 is the second of those, by NVML's and the driver's numbering.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert choose_gpu("cuda:1") == "cuda" and os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    assert choose_gpu("cpu") == "cpu" and choose_gpu("cuda") == "cuda"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with pytest.raises(InvalidInput, match=r"device 'cuda:2' names no visible GPU \(CUDA_VISIBLE_DEVICES=3,5"):
        choose_gpu("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(InvalidInput, match="CUDA has started in this process already"):
        choose_gpu("cuda:0")
