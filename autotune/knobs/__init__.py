"""Every knob: each module of this folder, then those other packages declare as `autotune.knobs` entry points.

A knob module, named after its knob, registers it (and its options) with `@register` when imported; every module
here whose name does not start with `_` (the contract: `_base`, `_domain`, `_rules`, `_stages`, and helpers) is
imported, in name order, so a new knob is one new file. An entry point names a module (imported the same way) or a
`Knob` subclass (registered here). Importing this package loads each once and checks that every rule names a known
knob.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from ._base import (
    AS_LOADED,
    KNOBS,
    STAGE_ORDER,
    Knob,
    apply_process_state,
    availability,
    call_kwargs,
    defaults,
    domains,
    get,
    images_depend_on_batch,
    in_order,
    load_kwargs,
    register,
    show,
    show_changed,
    violations,
    with_requirements,
)
from ._domain import Categorical, Domain, FloatRange, IntRange, domain_from_dict
from ._rules import Excludes, Requires, Rule

ENTRY_POINT_GROUP = "autotune.knobs"


def _load_own_modules() -> None:
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if not module.startswith("_"):  # the contract (_base, _domain, _rules, _stages) and its helpers
            importlib.import_module(f"{__name__}.{module}")


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


_load_own_modules()
_load_entry_points()
_check_rules()

__all__ = [
    "AS_LOADED", "ENTRY_POINT_GROUP", "KNOBS", "STAGE_ORDER", "Categorical", "Domain", "Excludes", "FloatRange",
    "IntRange", "Knob", "Requires", "Rule", "apply_process_state", "availability", "call_kwargs", "defaults",
    "domain_from_dict", "domains", "get", "images_depend_on_batch", "in_order", "load_kwargs", "register", "show",
    "show_changed", "violations", "with_requirements",
]
