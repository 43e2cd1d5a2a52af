"""The machine's fingerprint: device, GPU, memory, drivers, CPU, RAM and library versions.

NVIDIA data comes from NVML (`nvidia-ml-py`, imported as `pynvml`); without NVML or a GPU the probe still works and
describes the CPU. This module knows nothing of knobs or Optuna.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
from typing import Literal

import psutil
import torch
from pydantic import BaseModel, ConfigDict, Field


class Hardware(BaseModel):
    """What a measurement depends on. `memory_bytes` is the GPU's total memory, or the RAM on a CPU."""

    model_config = ConfigDict(extra="forbid")

    device: Literal["cpu", "cuda"]
    gpu: str | None = None
    memory_bytes: int = Field(gt=0)
    capability: str | None = Field(default=None, pattern=r"^\d+\.\d+$")
    driver: str | None = None
    cuda: str | None = None
    cpu: str
    cpu_cores: int = Field(gt=0)
    ram_bytes: int = Field(gt=0)

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


class Software(BaseModel):
    model_config = ConfigDict(extra="forbid")

    python: str
    torch: str
    diffusers: str
    transformers: str | None = None
    xformers: str | None = None


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
        raise ValueError(f"device {device!r} is not supported; use 'cpu' or 'cuda'")
    ram = psutil.virtual_memory().total
    cpu = dict(cpu=_cpu_name(), cpu_cores=os.cpu_count() or 1, ram_bytes=ram)
    if device == "cuda":
        hardware = Hardware(device="cuda", **_gpu_info(), **cpu)
    else:
        hardware = Hardware(device="cpu", memory_bytes=ram, **cpu)
    return Fingerprint(hardware=hardware, software=software_versions())


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


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _gpu_index() -> int:
    # NVML numbers GPUs physically and ignores CUDA_VISIBLE_DEVICES; torch's device 0 is its first entry.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return int(visible) if visible.isdigit() else 0


def _gpu_info() -> dict:
    """GPU facts from NVML, with torch's own view where NVML is missing (no driver library, a container)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(_gpu_index())
            name = pynvml.nvmlDeviceGetName(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            cuda_version = pynvml.nvmlSystemGetCudaDriverVersion()
            return dict(
                gpu=name.decode() if isinstance(name, bytes) else name,
                memory_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                capability=f"{major}.{minor}",
                driver=_text(pynvml.nvmlSystemGetDriverVersion()),
                cuda=f"{cuda_version // 1000}.{cuda_version % 1000 // 10}",
            )
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVML absent or failing: torch still knows the basics.
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
