"""How the report reads a study's trials: which are measured and feasible, how they rank, what each one set and why
an infeasible one failed. Every other part of the report describes trials through these functions."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial

from autotune import knobs
from autotune.compare.records import TrialRecord, feasible
from autotune.profile import Profile
from autotune.tuner.spec import recorded_spec
from autotune.units import format_size


def multi(study: optuna.Study) -> bool:
    """True for a multi-objective (Pareto) study."""
    return len(study.directions) > 1


def measured(trial: FrozenTrial) -> bool:
    """True when the trial recorded a speed and a peak memory (a failed trial did not)."""
    return TrialRecord.of(trial).measured


def objective_names(study: optuna.Study, profile: Profile | None) -> list[str]:
    """A name for each objective, for axes and legends."""
    if study.metric_names:  # what the search named them, when it did
        return list(study.metric_names)
    if not multi(study):
        spec = recorded_spec(study)
        return ["s/image" if spec and spec.objective == "latency" else "images/s"]
    return ["images/s", "peak memory (GiB)", quality_metric(study, profile) or "quality"][: len(study.directions)]


def quality_metric(study: optuna.Study, profile: Profile | None) -> str | None:
    """The quality metric the search scored (the floor's, else the first one a trial recorded), or None."""
    if profile is not None and profile.goal.quality_floor is not None:
        return profile.goal.quality_floor.metric
    recorded = next((r.quality for r in map(TrialRecord.of, study.trials) if r.quality), {})
    return next(iter(recorded), None)


def best_number(study: optuna.Study) -> int | None:
    """The best trial's number for a single-objective study; None for a Pareto study or with no feasible trial."""
    try:
        return None if multi(study) else study.best_trial.number
    except ValueError:  # no feasible trial
        return None


def ranked(study: optuna.Study, trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Feasible before infeasible; then the Pareto front first by images/s, or by the objective."""
    if multi(study):
        front = {t.number for t in study.best_trials}

        def score(t: FrozenTrial) -> tuple:
            return (t.number not in front, -(TrialRecord.of(t).images_per_s or 0.0))
    else:
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0

        def score(t: FrozenTrial) -> tuple:
            return (sign * t.value,)
    return sorted(trials, key=lambda t: (not feasible(t), *score(t), t.number))


def trial_settings(trial: FrozenTrial) -> dict[str, Any]:
    """The knob settings a trial ran with."""
    return TrialRecord.of(trial).ran_with  # at the batch the trial chose, not the one it started from


def fixed_knobs(study: optuna.Study) -> dict[str, Any]:
    """The knob values the study pinned (read once per table or plot: a spec is parsed at each read)."""
    spec = recorded_spec(study)
    return spec.fixed if spec else {}


def changed_settings(trial: FrozenTrial, fixed: dict[str, Any]) -> str:
    """The knobs a trial set away from their defaults, the study's `fixed` ones aside (they are in the summary)."""
    return knobs.show_changed({name: value for name, value in trial_settings(trial).items()
                               if name in knobs.KNOBS and name not in fixed and name != "batch_size"})


def verdict(trial: FrozenTrial) -> str:
    """The trial's verdict: "feasible", or why not (its failure, the memory overshoot, the quality floor missed)."""
    if feasible(trial):
        return "feasible"
    if failure := TrialRecord.of(trial).failure_line:
        return failure
    reasons = []
    for name, value in trial.constraints.items():
        if value <= 0:
            continue
        if name == "memory":
            reasons.append(f"over the memory budget by {format_size(value * 2**30)}")
        elif name == "quality":
            reasons.append("under the quality floor")
        else:
            reasons.append(f"{name} constraint not met")
    return "; ".join(reasons)


def quality_text(quality: dict[str, float] | None) -> str:
    """Recorded quality scores as `psnr 35.2, ssim 0.98`, or "-"."""
    return ", ".join(f"{name} {value:.4g}" for name, value in quality.items()) if quality else "-"
