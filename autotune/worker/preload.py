"""What every CPU worker imports, imported once in the server that CPU workers are forked from
(`worker.server.worker_context`).

On a small CPU, torch, diffusers and transformers take several seconds to import; a spawned worker paid that for
every trial that needed a fresh process (after compile, offload or a failure) and for every re-measured
configuration. These imports are not CUDA-safe to fork from: diffusers imports torchao, and torchao's import
initialises CUDA where there is a GPU (its float8 utilities ask `torch.cuda.is_available()`, its mx_formats kernels
`torch.cuda.current_device()`), after which no forked child can use CUDA. CUDA workers are therefore spawned.
"""

from __future__ import annotations

from autotune.quiet import quiet_library_noise

quiet_library_noise()  # before diffusers imports torchao: the server's messages would reach the user's terminal

from autotune import knobs, pipelines  # noqa: E402, F401
from autotune.measure import quality, timing  # noqa: E402, F401

from . import process  # noqa: E402, F401
