"""Every knob, registered in application order. Importing this package imports each knob module once."""

from __future__ import annotations

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
from .base import KNOBS, ORDER, Knob, availability, call_kwargs, get, in_order, register, show

__all__ = ["KNOBS", "ORDER", "Knob", "availability", "call_kwargs", "get", "in_order", "register", "show"]
