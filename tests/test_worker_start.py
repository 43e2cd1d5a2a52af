"""How workers start: CPU workers fork from a server that preloaded torch and diffusers; CUDA workers are spawned,
because diffusers' import of torchao initialises CUDA and no child forked after that can use it. On a CPU the driver
cannot be poisoned for real, so the one fake here is the hardware boundary: `torch.cuda._is_in_bad_fork` answering
as it does in a child forked from a process that initialised CUDA."""

from __future__ import annotations

import multiprocessing
import os

import process_probes
import pytest
import torch

from autotune.worker import protocol
from autotune.worker import server as worker_server
from autotune.worker import tasks as worker_tasks
from autotune.worker.process import WorkerConfig

pytestmark = pytest.mark.slow


def _ask(context, target, *args):
    parent, child = context.Pipe()
    process = context.Process(target=target, args=(child, *args), daemon=True)
    process.start()
    child.close()
    try:
        assert parent.poll(120), "the child did not answer"
        return parent.recv()
    finally:
        process.join(timeout=30)


def test_cuda_workers_are_spawned_without_the_preloaded_imports():
    assert worker_server.worker_context("cuda").get_start_method() == "spawn"
    assert worker_server.worker_context("cuda:1").get_start_method() == "spawn"
    spawned = _ask(worker_server.worker_context("cuda"), process_probes.loaded_modules)
    assert "diffusers" not in spawned and "torchao" not in spawned and "torch" not in spawned
    # The CPU start keeps the fast path: forked from the server that imported them once.
    assert worker_server.worker_context("cpu").get_start_method() == "forkserver"
    forked = _ask(worker_server.worker_context("cpu"), process_probes.loaded_modules)
    assert "diffusers" in forked


def test_a_cuda_worker_started_after_the_driver_touched_cuda_can_use_it(monkeypatch):
    torch.cuda.device_count()
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: True)  # what a forked child of a CUDA process sees
    assert _ask(worker_server.worker_context("cuda"), process_probes.cuda_fork_problem, "cuda") is None
    problem = _ask(multiprocessing.get_context("fork"), process_probes.cuda_fork_problem, "cuda")
    assert problem.startswith("this worker cannot use CUDA: it was forked from a process that had initialised CUDA")
    assert _ask(multiprocessing.get_context("fork"), process_probes.cuda_fork_problem, "cpu") is None


def test_a_worker_in_a_bad_fork_answers_every_task_with_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: True)
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    config = WorkerConfig("builtin:tiny-sd-random", device="cuda", memory_budget_bytes=6 * 10**9)
    process = context.Process(target=worker_tasks.serve, args=(child, config, os.getpid(), dict(os.environ)),
                              daemon=True)
    process.start()
    child.close()
    try:
        for task in (protocol.Describe(), protocol.Describe()):
            parent.send(task)
            assert parent.poll(60)
            answer = parent.recv()
            assert isinstance(answer, protocol.Failed) and answer.kind == "error"
            assert "\n" not in answer.reason and "forked from a process that had initialised CUDA" in answer.reason
        parent.send(None)
        process.join(timeout=30)
        assert process.exitcode == 0
    finally:
        if process.is_alive():
            process.kill()


def test_the_server_is_not_started_early_where_a_gpu_is_visible(monkeypatch):
    started = []
    monkeypatch.setattr(worker_server.forkserver, "ensure_running", lambda: started.append(True))
    monkeypatch.setattr(worker_server.glob, "glob", lambda pattern: ["/dev/nvidia0"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    worker_server.start_early()
    assert not started
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    worker_server.start_early()
    assert started
