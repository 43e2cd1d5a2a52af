"""The knob unit and its registry.

A knob value is plain data (what a profile stores); the unit that applies it is registered once, and the loader and the
tuner iterate the registry in application order. Adding a knob is one new file in this folder, imported by
`knobs/__init__.py`; no other module changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from diffusers import DiffusionPipeline

from ..hardware import Hardware

# Application order: a knob with a lower number is applied first. Precision decides the dtype every later knob sees;
# offload must come after anything that changes the modules it hooks; compile traces the final modules, so it is last.
ORDER = {
    "process": 0,
    "precision": 10,
    "scheduler": 20,
    "attention": 30,
    "vae": 40,
    "memory_format": 50,
    "placement": 60,
    "compile": 70,
    "call": 100,
}


class Knob:
    """One tuning lever. Subclasses set the class attributes and override what applies to them.

    - `name`: the key in a profile's settings; `annotation` and `default`: its type and neutral value.
    - `exact`: True when the knob changes only speed and memory, not the image beyond numerical noise.
    - `reversible`: False when applying it leaves state that cannot be undone in place (compile, offload hooks):
      a tuner must then start the next trial from a fresh pipeline.
    - `parent`: for an option of another knob (`attention_slice_size` of `attention`), the parent's name and the
      parent values under which this option means something. The parent applies it.
    - `call_time`: the value goes into the pipeline call (`call_kwargs`), not into the pipeline's state.
    """

    name: ClassVar[str]
    help: ClassVar[str]
    annotation: ClassVar[Any]
    default: ClassVar[Any]
    stage: ClassVar[str]
    exact: ClassVar[bool] = True
    reversible: ClassVar[bool] = True
    parent: ClassVar[tuple[str, frozenset] | None] = None
    call_time: ClassVar[bool] = False

    @property
    def order(self) -> int:
        return ORDER[self.stage]

    def choices(self) -> list:
        """Every value this knob offers anywhere (for open-ended integers, the ones a search tries)."""
        raise NotImplementedError

    def unavailable(self, value: Any, hw: Hardware, pipe: DiffusionPipeline | None = None) -> str | None:
        """None when `value` can run on `hw` (and on `pipe`, when given); else a one-line reason."""
        return None

    def caveat(self, value: Any, hw: Hardware) -> str | None:
        """A note for a value that runs but is rarely a good idea on this hardware."""
        return None

    def values(self, hw: Hardware, pipe: DiffusionPipeline | None = None) -> list:
        """The domain on this hardware (and pipeline): every choice that is available."""
        return [value for value in self.choices() if self.unavailable(value, hw, pipe) is None]

    def fallback(self, value: Any, hw: Hardware, pipe: DiffusionPipeline | None = None) -> Any:
        """What the loader applies instead of an unavailable value."""
        return self.default

    def active(self, settings: Mapping[str, Any]) -> bool:
        """Whether this knob means anything under `settings` (an option only counts under its parent's values)."""
        return self.parent is None or settings.get(self.parent[0]) in self.parent[1]

    def apply(self, pipe: DiffusionPipeline, value: Any, settings: Mapping[str, Any]) -> None:
        """Put `value` on `pipe` with the public diffusers/torch call. `settings` holds this knob's options."""

    def read(self, pipe: DiffusionPipeline) -> Any:
        """The value `pipe` has now, read from its real state."""
        raise NotImplementedError

    def call_kwargs(self, value: Any) -> dict[str, Any]:
        """Keyword arguments for the pipeline call (call-time knobs only)."""
        return {}


KNOBS: dict[str, Knob] = {}


def register(cls: type[Knob]) -> type[Knob]:
    """Class decorator: make `cls` a knob of the registry."""
    if cls.name in KNOBS:
        raise ValueError(f"knob {cls.name!r} is registered twice")
    KNOBS[cls.name] = cls()
    return cls


def get(name: str) -> Knob:
    try:
        return KNOBS[name]
    except KeyError:
        raise KeyError(f"unknown knob {name!r}; known: {', '.join(KNOBS)}") from None


def in_order() -> list[Knob]:
    """Every knob in application order (registration order breaks ties, so options follow their parent)."""
    return sorted(KNOBS.values(), key=lambda knob: knob.order)


def show(value: Any) -> str:
    """A knob value as a profile's YAML writes it: `null`, `true`, `fp16`, `4`."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def call_kwargs(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Pipeline-call keyword arguments of the call-time knobs (steps, batch) in `settings`."""
    kwargs: dict[str, Any] = {}
    for knob in in_order():
        if knob.call_time:
            kwargs.update(knob.call_kwargs(settings.get(knob.name, knob.default)))
    return kwargs


def availability(hw: Hardware, pipe: DiffusionPipeline | None = None) -> list[dict[str, Any]]:
    """Every value of every knob on this hardware: available or not, why not, and any caveat."""
    rows = []
    for knob in in_order():
        for value in knob.choices():
            reason = knob.unavailable(value, hw, pipe)
            rows.append({"knob": knob.name, "value": value, "available": reason is None, "reason": reason,
                         "note": knob.caveat(value, hw) if reason is None else None})
    return rows
