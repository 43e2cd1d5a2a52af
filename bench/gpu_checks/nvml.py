"""NVML's memory figures, read without torch: importing this module imports nothing heavy, so the memory check can
take its baseline before anything initialises CUDA (diffusers' import of torchao does), and sample the device's
used memory in a thread while autotune measures.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

SAMPLE_EVERY_S = 0.005


def _handle():
    import pynvml

    pynvml.nvmlInit()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return pynvml, pynvml.nvmlDeviceGetHandleByIndex(int(visible) if visible.isdigit() else 0)


def process_bytes() -> int | None:
    """NVML's figure for this process on the GPU; None where NVML is missing or hides it (many containers do)."""
    try:
        pynvml, handle = _handle()
        try:
            for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid == os.getpid() and process.usedGpuMemory:
                    return int(process.usedGpuMemory)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None
    return None


def gpu_name() -> str | None:
    """The GPU's name (`NVIDIA H100 80GB HBM3`, as torch reports it too); None where NVML cannot be read."""
    try:
        pynvml, handle = _handle()
        try:
            name = pynvml.nvmlDeviceGetName(handle)
            return name.decode() if isinstance(name, bytes) else str(name)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def used_bytes() -> int | None:
    """The whole GPU's used memory as NVML sees it; None where NVML cannot be read."""
    return _memory_info("used")


def total_bytes() -> int | None:
    """The GPU's memory as NVML sees it (what autotune's `--budget` fractions are of); None where unreadable."""
    return _memory_info("total")


def _memory_info(field: str) -> int | None:
    try:
        pynvml, handle = _handle()
        try:
            return int(getattr(pynvml.nvmlDeviceGetMemoryInfo(handle), field))
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


class UsedSampler:
    """The most the device's used memory reached while the `with` block ran, read every ~5 ms by a thread that asks
    NVML itself: a witness independent of torch's allocator and of autotune's own figure.

    >>> with UsedSampler(read=lambda: 7) as sampler:
    ...     pass
    >>> sampler.peak_bytes
    7
    """

    def __init__(self, read: Callable[[], int | None] | None = None, every_s: float = SAMPLE_EVERY_S):
        self._read = read
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shutdown: Callable[[], None] | None = None
        self.peak_bytes: int | None = None
        self.samples = 0

    def __enter__(self) -> UsedSampler:
        read = self._read or self._nvml_reader()
        if read is not None:
            self._sample(read)  # one reading before the block starts, so a short block still has one
            self._thread = threading.Thread(target=self._run, args=(read,), name="nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._shutdown is not None:
            self._shutdown()

    def _nvml_reader(self) -> Callable[[], int] | None:
        try:
            pynvml, handle = _handle()  # init once: a 5 ms loop cannot afford nvmlInit per reading
        except Exception:
            return None
        self._shutdown = pynvml.nvmlShutdown
        return lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)

    def _run(self, read: Callable[[], int | None]) -> None:
        while not self._stop.wait(self._every_s):
            self._sample(read)
        self._sample(read)  # and one after, for what the block left reserved

    def _sample(self, read: Callable[[], int | None]) -> None:
        try:
            value = read()
        except Exception:
            return
        if value is not None:
            self.samples += 1
            self.peak_bytes = value if self.peak_bytes is None else max(self.peak_bytes, value)
