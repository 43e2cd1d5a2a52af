"""Pipeline factories for fault-injection tests. They run inside worker processes, so they live in a module.

The faults sit in the model (the UNet's forward), never in the tuner: which fault fires depends on the attention
processor the trial's settings installed.
"""

from __future__ import annotations

import os
import signal
import time

import torch
from diffusers.models.attention_processor import AttnProcessor, SlicedAttnProcessor

from autotune.knobs.attention import KernelRestrictedSDPA
from autotune.pipelines import tiny_sd_random


def faulty_tiny_sd():
    """tiny-sd whose UNet runs out of memory under vanilla attention, is SIGKILLed under sliced attention, and hangs
    under SDPA restricted to the math kernel."""
    pipe = tiny_sd_random()

    def fault(unet, args):  # the worker's copy of the UNet, with the trial's processors
        processor = next(iter(unet.attn_processors.values()))
        if type(processor) is AttnProcessor:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        if isinstance(processor, SlicedAttnProcessor):
            os.kill(os.getpid(), signal.SIGKILL)
        if isinstance(processor, KernelRestrictedSDPA) and processor.kernel == torch.nn.attention.SDPBackend.MATH:
            time.sleep(3600)

    pipe.unet.register_forward_pre_hook(fault)
    return pipe


def nan_tiny_sd():
    """tiny-sd whose VAE decodes NaN under channels-last, as an fp16 VAE overflow would."""
    pipe = tiny_sd_random()

    def poison(decoder, args, output):
        weight = next(p for p in decoder.parameters() if p.dim() == 4 and p.shape[-1] > 1)
        if weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
            return output * float("nan")
        return output

    pipe.vae.decoder.register_forward_hook(poison)
    return pipe


COUNT_FILE_ENV = "AUTOTUNE_TEST_UNET_CALLS"


def counting_tiny_sd():
    """tiny-sd whose UNet appends a line to the file named in COUNT_FILE_ENV at each step, in whatever process."""
    pipe = tiny_sd_random()

    def count(unet, args):
        with open(os.environ[COUNT_FILE_ENV], "a") as file:
            file.write("step\n")

    pipe.unet.register_forward_pre_hook(count)
    return pipe


def never_loads():
    """A model that takes an hour to load: a worker busy with it is busy computing."""
    time.sleep(3600)


PID_FILE_ENV = "AUTOTUNE_TEST_CHILD_PID"


def spawning_tiny_sd():
    """tiny-sd whose UNet starts a long-lived child process (as inductor starts its compile workers), writes its pid
    to the file named in PID_FILE_ENV, and hangs."""
    pipe = tiny_sd_random()

    def spawn_and_hang(unet, args):
        import subprocess

        child = subprocess.Popen(["sleep", "3600"])
        with open(os.environ[PID_FILE_ENV], "w") as file:
            file.write(str(child.pid))
        time.sleep(3600)

    pipe.unet.register_forward_pre_hook(spawn_and_hang)
    return pipe
