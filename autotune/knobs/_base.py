"""The knob contract and its registry.

A knob declares, in its own file, everything the rest of the package needs: its values and their domain on given
hardware and pipeline, why a value is unavailable, its stage in the application order (with the stages it follows
and precedes), what it requires of and excludes with other knobs, whether it is exact, reversible or call-time, and
how to read its value back from a pipeline's real state. The loader and the tuner iterate the registry; adding a
knob is one new file in this folder or one `autotune.knobs` entry point, and no other module changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from diffusers import DiffusionPipeline

from autotune.exceptions import UnknownKnob
from autotune.hardware import Hardware

from ._domain import Categorical, Domain, show  # noqa: F401  (show: re-exported)
from ._rules import Rule, broken_rules
from ._stages import resolve_stages


class Knob:
    """One tuning lever. Subclasses set the class attributes and override what applies to them.

    - `name`: the key in a profile's settings; `annotation` and `default`: its type and neutral value.
    - `stage`: where it goes in the application order; `after` / `before`: the stages this stage must follow and
      precede (declared once by any knob of the stage; the registry resolves them into one order).
    - `exact`: True when the knob changes only speed and memory, not the image beyond numerical noise.
    - `guarded`: for an inexact knob, True when the worker's NaN / black-image check catches how it fails, so a
      search tries it without a quality floor (precision: fp16 overflow decodes black images).
    - `reversible`: False when applying it leaves state that cannot be undone in place (compile, offload hooks):
      a tuner must then start the next trial from a fresh pipeline.
    - `parent`: for an option of another knob (`attention_slice_size` of `attention`), the parent's name and the
      parent values under which this option means something. The parent applies it.
    - `call_time`: the value goes into the pipeline call (`call_kwargs`), not into the pipeline's state.
    - `rules`: what this knob's values require of other knobs or exclude (`Requires`, `Excludes`).
    - `lossy`: values of an exact knob that change the image beyond numerical noise (SageAttention's int8 attention):
      a search offers them only when it measures quality, like an inexact knob.
    - `batch_dependent`: values whose images depend on the batch they are rendered in (First Block Cache decides
      whether to skip from the whole batch's residual): a trial scores each batch it times, not only the first.
    """

    name: ClassVar[str]
    help: ClassVar[str]
    annotation: ClassVar[Any]
    default: ClassVar[Any]
    stage: ClassVar[str]
    after: ClassVar[tuple[str, ...]] = ()
    before: ClassVar[tuple[str, ...]] = ()
    exact: ClassVar[bool] = True
    guarded: ClassVar[bool] = False
    reversible: ClassVar[bool] = True
    parent: ClassVar[tuple[str, frozenset] | None] = None
    call_time: ClassVar[bool] = False
    rules: ClassVar[tuple[Rule, ...]] = ()
    lossy: ClassVar[frozenset] = frozenset()
    batch_dependent: ClassVar[frozenset] = frozenset()

    @property
    def order(self) -> int:
        return STAGE_ORDER[self.stage]

    def choices(self) -> list:
        """Every value this knob offers anywhere (for open-ended numbers, the ones a probe lists and a search tries)."""
        raise NotImplementedError

    def unavailable(self, value: Any, hw: Hardware, pipe: DiffusionPipeline | None = None) -> str | None:
        """None when `value` can run on `hw` (and on `pipe`, when given); else a one-line reason."""
        return None

    def caveat(self, value: Any, hw: Hardware) -> str | None:
        """A note for a value that runs but is rarely a good idea on this hardware."""
        return None

    def values(self, hw: Hardware, pipe: DiffusionPipeline | None = None) -> list:
        """The choices available on this hardware (and pipeline)."""
        return [value for value in self.choices() if self.unavailable(value, hw, pipe) is None]

    def domain(self, hw: Hardware, pipe: DiffusionPipeline | None = None) -> Domain:
        """What a search samples on this hardware and pipeline. A knob with a number range overrides this."""
        return Categorical(tuple(self.values(hw, pipe)))

    def fallback(self, value: Any, hw: Hardware, pipe: DiffusionPipeline | None = None) -> Any:
        """What the loader applies instead of an unavailable value."""
        return self.default

    def active(self, settings: Mapping[str, Any]) -> bool:
        """Whether this knob means anything under `settings` (an option only counts under its parent's values)."""
        return self.parent is None or settings.get(self.parent[0]) in self.parent[1]

    def apply(self, pipe: DiffusionPipeline, value: Any, settings: Mapping[str, Any], hw: Hardware) -> None:
        """Put `value` on `pipe` with the public diffusers/torch call, for the hardware `hw` names (a CPU search on a
        GPU host stays on the CPU). `settings` holds this knob's options."""

    def apply_process(self, value: Any, hw: Hardware) -> None:
        """The part of `apply` that holds for the whole process rather than the pipeline (torch's global flags:
        threads, cuDNN benchmark, TF32). `apply` calls it; a process that keeps several configured pipelines calls
        it again (`apply_process_state`) before timing each, since the last one applied would otherwise hold for
        all."""

    def read(self, pipe: DiffusionPipeline) -> Any:
        """The value `pipe` has now, read from its real state."""
        raise NotImplementedError

    def reads_as(self, value: Any, pipe: DiffusionPipeline) -> Any:
        """What `read` must give once `value` is applied to `pipe`: the value itself, the concrete form the pipeline
        keeps of it (`auto` slices as a head count), or `AS_LOADED` for a value that leaves the pipeline as it was
        loaded (the pipeline's own scheduler). The contract test holds every knob to it."""
        return value

    def call_kwargs(self, value: Any) -> dict[str, Any]:
        """Keyword arguments for the pipeline call (call-time knobs only)."""
        return {}

    def load_kwargs(self, value: Any) -> dict[str, Any]:
        """Keyword arguments for `from_pretrained` that avoid loading the weights twice (precision's `dtype`)."""
        return {}


AS_LOADED = "<as loaded>"  # `reads_as`: whatever a freshly loaded pipeline reads as

KNOBS: dict[str, Knob] = {}
# Stage name -> its position, resolved from the knobs' `after` / `before` whenever a knob registers.
STAGE_ORDER: dict[str, int] = {}


def register(cls: type[Knob]) -> type[Knob]:
    """Class decorator: make `cls` a knob of the registry (also for knobs of other packages)."""
    if cls.name in KNOBS:
        raise ValueError(f"knob {cls.name!r} is registered twice")
    knobs = {**KNOBS, cls.name: cls()}
    STAGE_ORDER.clear()
    STAGE_ORDER.update(resolve_stages([(k.stage, k.after, k.before) for k in knobs.values()]))
    KNOBS[cls.name] = knobs[cls.name]
    return cls


def get(name: str) -> Knob:
    try:
        return KNOBS[name]
    except KeyError:
        raise UnknownKnob(f"unknown knob {name!r}; known: {', '.join(KNOBS)}") from None


def value_of(settings: Mapping[str, Any], name: str) -> Any:
    """The value `settings` gives the knob `name`, or that knob's default: a knob reads its options this way, so each
    default is written once, by its own knob."""
    return settings.get(name, get(name).default)


def in_order() -> list[Knob]:
    """Every knob in application order (registration order breaks ties, so options follow their parent)."""
    return sorted(KNOBS.values(), key=lambda knob: knob.order)


def defaults() -> dict[str, Any]:
    """Every knob at its neutral value: the configuration a pipeline has as loaded."""
    return {knob.name: knob.default for knob in in_order()}


def show_changed(settings: Mapping[str, Any]) -> str:
    """The settings that differ from their knob's default, as `precision=bf16, batch_size=8`; `defaults` if none."""
    return ", ".join(f"{name}={show(value)}" for name, value in settings.items()
                     if value != get(name).default) or "defaults"


def call_kwargs(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Pipeline-call keyword arguments of the call-time knobs (steps, batch) in `settings`."""
    kwargs: dict[str, Any] = {}
    for knob in in_order():
        if knob.call_time:
            kwargs.update(knob.call_kwargs(settings.get(knob.name, knob.default)))
    return kwargs


def images_depend_on_batch(settings: Mapping[str, Any]) -> bool:
    """Whether an image rendered with `settings` depends on the other images of its batch (`Knob.batch_dependent`)."""
    return any(knob.active(settings) and settings.get(knob.name) in knob.batch_dependent for knob in in_order())


def load_kwargs(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`from_pretrained` keyword arguments the knobs in `settings` ask for (precision's dtype)."""
    kwargs: dict[str, Any] = {}
    for knob in in_order():
        kwargs.update(knob.load_kwargs(settings.get(knob.name, knob.default)))
    return kwargs


def apply_process_state(settings: Mapping[str, Any], hw: Hardware) -> None:
    """Put the process-wide part of `settings` (every knob's `apply_process`) back on this process."""
    for knob in in_order():
        knob.apply_process(settings.get(knob.name, knob.default), hw)


def with_requirements(settings: Mapping[str, Any], hw: Hardware,
                      pipe: DiffusionPipeline | None = None) -> dict[str, Any] | None:
    """`settings` with what their values require of other knobs filled in (the first available value of each
    required knob: `attention=sdpa-flash` gets `precision=fp16`), when the settings leave that knob out; None when a
    requirement cannot be met here or a rule still breaks."""
    filled = dict(settings)
    neutral = defaults()
    for _ in range(len(KNOBS)):  # a filled value may bring a requirement of its own
        effective = {**neutral, **filled}
        missing = [(rule, knob) for knob in in_order() if knob.active(effective) for rule in knob.rules
                   if rule.must_hold and rule.other not in filled and rule.other_values is not None
                   and rule.broken(effective[knob.name], knob.default, effective[rule.other], neutral[rule.other])]
        if not missing:
            return filled if not violations(filled) else None
        rule, _knob = missing[0]
        other = get(rule.other)
        value = next((v for v in other.values(hw, pipe) if v in rule.other_values), None)
        if value is None:
            return None
        filled[rule.other] = value
    return None


def violations(settings: Mapping[str, Any]) -> list[str]:
    """Every rule between knobs that `settings` breaks, each a line naming both knobs; [] when all hold."""
    neutral = defaults()
    effective = {**neutral, **settings}
    active = {knob.name for knob in in_order() if knob.active(effective)}
    return broken_rules({knob.name: knob.rules for knob in in_order()}, neutral, effective, active)


def availability(hw: Hardware, pipe: DiffusionPipeline | None = None) -> list[dict[str, Any]]:
    """Every value of every knob on this hardware: available or not, why not, and any caveat."""
    rows = []
    for knob in in_order():
        for value in knob.choices():
            reason = knob.unavailable(value, hw, pipe)
            rows.append({"knob": knob.name, "value": value, "available": reason is None, "reason": reason,
                         "note": knob.caveat(value, hw) if reason is None else None})
    return rows


def domains(hw: Hardware, pipe: DiffusionPipeline | None = None) -> dict[str, Domain]:
    """Every knob's domain on this hardware and pipeline (what a search may sample)."""
    return {knob.name: knob.domain(hw, pipe) for knob in in_order()}
