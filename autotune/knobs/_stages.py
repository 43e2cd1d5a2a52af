"""The application order, resolved from what each knob declares: its stage, the stages it follows and precedes."""

from __future__ import annotations

from collections.abc import Iterable


def resolve_stages(declared: Iterable[tuple[str, Iterable[str], Iterable[str]]]) -> dict[str, int]:
    """Stage name -> position, from `(stage, after, before)` declarations, in the order they are given.

    A stage named only in another's `after` / `before` still gets a place. Among stages free to go next, the one
    declared first goes first, so the order is stable. A cycle raises with the stages on it.

    >>> resolve_stages([("b", ["a"], []), ("a", [], [])])
    {'a': 0, 'b': 1}
    """
    stages: dict[str, None] = {}
    edges: dict[str, set[str]] = {}  # stage -> the stages that must come before it
    for stage, after, before in declared:
        for name in (stage, *after, *before):
            stages.setdefault(name)
            edges.setdefault(name, set())
        edges[stage].update(after)
        for later in before:
            edges[later].add(stage)
    order: dict[str, int] = {}
    while len(order) < len(stages):
        ready = next((s for s in stages if s not in order and edges[s] <= order.keys()), None)
        if ready is None:
            stuck = sorted(s for s in stages if s not in order)
            raise ValueError(f"the knobs' stage order has a cycle among: {', '.join(stuck)}")
        order[ready] = len(order)
    return order
