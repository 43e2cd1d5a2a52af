"""batch_size: images per pipeline call (`num_images_per_prompt`). It decides throughput and peak memory."""

from __future__ import annotations

from pydantic import PositiveInt

from .base import Knob, register


@register
class BatchSize(Knob):
    name = "batch_size"
    help = "images per pipeline call (num_images_per_prompt)"
    annotation = PositiveInt
    default = 1
    stage = "call"
    after = ("compile",)
    call_time = True

    def choices(self):
        return [1, 2, 4, 8, 16]

    def call_kwargs(self, value):
        return {"num_images_per_prompt": value}

    def read(self, pipe):
        return None
