"""The report's three plots, drawn by Optuna's visualization module (plotly): speed against memory (or the Pareto
front), which knobs mattered, and the optimization history. Each returns an HTML fragment without plotly.js, which
the page holds once."""

from __future__ import annotations

import html
import math
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from autotune.compare.records import TrialRecord
from autotune.profile import Profile

from .page import note
from .trials import best_number, changed_settings, feasible, fixed_knobs, measured, multi, quality_metric, verdict

_PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def _figure(make: Callable[[], Any], anchor: str, empty: str, height: int = 440) -> str:
    # Optuna warns about small studies on stderr; the page says what matters instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        figure = make()
    if not figure.data:
        return note(empty)
    figure.update_layout(height=height, margin={"t": 50, "b": 40})
    return figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{anchor}", config=_PLOT_CONFIG)


def tradeoff_plot(study: optuna.Study, trials: list[FrozenTrial], names: list[str], profile: Profile | None) -> str:
    """The Pareto front of a multi-objective study, else each measured trial's images/s against its peak memory."""
    from optuna.visualization import plot_pareto_front

    failed = Counter(TrialRecord.of(t).failure or "no measurement" for t in trials if not measured(t))
    caption = note("Not plotted, failed: " + ", ".join(f"{kind} x{n}" for kind, n in failed.items())) if failed else ""
    if multi(study):
        def make():
            return plot_pareto_front(study, target_names=names,
                                     constraints_func=lambda t: [max(t.constraints.values(), default=0.0)])
    else:
        def make():
            return _speed_memory_scatter(study, [t for t in trials if measured(t)], profile)
    height = 640 if len(study.directions) == 3 else 440  # a 3-D plot needs the room
    return _figure(make, "tradeoff", "No trial has been measured yet.", height) + caption


def _speed_memory_scatter(study: optuna.Study, trials: list[FrozenTrial], profile: Profile | None):
    """Every measured trial: peak memory against images/s, infeasible ones grey, the best one a star."""
    import plotly.graph_objects as go

    metric = quality_metric(study, profile)
    figure = go.Figure()
    best = best_number(study)
    fixed = fixed_knobs(study)
    for label, members, style in (
        ("feasible", [t for t in trials if feasible(t)], {"color": "#1f77b4"}),
        ("infeasible", [t for t in trials if not feasible(t)], {"color": "#bbbbbb"}),
        ("best", [t for t in trials if t.number == best], {"color": "#d62728", "symbol": "star", "size": 16}),
    ):
        if not members:
            continue
        marker = {"size": 10, **style}
        records = [TrialRecord.of(t) for t in members]
        if metric and label == "feasible" and any(metric in r.quality for r in records):
            marker |= {"color": [r.quality.get(metric, math.nan) for r in records],
                       "colorscale": "Viridis", "colorbar": {"title": {"text": metric}}, "showscale": True}
        figure.add_trace(go.Scatter(
            x=[r.peak_memory_bytes / 2**30 for r in records],
            y=[r.images_per_s for r in records],
            mode="markers", name=label, marker=marker,
            text=[f"trial {t.number}<br>{html.escape(changed_settings(t, fixed))}<br>{html.escape(verdict(t))}"
                  for t in members],
            hovertemplate="%{text}<br>%{y:.3g} images/s, %{x:.3g} GiB<extra></extra>",
        ))
    if profile is not None and profile.goal.memory_budget_bytes:
        figure.add_vline(x=profile.goal.memory_budget_bytes / 2**30, line_dash="dash", line_color="#d62728",
                         annotation_text="budget")
    figure.update_layout(title={"text": "Each trial: images/s against peak memory"},
                         xaxis_title="peak memory (GiB)", yaxis_title="images/s")
    return figure


def importances_plot(study: optuna.Study, trials: list[FrozenTrial], names: list[str]) -> str:
    """Optuna's parameter importances, or a note when there are too few trials for them to mean anything."""
    from optuna.importance import get_param_importances
    from optuna.visualization import plot_param_importances

    too_few = note(f"Too few completed trials ({len(trials)}) to tell which knobs mattered; run more trials.")
    # Multi-objective: Optuna rates each objective; the check below looks at the first (speed).
    target = (lambda t: t.values[0]) if multi(study) else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = get_param_importances(study, target=target)
    except (ValueError, RuntimeError):  # no completed trial, or no parameter that varied
        return too_few
    # With too few trials Optuna rates every knob alike: that says nothing, so the page says so instead.
    if len(set(importances.values())) <= 1:
        return too_few
    if not multi(study):
        return _figure(lambda: plot_param_importances(study, target_name=names[0]), "importances",
                       "No knob varied between trials.")

    def make():
        figure = plot_param_importances(study)
        # Without metric names Optuna labels the objectives by index.
        labels = {f"Objective Value {i}": name for i, name in enumerate(names)}
        return figure.for_each_trace(lambda trace: trace.update(name=labels.get(trace.name, trace.name)))
    return _figure(make, "importances", "No knob varied between trials.")


def history_plot(study: optuna.Study, names: list[str]) -> str:
    """Optuna's optimization history (of the first objective, for a multi-objective study)."""
    from optuna.visualization import plot_optimization_history

    if multi(study):
        def make():
            return plot_optimization_history(study, target=lambda t: t.values[0], target_name=names[0])
    else:
        def make():
            return plot_optimization_history(study, target_name=names[0])
    return _figure(make, "history", "No completed trial yet.")
