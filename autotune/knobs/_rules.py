"""Rules between knobs, declared by the knob they belong to: what a value requires of another knob, or excludes.

In the spirit of Pruna's `compatible_before/after`: the space never samples a combination that breaks a rule, and
`apply_profile` refuses a profile that does, with one line naming both knobs and why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._domain import show

ANY_BUT_DEFAULT = None  # a rule's `values` / `other_values` left as None: any value but that knob's default


@dataclass(frozen=True)
class Rule:
    """When this knob's value is in `values`, the knob `other` must (Requires) or must not (Excludes) have a value
    in `other_values`. None for either means "any value other than that knob's default"."""

    other: str
    reason: str
    values: frozenset | None = ANY_BUT_DEFAULT
    other_values: frozenset | None = ANY_BUT_DEFAULT

    must_hold: bool = True  # Requires: True; Excludes: False

    def broken(self, mine: Any, my_default: Any, theirs: Any, their_default: Any) -> bool:
        if not _matches(mine, self.values, my_default):
            return False
        return _matches(theirs, self.other_values, their_default) is not self.must_hold

    def describe(self, name: str, mine: Any, theirs: Any) -> str:
        verb = "needs" if self.must_hold else "excludes"
        options = sorted(self.other_values or (), key=str)
        wanted = "a non-default value" if self.other_values is None else " or ".join(map(show, options))
        what = f"{self.other} = {wanted}" if self.must_hold else f"{self.other}={show(theirs)}"
        return f"{name}={show(mine)} {verb} {what}: {self.reason}"


def Requires(other: str, reason: str, values: Iterable | None = None,  # noqa: N802 (reads as a declaration)
             other_values: Iterable | None = None) -> Rule:
    return Rule(other, reason, _frozen(values), _frozen(other_values), must_hold=True)


def Excludes(other: str, reason: str, values: Iterable | None = None,  # noqa: N802
             other_values: Iterable | None = None) -> Rule:
    return Rule(other, reason, _frozen(values), _frozen(other_values), must_hold=False)


def broken_rules(rules: Mapping[str, Iterable[Rule]], defaults: Mapping[str, Any], settings: Mapping[str, Any],
                 active: set[str]) -> list[str]:
    """Each broken rule as one line. `rules` and `defaults` are by knob name; an inactive knob counts as at its
    default, and its own rules do not apply."""
    lines = []
    for name, declared in rules.items():
        if name not in active:
            continue
        for rule in declared:
            theirs = settings.get(rule.other, defaults[rule.other]) if rule.other in active else defaults[rule.other]
            if rule.broken(settings.get(name), defaults[name], theirs, defaults[rule.other]):
                lines.append(rule.describe(name, settings.get(name), theirs))
    return lines


def _matches(value: Any, values: frozenset | None, default: Any) -> bool:
    return value != default if values is None else value in values


def _frozen(values: Iterable | None) -> frozenset | None:
    return None if values is None else frozenset(values)
