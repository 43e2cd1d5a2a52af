"""Targets for processes started in tests to report on themselves. Imports nothing at module level: a spawned child
imports this module first, and what it finds loaded must be what its start method gave it."""

from __future__ import annotations


def loaded_modules(conn) -> None:
    import sys

    conn.send(sorted(sys.modules))
    conn.close()


def cuda_fork_problem(conn, device: str) -> None:
    from autotune.worker.server import cuda_fork_problem

    conn.send(cuda_fork_problem(device))
    conn.close()
