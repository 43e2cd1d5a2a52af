"""cudnn_benchmark: `torch.backends.cudnn.benchmark`, cuDNN timing its convolution algorithms on the first call.

It holds for the whole process, which is one more reason a tuner runs each trial in a worker of its own.
"""

from __future__ import annotations

import torch

from ._base import Knob, register


@register
class CudnnBenchmark(Knob):
    name = "cudnn_benchmark"
    help = "let cuDNN time its convolution algorithms on the first call and keep the fastest"
    annotation = bool
    default = False
    stage = "process"

    def choices(self):
        return [False, True]

    def unavailable(self, value, hw, pipe=None):
        if value and hw.device != "cuda":
            return "cuDNN runs only on CUDA GPUs"
        return None

    def apply(self, pipe, value, settings, hw):
        self.apply_process(value, hw)

    def apply_process(self, value, hw):
        torch.backends.cudnn.benchmark = value

    def read(self, pipe):
        return torch.backends.cudnn.benchmark
