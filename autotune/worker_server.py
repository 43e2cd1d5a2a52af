"""The server trial workers are forked from: a fresh interpreter that imports torch, diffusers and the knobs once
(`autotune.preload`), so that a new worker starts in a fraction of a second instead of importing them again.

Never a fork of the driver itself: the driver may hold CUDA, threads and locks a child must not inherit. This module
imports nothing heavy, so the CLI can start the server before it imports torch, and the two import side by side.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
from multiprocessing import forkserver

PRELOAD = ["autotune.preload"]


def worker_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context workers start in."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start_early() -> None:
    """Start the server now (it would start with the first worker), so its imports overlap the caller's."""
    worker_context()
    forkserver.ensure_running()
