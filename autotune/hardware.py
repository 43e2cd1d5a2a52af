"""The machine's fingerprint: device, GPU, memory, drivers, CPU, RAM and library versions.

NVIDIA data comes from NVML (`nvidia-ml-py`, imported as `pynvml`); without NVML or a GPU the probe still works and
describes the CPU. This module knows nothing of knobs or Optuna.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Literal

import psutil
import torch
from pydantic import BaseModel, ConfigDict, Field

from .exceptions import InvalidInput


class Hardware(BaseModel):
    """What a measurement depends on. `memory_bytes` is the GPU's total memory, or the RAM on a CPU."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    device: Literal["cpu", "cuda"]
    """Where the pipeline runs."""
    gpu: str | None = None
    """The GPU's name."""
    memory_bytes: int = Field(gt=0)
    """The GPU's total memory, or the RAM on a CPU."""
    capability: str | None = Field(default=None, pattern=r"^\d+\.\d+$")
    """The GPU's compute capability (8.9)."""
    driver: str | None = None
    """The NVIDIA driver's version."""
    cuda: str | None = None
    """The CUDA version torch was built with."""
    cpu: str
    """The CPU's name."""
    cpu_cores: int = Field(gt=0)
    """Logical CPU cores."""
    ram_bytes: int = Field(gt=0)
    """The machine's RAM."""
    cpu_capability: str | None = None
    """The CPU's best vector instruction set for torch's kernels (amx, avx512-bf16, avx512, avx2, sve, neon, default):
    its generation. bf16 can beat fp32 with avx512-bf16 and runs ~10x slower than it on avx2."""

    @property
    def capability_tuple(self) -> tuple[int, int]:
        if not self.capability:
            return (0, 0)
        major, minor = self.capability.split(".")
        return int(major), int(minor)

    def describe(self) -> str:
        if self.device == "cuda":
            return f"{self.gpu} (sm {self.capability})"
        return f"CPU {self.cpu} ({self.cpu_cores} cores)"

    def same_generation(self, other: Hardware) -> bool:
        """GPUs of the same compute capability; CPUs with the same vector instruction set (when both record one)."""
        if self.device != other.device:
            return False
        if self.device == "cuda":
            return self.capability is not None and self.capability == other.capability
        return self.cpu_capability is not None and self.cpu_capability == other.cpu_capability

    def generation(self) -> str:
        if self.device == "cuda":
            return f"sm {self.capability}" if self.capability else "compute capability unknown"
        return self.cpu_capability or "instruction set not recorded"

    def same_model(self, other: Hardware) -> bool:
        """The same GPU model, or on CPU the same processor with as many cores: where a measurement carries over."""
        if self.device != other.device:
            return False
        if self.device == "cuda":
            return self.gpu == other.gpu
        return (self.cpu, self.cpu_cores) == (other.cpu, other.cpu_cores)


class Software(BaseModel):
    """The versions a measurement depends on."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    python: str
    """Python's version."""
    torch: str
    """torch's version."""
    diffusers: str
    """diffusers' version."""
    transformers: str | None = None
    """transformers' version."""
    xformers: str | None = None
    """xformers' version, when installed."""


class Fingerprint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hardware: Hardware
    software: Software


