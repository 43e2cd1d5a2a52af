"""What every worker imports, imported once in the server that workers are forked from (`worker.Worker.start`).

On a small CPU, torch, diffusers and transformers take several seconds to import; a spawned worker paid that for
every trial that needed a fresh process (after compile, offload or a failure) and for every re-measured
configuration. Importing only: nothing here touches CUDA or starts a thread, so forking after it is safe.
"""

from __future__ import annotations

from .quiet import quiet_library_noise

quiet_library_noise()  # before diffusers imports torchao: the server's messages would reach the user's terminal

from . import knobs, measure, pipelines, quality, worker  # noqa: E402, F401
