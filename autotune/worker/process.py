"""One trial in its own process, seen from the search: start a worker, send it a task, get its answer or its failure.

A worker is a process of its own (`worker.server` says how it starts) that loads the model once and serves trials
from a pristine copy (`worker.tasks`, the worker's side). An out-of-memory error, a crash (even SIGKILL or a
segfault) or a hang ends the trial with a recorded reason, never the search: the parent replaces the worker after
any failure and after any trial whose knobs leave state that cannot be undone (compile, offload hooks). This module
knows nothing of the search strategy.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from autotune.exceptions import TrialFailed

from . import protocol
from .protocol import ModelSource as ModelSource  # re-exported: the search and apps name models with it
from .protocol import WorkerConfig as WorkerConfig
from .server import kill_with_children, worker_context
from .tasks import serve

# What a SIGKILL most often is: no one else sends it unasked. Said where the trial records its cause.
OOM_KILLER = (" (as the kernel's out-of-memory killer does when this machine's memory runs out; `dmesg` says whether "
              "it did): the search goes on; if many trials end so, lower --max-batch or stop other programs")


class Worker:
    """Parent-side handle of one worker process.

    >>> with Worker(WorkerConfig("builtin:tiny-sd")) as worker:  # doctest: +SKIP
    ...     worker.request(protocol.Describe(), timeout_s=120).domains
    """

    def __init__(self, config: WorkerConfig):
        self.config = config
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def redirect_output(self, log_path: str, compile_cache: str | None = None, timeout_s: float = 60) -> None:
        """Send this worker's output, and that of every replacement, to `log_path`; with `worker.compile_cache`,
        compile in a slot of that folder from now on."""
        self.config = dataclasses.replace(self.config, log_path=log_path,
                                          compile_cache=compile_cache or self.config.compile_cache)
        if self.alive:
            self.request(protocol.RedirectLog(log_path, compile_cache), timeout_s)

    def start(self) -> None:
        # transformers announces optional image backends at import; each worker would repeat it.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        context = worker_context(self.config.device)
        parent_conn, child_conn = context.Pipe()
        self._process = context.Process(target=serve, args=(child_conn, self.config, os.getpid(), dict(os.environ)),
                                        daemon=True)
        self._process.start()
        child_conn.close()
        self._conn = parent_conn

    def request(self, task: protocol.Task, timeout_s: float,
                on_batch: Callable[[protocol.BatchResult], bool] | None = None) -> Any:
        """Send `task`, wait at most `timeout_s` for the answer; raise `TrialFailed` on any failure. A trial sends each
        batch size's result as it is measured: `on_batch` says whether to time the next one (without it: yes)."""
        if not self.alive:
            self.close()
            self.start()
        assert self._conn is not None
        self._conn.send(task)
        deadline = time.monotonic() + timeout_s
        while True:
            if not self._conn.poll(max(0.0, deadline - time.monotonic())):
                self.kill()
                raise TrialFailed("timeout", f"no answer within {timeout_s:.0f} s; the worker was killed")
            try:
                answer = self._conn.recv()
            except (EOFError, OSError):
                raise TrialFailed("crash", self._death_reason()) from None
            if not isinstance(answer, protocol.BatchResult):
                break
            try:
                go_on = on_batch(answer) if on_batch else True
            except BaseException:  # the worker waits mid-task for an answer that will not come: it cannot serve on
                self.kill()
                raise
            self._conn.send(protocol.GoOn(go_on))
        if isinstance(answer, protocol.Failed):
            self.kill()  # never trust a worker after a failure: replace it
            raise TrialFailed(answer.kind, answer.reason)
        return answer

    def _death_reason(self) -> str:
        assert self._process is not None
        self._process.join(timeout=5)
        code = self._process.exitcode
        self.close()
        if code is not None and code < 0:
            killer = OOM_KILLER if -code == signal.SIGKILL else ""
            return f"the worker was killed by {signal.Signals(-code).name}{killer}"
        return f"the worker exited with code {code}"

    def kill(self) -> None:
        if self._process is not None and self._process.is_alive():
            kill_with_children(self._process)
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            try:
                if self._process is not None and self._process.is_alive():
                    self._conn.send(None)
                    self._process.join(timeout=10)
            except (OSError, BrokenPipeError):
                pass
            self._conn.close()
            self._conn = None
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=10)
        self._process = None