def probe(device: str | None = None) -> Fingerprint:
    """Describe this machine. `device` forces `cpu` or `cuda`; by default CUDA is used when torch sees a GPU.

    >>> probe().hardware.device in ("cpu", "cuda")
    True
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise InvalidInput(f"device {device!r} is not supported; use 'cpu' or 'cuda'")
    ram = psutil.virtual_memory().total
    cpu = dict(cpu=_cpu_name(), cpu_cores=os.cpu_count() or 1, ram_bytes=ram, cpu_capability=cpu_capability())
    if device == "cuda":
        hardware = Hardware(device="cuda", **_gpu_info(), **cpu)
    else:
        hardware = Hardware(device="cpu", memory_bytes=ram, **cpu)
    return Fingerprint(hardware=hardware, software=software_versions())


def choose_gpu(device: str) -> str:
    """`cuda:N` as the device a search and its workers run on: the N-th visible GPU becomes the only one visible
    (CUDA_VISIBLE_DEVICES, which spawned workers inherit, and which NVML's lookups follow), and the device reads
    "cuda". Any other device is returned as it is. It must be chosen before CUDA starts in this process."""
    if not device.startswith("cuda:"):
        return device
    index = device.partition(":")[2]
    visible = [part.strip() for part in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part.strip()]
    if not index.isdigit() or (visible and int(index) >= len(visible)):
        shown = f" (CUDA_VISIBLE_DEVICES={','.join(visible)} makes {len(visible)} visible)" if visible else ""
        raise InvalidInput(f"device {device!r} names no visible GPU{shown}; use cuda, cuda:0, cuda:1, ...")
    if torch.cuda.is_initialized():
        raise InvalidInput(f"device {device!r}: CUDA has started in this process already; choose the GPU before, "
                           "with CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = visible[int(index)] if visible else index
    return "cuda"


def available_memory_bytes(device: str | None = None) -> int:
    """Memory this process can use on `device`: what is free, plus what the process holds already.

    A profile's peak memory counts the whole process (torch, the loaded pipeline), so what this process already holds
    is available to it. CPU: available RAM (psutil) plus this process's resident memory. CUDA: the GPU's free memory
    (NVML, else `torch.cuda.mem_get_info`) plus what torch's allocator holds.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return int(psutil.virtual_memory().available + psutil.Process().memory_info().rss)
    held = torch.cuda.memory_reserved() if torch.cuda.is_initialized() else 0
    return int(_gpu_free_bytes() + held)


def _gpu_free_bytes() -> int:
    with nvml_session() as nvml:
        if nvml is not None:
            try:
                return int(nvml.nvmlDeviceGetMemoryInfo(nvml_device(nvml)).free)
            except Exception:  # NVML up but refusing this query
                pass
    # NVML absent or failing: ask the CUDA runtime (this creates a context).
    return int(torch.cuda.mem_get_info()[0])


@contextmanager
def nvml_session() -> Iterator[ModuleType | None]:
    """NVML, initialised for the block and shut down after it; None when NVML is missing or refuses to start.

    >>> with nvml_session() as nvml:  # doctest: +SKIP
    ...     name = nvml.nvmlDeviceGetName(nvml_device(nvml)) if nvml else None
    """
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver library, no GPU, or a container that hides it
        yield None
        return
    try:
        yield pynvml
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # shutting down cannot fail a measurement that is already made
            pass


def nvml_device(nvml: ModuleType, torch_index: int = 0) -> Any:
    """NVML's handle for torch's CUDA device `torch_index`.

    NVML numbers GPUs physically and ignores CUDA_VISIBLE_DEVICES, so torch's index is not NVML's: under
    CUDA_VISIBLE_DEVICES=3 torch's device 0 is NVML's GPU 3. Once CUDA is up, the device's UUID (or PCI bus id) names
    it for both; before, the visible-devices list does, so that probing does not start CUDA.
    """
    if torch.cuda.is_initialized():
        properties = torch.cuda.get_device_properties(torch_index)
        uuid = str(getattr(properties, "uuid", "") or "")
        if uuid.startswith(("GPU-", "MIG-")):
            return nvml.nvmlDeviceGetHandleByUUID(uuid)
        if uuid:
            # torch prints the bare hex; NVML names a whole GPU "GPU-..." and a MIG instance "MIG-...".
            for prefix in ("GPU-", "MIG-"):
                try:
                    return nvml.nvmlDeviceGetHandleByUUID(prefix + uuid)
                except Exception:  # pynvml.NVMLError_NotFound, or the other prefix
                    continue
        bus = getattr(properties, "pci_bus_id", None)
        if bus is not None:
            domain, device = getattr(properties, "pci_domain_id", 0), getattr(properties, "pci_device_id", 0)
            return nvml.nvmlDeviceGetHandleByPciBusId(f"{domain:08X}:{bus:02X}:{device:02X}.0")
    visible = [part.strip() for part in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    named = visible[torch_index] if torch_index < len(visible) else ""
    if named.startswith(("GPU-", "MIG-")):
        return nvml.nvmlDeviceGetHandleByUUID(named)
    return nvml.nvmlDeviceGetHandleByIndex(int(named) if named.isdigit() else torch_index)


def software_versions() -> Software:
    return Software(
        python=platform.python_version(),
        torch=torch.__version__,
        diffusers=_version("diffusers") or "missing",
        transformers=_version("transformers"),
        xformers=_version("xformers"),
    )


def has_c_compiler() -> bool:
    """torch.compile's inductor backend writes C++ on CPU and needs a compiler to build it."""
    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# Instruction-set flags (as /proc/cpuinfo names them) -> capability, best first.
_CPU_CAPABILITIES = [
    ("amx", {"amx_tile", "amx_bf16"}),
    ("avx512-bf16", {"avx512f", "avx512_bf16"}),
    ("avx512", {"avx512f"}),
    ("avx2", {"avx2"}),
    ("sve", {"sve"}),
    ("neon", {"asimd"}),
]


def cpu_capability() -> str:
    """The best vector instruction set torch's CPU kernels can use here, e.g. `avx512-bf16`."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    for name, needed in _CPU_CAPABILITIES:
        if needed <= flags:
            return name
    return str(torch.backends.cpu.get_cpu_capability()).lower()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _gpu_info() -> dict[str, Any]:
    """GPU facts from NVML, with torch's own view where NVML is missing (no driver library, a container)."""
    with nvml_session() as nvml:
        if nvml is not None:
            try:
                handle = nvml_device(nvml)
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                cuda_version = nvml.nvmlSystemGetCudaDriverVersion()
                return dict(
                    gpu=_text(nvml.nvmlDeviceGetName(handle)),
                    memory_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                    capability=f"{major}.{minor}",
                    driver=_text(nvml.nvmlSystemGetDriverVersion()),
                    cuda=f"{cuda_version // 1000}.{cuda_version % 1000 // 10}",
                )
            except Exception:  # NVML up but refusing this query: torch still knows the basics.
                pass
    properties = torch.cuda.get_device_properties(0)
    return dict(
        gpu=properties.name,
        memory_bytes=int(properties.total_memory),
        capability=f"{properties.major}.{properties.minor}",
        driver=None,
        cuda=torch.version.cuda,
    )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
