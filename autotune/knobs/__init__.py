"""Every knob: the ones in this folder, then those other packages declare as `autotune.knobs` entry points.

An entry point names a module (importing it registers its knobs with `@register`) or a `Knob` subclass (registered
here). Importing this package loads each once and checks that every rule names a known knob.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from . import (
    attention,  # noqa: F401
    batch,  # noqa: F401
    compile,  # noqa: F401
    memory_format,  # noqa: F401
    placement,  # noqa: F401
    precision,  # noqa: F401
    process,  # noqa: F401  (registration order inside a stage matters: options follow their parent)
    scheduler,  # noqa: F401
    vae,  # noqa: F401
)
from .base import (
    KNOBS,
    STAGE_ORDER,
    Knob,
    availability,
    call_kwargs,
    defaults,
    domains,
    get,
    in_order,
    load_kwargs,
    register,
    show,
    violations,
)
from .domain import Categorical, Domain, FloatRange, IntRange, domain_from_dict
from .rules import Excludes, Requires, Rule

ENTRY_POINT_GROUP = "autotune.knobs"


def _load_entry_points() -> None:
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        loaded = entry.load()
        if isinstance(loaded, type) and issubclass(loaded, Knob) and loaded.name not in KNOBS:
            register(loaded)


def _check_rules() -> None:
    for knob in KNOBS.values():
        for rule in knob.rules:
            if rule.other not in KNOBS:
                raise ValueError(f"knob {knob.name!r} has a rule about {rule.other!r}, which is no registered knob")


_load_entry_points()
_check_rules()

__all__ = [
    "ENTRY_POINT_GROUP", "KNOBS", "STAGE_ORDER", "Categorical", "Domain", "Excludes", "FloatRange", "IntRange",
    "Knob", "Requires", "Rule", "availability", "call_kwargs", "defaults", "domain_from_dict", "domains", "get",
    "in_order", "load_kwargs", "register", "show", "violations",
]
