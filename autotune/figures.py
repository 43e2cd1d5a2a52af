"""Measured figures as profiles record them: a repeated measurement (`Stat`) and a speed-up with its interval
(`SpeedRatio`), each rounded to the digits its spread supports. Light, and free of the profile's schema: measuring
imports it, not the profile.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator


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
