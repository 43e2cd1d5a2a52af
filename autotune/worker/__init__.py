"""The trial worker: a separate process that loads the model, applies a configuration, renders and times it, and
answers in typed messages; a crash, a CUDA out-of-memory or a hang costs the search one trial, never the search.

Outside this folder, import these modules (`tasks`, `preload` and `calibration` run inside the worker process):
"""

__all__ = [
    "batching",  # which batch sizes a trial tries, and when it stops doubling
    "compile_cache",  # torch.compile's caches, kept per study so a fresh worker reuses what an earlier one compiled
    "process",  # `Worker`, the parent's handle on a worker process, and its `WorkerConfig`
    "protocol",  # the messages between the parent and the worker
    "server",  # the fork server CPU workers start from
]
