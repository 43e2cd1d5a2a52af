"""A knob's domain as data: categorical values, an integer range or a float range (linear or log).

Domains serialize to plain dicts (a study records its space in JSON) and back; the search turns them into Optuna
distributions. Nothing here imports Optuna: the deployment path never pays for the tuner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Categorical:
    values: tuple

    def __contains__(self, value: Any) -> bool:
        return any(value == v and type(value) is type(v) for v in self.values)

    def __len__(self) -> int:
        return len(self.values)

    def first(self) -> Any:
        return self.values[0]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "categorical", "values": list(self.values)}


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False

    def __post_init__(self):
        if not self.low <= self.high:
            raise ValueError(f"an integer range needs low <= high, got {self.low}..{self.high}")

    def __contains__(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high

    def __len__(self) -> int:
        return self.high - self.low + 1

    def first(self) -> int:
        return self.low

    def to_dict(self) -> dict[str, Any]:
        return {"type": "int", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False

    def __post_init__(self):
        if not self.low <= self.high or (self.log and self.low <= 0):
            raise ValueError(f"a float range needs 0 < low <= high (log) or low <= high, got {self.low}..{self.high}")

    def __contains__(self, value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and self.low <= value <= self.high

    def __len__(self) -> int:
        return 1 if self.low == self.high else 2  # more than one value: worth searching

    def first(self) -> float:
        return self.low

    def to_dict(self) -> dict[str, Any]:
        return {"type": "float", "low": self.low, "high": self.high, "log": self.log}


Domain = Categorical | IntRange | FloatRange


def domain_from_dict(data: dict[str, Any] | list) -> Domain:
    """The inverse of `to_dict`; also reads the older study form (a list, or `{low, high}` for an integer range)."""
    if isinstance(data, list):
        return Categorical(tuple(data))
    kind = data.get("type", "int")
    if kind == "categorical":
        return Categorical(tuple(data["values"]))
    if kind == "int":
        return IntRange(int(data["low"]), int(data["high"]), bool(data.get("log", False)))
    if kind == "float":
        return FloatRange(float(data["low"]), float(data["high"]), bool(data.get("log", False)))
    raise ValueError(f"unknown domain type {kind!r}")


def show(value: Any) -> str:
    """A knob value as a profile's YAML writes it: `null`, `true`, `fp16`, `4`."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
