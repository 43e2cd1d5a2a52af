"""steps: `num_inference_steps`, passed with each call.

It changes the image, so a tuner searches it only with a quality floor; a step of Heun or KDPM2 calls the denoiser
about twice, so schedulers are compared by measured time, never by step count.
"""

from __future__ import annotations

from pydantic import PositiveInt

from ._base import Knob, register


@register
class Steps(Knob):
    name = "steps"
    help = "num_inference_steps (null: the pipeline's own default)"
    annotation = PositiveInt | None
    default = None
    stage = "call"
    after = ("compile",)
    exact = False
    call_time = True

    def choices(self):
        return [None, 10, 15, 20, 25, 30, 40, 50]

    def call_kwargs(self, value):
        return {} if value is None else {"num_inference_steps": value}

    def read(self, pipe):
        return None
