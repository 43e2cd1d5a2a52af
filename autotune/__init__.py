"""autotune: find the fastest diffusers inference configuration for this machine, and apply it.

>>> from autotune import load_pipeline
>>> pipe = load_pipeline("builtin:tiny-sd", "tiny-sd-cpu")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autotune.profile import Profile, load_profile
    from autotune.profile.library import select_profile
    from autotune.tuner.outcome import SearchOutcome
    from autotune.tuner.run import run_search, search

    from .apply import apply_profile, load_pipeline
    from .exceptions import (
        AutotuneError,
        AutotuneWarning,
        FallbackWarning,
        IncompatibleProfile,
        NoProfileFits,
        NothingFits,
        ProfileError,
        ProfileMismatchWarning,
    )
    from .hardware import probe
    from .recommendation import recommend

__version__ = "0.1.0"

# Public name -> the module that defines it. Imported on first use: `import autotune` stays light, an app that only
# applies profiles never loads the tuner (Optuna), and the CLI can quiet library warnings before torch loads.
_EXPORTS = {
    "apply_profile": "apply",
    "load_pipeline": "apply",
    "AutotuneError": "exceptions",
    "AutotuneWarning": "exceptions",
    "FallbackWarning": "exceptions",
    "ProfileMismatchWarning": "exceptions",
    "IncompatibleProfile": "exceptions",
    "NoProfileFits": "exceptions",
    "NothingFits": "exceptions",
    "ProfileError": "exceptions",
    "probe": "hardware",
    "Profile": "profile",
    "load_profile": "profile",
    "recommend": "recommendation",
    "search": "tuner.run",
    "run_search": "tuner.run",
    "SearchOutcome": "tuner.outcome",
    "select_profile": "profile.library",
}
__all__ = [
    "AutotuneError",
    "AutotuneWarning",
    "FallbackWarning",
    "IncompatibleProfile",
    "NoProfileFits",
    "NothingFits",
    "Profile",
    "ProfileError",
    "ProfileMismatchWarning",
    "SearchOutcome",
    "apply_profile",
    "load_pipeline",
    "load_profile",
    "probe",
    "recommend",
    "run_search",
    "search",
    "select_profile",
]


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'autotune' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
