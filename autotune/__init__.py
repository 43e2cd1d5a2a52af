"""autotune: find the fastest diffusers inference configuration for this machine, and apply it.

>>> from autotune import load_pipeline
>>> pipe = load_pipeline("builtin:tiny-sd", "tiny-sd-cpu")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .apply import apply_profile, load_pipeline
from .exceptions import AutotuneError, IncompatibleProfile, NothingFits, ProfileError
from .hardware import probe
from .profile import Profile, load_profile

if TYPE_CHECKING:
    from .search import search

__version__ = "0.1.0"
__all__ = [
    "AutotuneError",
    "IncompatibleProfile",
    "NothingFits",
    "Profile",
    "ProfileError",
    "apply_profile",
    "load_pipeline",
    "load_profile",
    "probe",
    "search",
]


def __getattr__(name: str):
    # The tuner imports Optuna; an app that only applies profiles never pays for it.
    if name == "search":
        from .search import search

        return search
    raise AttributeError(f"module 'autotune' has no attribute {name!r}")
