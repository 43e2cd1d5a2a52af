"""What a trial records in the study, written and read in one place.

Optuna keeps a trial's parameters typed and leaves the rest to `user_attrs`, a JSON dict per trial. Every result a
trial writes there (its speed, peak memory, chosen batch, quality, failure, the seconds it spent) is a field of
`TrialRecord`: `TrialRecord.write(trial, images_per_s=...)` refuses a name that is not one, and `TrialRecord.of(trial)`
reads them back typed, so no other module spells a key. Optuna-free: it reads any object with `user_attrs`,
`params`, `constraints` and `number` (a live or a frozen trial), as the re-measurement and `bench/` do.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from autotune.measure.figures import Stat


@dataclass(frozen=True)
class TrialRecord:
    """A trial's results, as recorded (a missing one is None, or empty)."""

    number: int
    params: dict[str, Any] = field(default_factory=dict)  # what the sampler suggested (Optuna's own record)
    constraints: dict[str, float] = field(default_factory=dict)  # Optuna's convention: a value <= 0 is met
    settings: dict[str, Any] | None = None  # every knob's value the trial ran with
    batch_size: int | None = None  # the batch it chose (not the one it started from)
    images_per_s: float | None = None
    seconds_per_image: float | None = None
    peak_memory_bytes: int | None = None
    predicted_peak_bytes: int | None = None  # the memory model's prediction before it ran
    prediction_trials: int | None = None  # how many trials the memory model had learnt from
    warmup_s: float | None = None
    batches: list[dict[str, Any]] = field(default_factory=list)  # each batch size tried: its figures
    sizes: list[dict[str, Any]] = field(default_factory=list)  # the other image sizes of a several-size search
    pruned_at_batch: int | None = None
    quality: dict[str, float] = field(default_factory=dict)  # the worst prompt's scores (a share for `prompt`)
    quality_by_prompt: dict[str, list[float]] = field(default_factory=dict)
    calibration: list[list[float]] = field(default_factory=list)  # (threshold, score) per calibration render
    failure: str | None = None  # the kind: oom, crash, timeout, image, quality, ...
    reason: str | None = None  # its one line
    seconds: dict[str, float] = field(default_factory=dict)  # where the trial's time went; "trial": all of it
    stopped: str | None = None  # what stopped it ("time limit")
    worker: str | None = None  # host:pid of the worker process that ran it
    recipe: str | None = None  # the seed recipe it was queued as (the default configuration, a published one)
    retry_of: int | None = None  # the abandoned trial it runs again

    @classmethod
    def of(cls, trial: Any) -> TrialRecord:
        """The record of `trial` (an `optuna.Trial` or `FrozenTrial`)."""
        attrs = trial.user_attrs
        recorded = {f.name: attrs[f.name] for f in fields(cls) if f.name in attrs and attrs[f.name] is not None}
        return cls(number=trial.number, params=dict(trial.params),
                   constraints=dict(getattr(trial, "constraints", None) or {}), **recorded)

    @classmethod
    def write(cls, trial: Any, **results: Any) -> None:
        """Record `results` on `trial`; each name must be a field of the record (a typo fails here, not in a reader)."""
        unknown = (set(results) - {f.name for f in fields(cls)}) | (set(results) & {"number", "params", "constraints"})
        if unknown:
            raise TypeError(f"not a trial record's field: {', '.join(sorted(unknown))}")
        for name, value in results.items():
            trial.set_user_attr(name, value)

    @property
    def measured(self) -> bool:
        """Whether it recorded a speed and a peak memory (a failed trial did not)."""
        return self.images_per_s is not None and self.peak_memory_bytes is not None

    @property
    def ran_with(self) -> dict[str, Any]:
        """The knob settings it ran with, at the batch it chose."""
        settings = dict(self.settings or self.params)
        if self.batch_size is not None:
            settings["batch_size"] = self.batch_size
        return settings

    @property
    def rate(self) -> Stat | None:
        """The images/s it measured at the batch it chose, with the spread its batch's record keeps."""
        for batch in self.batches:
            if batch.get("batch_size") == self.batch_size and batch.get("images_per_s"):
                return Stat(**batch["images_per_s"])
        return None

    @property
    def failure_line(self) -> str | None:
        """"kind: reason" for a trial that failed, else None."""
        if not self.failure:
            return None
        return f"{self.failure}: {self.reason or ''}".rstrip(": ")

    @property
    def trial_seconds(self) -> float:
        return float(self.seconds.get("trial", 0.0))


def feasible(trial: Any) -> bool:
    """Optuna's convention, which the search follows: every constraint value <= 0 is met."""
    return all(value <= 0 for value in (getattr(trial, "constraints", None) or {}).values())
