"""The choices and defaults that the CLI checks before any heavy import, and the library uses: one place each.

Nothing here imports torch, diffusers or Optuna, so `autotune search --objective nope` is refused at once.
"""

from __future__ import annotations

from typing import TypeGuard

OBJECTIVES = ("throughput", "latency", "pareto")
SAMPLERS = ("tpe", "gp", "random")
# "percentile" stops growing the batch of a trial in the bottom quarter (`study.make_pruner`); "none" measures
# every trial at every batch, as a plain Optuna search would.
PRUNERS = ("percentile", "none")
# The reference rendering's step count when quality is measured (fp32, the pipeline's own scheduler).
DEFAULT_REFERENCE_STEPS = 50
# How far below a profile's recorded images/s `verify` still passes (a fraction).
DEFAULT_TOLERANCE = 0.10
# The model the CLI and the library use when none is given: built in and trained, shipped with autotune, no download.
DEFAULT_MODEL = "builtin:tiny-sd"
# What a checkpoint file is named: the original (LDM, ComfyUI, A1111) layout community models ship in.
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def is_single_file(model: object) -> TypeGuard[str]:
    """Whether `model` names one checkpoint file (a path or a hub file's URL) rather than a diffusers folder or id."""
    return isinstance(model, str) and model.lower().endswith(SINGLE_FILE_SUFFIXES)

# The environment variable that names a study's Optuna storage, for `search`, `worker` and `export`.
STORAGE_ENV = "AUTOTUNE_STORAGE"

# The exit statuses, as the README's table gives them.
EXIT_CHECK_FAILED = 1  # verify, profiles validate or profiles select found what they check for missing
EXIT_ERROR = 2  # a bad flag, value, file, profile or model, or a storage or disk that failed: one line says which
EXIT_NOTHING_FITS = 3  # no configuration (or shipped profile) meets the budget and floor here
EXIT_BUG = 70  # anything else is a bug in autotune: its traceback is printed for the report (EX_SOFTWARE)
