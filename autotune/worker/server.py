"""How trial workers start. On the CPU: forked from a server, a fresh interpreter that imports torch, diffusers and
the knobs once (`autotune.worker.preload`), so that a new worker starts in a fraction of a second instead of importing
them again. On CUDA: spawned, a fresh interpreter each, because those imports initialise CUDA (torchao's do) and a child
forked after that cannot use CUDA ("Cannot re-initialize CUDA in forked subprocess").

Never a fork of the driver itself: the driver may hold CUDA, threads and locks a child must not inherit. This module
imports nothing heavy, so the CLI can start the server before it imports torch, and the two import side by side. A
forked worker's parent is the server, not the driver: `exit_with_parent` watches both.
"""

from __future__ import annotations

import contextlib
import glob
import multiprocessing
import multiprocessing.context
import os
import threading
import time
from multiprocessing import forkserver

PRELOAD = ["autotune.worker.preload"]


def worker_context(device: str = "cpu") -> multiprocessing.context.BaseContext:
    """The multiprocessing context workers for `device` start in: the preloaded fork server on the CPU, spawn on
    CUDA (a spawned worker imports torch and diffusers itself: seconds, which a GPU trial dwarfs)."""
    if device.startswith("cuda"):
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start_early() -> None:
    """Start the server now (it would start with the first CPU worker), so its imports overlap the caller's. Not
    where an NVIDIA GPU is visible: workers will use CUDA and be spawned, and the server's imports would hold a CUDA
    context for nothing."""
    if nvidia_gpu_visible():
        return
    worker_context()
    forkserver.ensure_running()


def nvidia_gpu_visible() -> bool:
    """Whether this process may see an NVIDIA GPU, told without importing torch or touching the driver: a device
    node exists and CUDA_VISIBLE_DEVICES does not hide every device."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def cuda_fork_problem(device: str) -> str | None:
    """Why this process cannot use CUDA although its worker is for `device` (it was forked from a process that had
    initialised CUDA); None when it can, or when the worker is for the CPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    if torch.cuda._is_in_bad_fork():
        return ("this worker cannot use CUDA: it was forked from a process that had initialised CUDA (CUDA workers "
                "must be spawned, as autotune.worker.server.worker_context starts them)")
    return None


# How often a worker checks that its driver is alive; a trial of an orphan is computed for no one.
PARENT_POLL_S = 1.0


def exit_with_parent(parent: int, poll_s: float = PARENT_POLL_S) -> threading.Thread:
    """End this process (at once, whatever it is computing) when `parent`, the driver that started it, dies: a
    driver killed by SIGKILL cannot close its workers, and the orphan would hold the GPU. A daemon thread watches
    both the driver's pid (given by the driver, so one that died before this process got here is noticed too) and
    this process's own parent, the fork server, which exits with the driver: an orphan is re-parented to init or a
    subreaper."""
    forked_by = os.getppid()

    def watch() -> None:
        while os.getppid() == forked_by and pid_alive(parent):
            time.sleep(poll_s)
        os._exit(1)

    watcher = threading.Thread(target=watch, name="autotune-parent-watch", daemon=True)
    watcher.start()
    return watcher


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` runs on this host (any user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def kill_with_children(process: multiprocessing.process.BaseProcess) -> None:
    """Kill a worker process and what it started: inductor's compile subprocesses, left alone, would go on compiling
    beside the next trial's timed calls. Returns once they are gone: a killed process still frees its memory, and
    one that is no longer this process's descendant while it does counts as another process's load."""
    import psutil

    try:
        started = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        started = []
    process.kill()
    process.join(timeout=10)
    for child in started:
        with contextlib.suppress(psutil.Error):
            child.kill()
    deadline = time.monotonic() + 10
    while any(_exiting(child) for child in started) and time.monotonic() < deadline:
        time.sleep(0.02)


def _exiting(process) -> bool:
    """Whether a killed process has not finished exiting: a zombie has (only its parent's wait is left, and the
    parent of an orphan is init)."""
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
