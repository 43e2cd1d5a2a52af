"""Measured figures as profiles record them: a repeated measurement (`Stat`) and a speed-up with its interval
(`SpeedRatio`), each rounded to the digits its spread supports, and what a profile's configuration measured
(`Metrics`: its rates, memory, quality, and each knob's worth, `KnobEffect`; `SizeSettings` at its other sizes).
Light, and free of the rest of the profile's schema: measuring imports it, not the profile.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from .comparison import Ratio


class Stat(BaseModel):
    """A repeated measurement: its median, coefficient of variation and sample count."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    median: float = Field(ge=0)
    """The median of the runs."""
    cv: float = Field(ge=0)
    """The coefficient of variation (standard deviation over mean) of the runs."""
    n: PositiveInt
    """How many runs."""

    @model_validator(mode="before")
    @classmethod
    def _rounded(cls, data: Any) -> Any:
        """Rounded to what the spread supports: 3 significant digits (4 under a 1% spread), the spread to 3."""
        if isinstance(data, dict) and finite_number(data.get("median")) and finite_number(data.get("cv")):
            data = {**data, "median": significant(data["median"], 3 if data["cv"] >= 0.01 else 4),
                    "cv": significant(data["cv"], 3)}
        return data


class SpeedRatio(BaseModel):
    """images/s over the default configuration's, measured in the same interleaved rounds: the ratio of the medians
    and its bootstrap interval (`comparison.ratio_of_medians`). An interval that spans 1 is no claim of a speed-up."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    median: float = Field(gt=0)
    """The ratio of the medians."""
    low: float = Field(ge=0)
    """The interval's lower end."""
    high: float = Field(ge=0)
    """The interval's upper end."""
    confidence: float = Field(gt=0, lt=1)
    """The interval's confidence (a percentile bootstrap)."""
    others_cpu_share: float | None = Field(default=None, ge=0, le=1)
    """The share of all cores other processes used meanwhile; above a quarter nothing is claimed."""

    @model_validator(mode="before")
    @classmethod
    def _rounded(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {**data, **{key: significant(data[key], 3) for key in ("median", "low", "high")
                               if finite_number(data.get(key))}}
        return data


def significant(value: float, digits: int) -> float:
    """`value` to `digits` significant digits: 21.36352656 -> 21.4 (3 digits).

    >>> significant(21.36352656, 3), significant(0.0012345, 2), significant(0.0, 3)
    (21.4, 0.0012, 0.0)
    """
    return float(f"{value:.{digits}g}")


def finite_number(value: object) -> bool:
    """A real number, not a bool, NaN or infinity (YAML reads `.nan` and `true` as numbers' kin)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class KnobEffect(_Record):
    """One knob the chosen configuration changes, put back to the default configuration's value (with its options)
    and re-measured beside the chosen configuration, interleaved: what keeping that knob is worth here. `note` says
    why it was not measured (another chosen knob needs it; the time limit; it failed)."""

    knob: str
    """The knob's name, as in `settings`."""
    value: Any
    """The chosen configuration's value."""
    default: Any
    """The default configuration's value, which it was put back to."""
    speedup: SpeedRatio | None = None
    """The chosen configuration's images/s over its images/s without this knob, with its interval."""
    peak_memory_bytes: PositiveInt | None = None
    """The peak memory without this knob."""
    quality: dict[str, float] = Field(default_factory=dict)
    """The worst prompt's scores without this knob (under a quality floor)."""
    note: str | None = None
    """Why it was not measured."""

    def shown_speedup(self) -> str:
        """`1.84x (1.70-1.99x)`, `cannot tell (0.91-1.12x)`, or why it has no figure."""
        return Ratio(**self.speedup.model_dump()).show() if self.speedup is not None else self.note or "not measured"


class Metrics(_Record):
    """The re-measured numbers; a video pipeline's `images_per_s` counts videos, and `frames_per_s` their frames.

    `measured_in` says where they come from: the final interleaved re-measurement, or, when the time limit stopped
    that before it timed this configuration, the search's own trial of it (then nothing is compared with the
    default). `others_cpu_share` is the share of all cores other processes used meanwhile: above
    `measure.host_load.BUSY_SHARE` the figures were measured on a busy machine and should be re-measured on a quiet one
    before the profile ships."""

    images_per_s: Stat | None = None
    """Images (or videos) per second at the profile's batch."""
    frames_per_s: Stat | None = None
    """A video pipeline's frames per second."""
    vs_default: SpeedRatio | None = None
    """images/s over the default configuration's, measured in the same interleaved rounds."""
    latency_s: Stat | None = None
    """Seconds per pipeline call."""
    peak_memory_bytes: PositiveInt | None = None
    """The peak memory of a call: the GPU's allocator peak, or the process's resident memory on a CPU."""
    quality: dict[str, float] = Field(default_factory=dict)
    """The worst prompt's scores against the reference (`prompt`: the share of prompts drawn right)."""
    quality_by_prompt: dict[str, list[float]] = Field(default_factory=dict)
    """Each prompt's scores, in the workload's prompt order."""
    warmup_s: float | None = Field(default=None, ge=0)
    """Seconds of the first calls (compiles included) before the timed ones."""
    measured_in: Literal["re-measurement", "trial"] = "re-measurement"
    """Where the figures come from: the final re-measurement, or the search's trial when time ran out first."""
    others_cpu_share: float | None = Field(default=None, ge=0, le=1)
    """The share of all cores other processes used while it was measured."""
    ablation: list[KnobEffect] = Field(default_factory=list)
    """What each knob the configuration changes is worth, measured beside it; empty when not measured."""


class SizeSettings(_Record):
    """One of the workload's other sizes (`workload.other_sizes`): the batch its trial chose there, under the same
    budget, and what that batch measured in the trial (the re-measurement times the workload's own size only)."""

    height: PositiveInt
    """Image height in pixels."""
    width: PositiveInt
    """Image width in pixels."""
    batch_size: PositiveInt
    """The batch its trial chose at this size."""
    images_per_s: float | None = Field(default=None, ge=0)
    """What that batch measured in the trial."""
    peak_memory_bytes: PositiveInt | None = None
    """Its peak memory in the trial."""
