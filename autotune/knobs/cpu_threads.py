"""cpu_threads: torch's intra-op threads (`torch.set_num_threads`) when the pipeline runs on the CPU.

It holds for the whole process, which is one more reason a tuner runs each trial in a worker of its own.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from ._base import Knob, register

# More than any machine's cores today; a bound keeps a typo (or `true`) from reaching torch.set_num_threads.
MAX_CPU_THREADS = 1024

# torch's own choice at start-up, restored for `null` so that one trial's thread count never leaks into the next.
_TORCH_DEFAULT_THREADS = torch.get_num_threads()


@register
class CpuThreads(Knob):
    name = "cpu_threads"
    help = "torch intra-op threads when running on the CPU (null: torch's default)"
    annotation = Annotated[int, Field(strict=True, ge=1, le=MAX_CPU_THREADS)] | None
    default = None
    stage = "process"

    def choices(self):
        return [None, 1, 2, 4, 8, 16]

    def unavailable(self, value, hw, pipe=None):
        if value is None:
            return None
        if hw.device != "cpu":
            return "tuned only when the pipeline runs on the CPU"
        if value > hw.cpu_cores:
            return f"more threads than this machine's {hw.cpu_cores} cores"
        return None

    def apply(self, pipe, value, settings, hw):
        self.apply_process(value, hw)

    def apply_process(self, value, hw):
        torch.set_num_threads(value or _TORCH_DEFAULT_THREADS)

    def reads_as(self, value, pipe):
        return value or _TORCH_DEFAULT_THREADS

    def read(self, pipe):
        return torch.get_num_threads()
