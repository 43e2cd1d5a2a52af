"""Before any heavy work: can a trial worker, started the way searches start them, initialise CUDA?

The parent starts one process in `autotune.worker.server.worker_context(device)` (spawn for CUDA). Its target,
`probe_target`, does the import a real worker does (`autotune.worker.process`, which pulls diffusers and torchao, whose
imports touch CUDA), asks `cuda_fork_problem`, then allocates one tensor on the device. A worker forked from a
process that had initialised CUDA fails right there ("Cannot re-initialize CUDA in forked subprocess"), so every
trial of every search would fail: this says so in one line before the checks spend minutes.

This module imports nothing heavy at import time: the spawned child imports it to find its target.
"""

from __future__ import annotations

import time

from .core import FAIL, NO_CUDA, PASS, SKIPPED, Result, last_line

NAME, TITLE = "worker_start", "0. a worker started as searches start them initialises CUDA"
TIMEOUT_S = 60.0  # spawn + import + CUDA context take ~12 s on an H100 host; past this, it hangs


def probe_target(answers, device: str) -> None:
    """The started worker's side: one line back, `pass <what it saw>` or `fail <the error's last line>`."""
    try:
        import autotune.worker.process  # noqa: F401  (what a trial worker imports first: diffusers, torchao, the knobs)
        from autotune.worker.server import cuda_fork_problem

        problem = cuda_fork_problem(device)
        if problem:
            answers.send((FAIL, problem))
            return
        import torch

        tensor = torch.zeros(1, device=device)
        name = torch.cuda.get_device_name(tensor.device) if tensor.is_cuda else str(tensor.device)
        answers.send((PASS, name))
    except BaseException as error:  # the child's failure is the answer
        answers.send((FAIL, f"{type(error).__name__}: {last_line(str(error)) or 'no message'}"))


def probe_worker(device: str = "cuda", timeout_s: float = TIMEOUT_S) -> Result:
    """Start one worker for `device` as a search would and report what it could do (never raises)."""
    from autotune.worker.server import worker_context

    started = time.monotonic()
    context = worker_context(device)
    figures = {"start_method": context.get_start_method(), "device": device}
    reader, writer = context.Pipe(duplex=False)
    worker = context.Process(target=probe_target, args=(writer, device), daemon=True)
    worker.start()
    writer.close()  # the child holds the only write end: EOF when it dies without answering
    try:
        status, reason = _answer(reader, timeout_s)
    finally:
        worker.join(5)  # an answered worker is exiting; one that hangs is killed
        if worker.is_alive():
            worker.kill()
            worker.join(5)
    if status == FAIL and reason is None:
        reason = f"the worker exited with code {worker.exitcode} without answering"
    seconds = round(time.monotonic() - started, 1)
    figures |= {"answer": reason if status == PASS else None, "exit_code": worker.exitcode}
    return Result(NAME, TITLE, status, None if status == PASS else reason, figures, seconds)


def _answer(reader, timeout_s: float) -> tuple[str, str | None]:
    if not reader.poll(timeout_s):
        return FAIL, f"no answer within {timeout_s:.0f} s (the import or the CUDA initialisation hangs)"
    try:
        return reader.recv()
    except EOFError:
        return FAIL, None


def entry(device: dict, dry_run: bool, reason_if_dry: str) -> Result:
    """The run's first result: the probe, or why it was skipped (a dry run; no CUDA device)."""
    if dry_run:
        return Result(NAME, TITLE, SKIPPED, reason_if_dry)
    if not device.get("cuda"):
        return Result(NAME, TITLE, SKIPPED, device.get("reason") or NO_CUDA)
    return probe_worker("cuda")
