"""batch_size: images per pipeline call (`num_images_per_prompt`). It decides throughput and peak memory."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ._base import Knob, register

# Far above any batch that fits a GPU of today; a bound keeps a typo (or `true`) from reaching a pipeline call.
MAX_BATCH_SIZE = 4096


@register
class BatchSize(Knob):
    name = "batch_size"
    help = "images per pipeline call (num_images_per_prompt)"
    annotation = Annotated[int, Field(strict=True, ge=1, le=MAX_BATCH_SIZE)]  # strict: `true` is not a batch
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
