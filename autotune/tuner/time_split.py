"""Where a search's time went: the timed calls that decide it, compilation, and everything else around them.

Everything else is the search's overhead: loading the model, starting workers, copying the pristine pipeline for
each trial, applying the knobs, the untimed warm-up call of each batch size, quality scoring, the sampler and the
storage. Compilation is counted apart (the warm-up calls of the configurations that compile), as a cost the user
pays once per process that applies the profile, not per image; so is a trial that the time limit stopped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import optuna
from optuna.trial import TrialState

from autotune.compare.candidates import Candidate
from autotune.compare.records import TrialRecord
from autotune.measure.memory_model import compiles

from .study import finished


@dataclass(frozen=True)
class TimeSplit:
    search_s: float  # the whole search, wall clock
    timed_s: float  # the timed calls: the trials' and the final re-measurement's
    compile_s: float  # the warm-up calls of configurations that compile
    trials: int  # the trials this search ran
    stopped_s: float = 0.0  # trials the time limit stopped (queued again: a resume runs them)

    @property
    def other_s(self) -> float:
        return max(0.0, self.search_s - self.timed_s - self.compile_s - self.stopped_s)

    def share(self, seconds: float) -> float:
        return seconds / self.search_s if self.search_s > 0 else 0.0

    def describe(self) -> str:
        """One line: `time: 95 s in all: timed calls 61%, compile 0%, the rest 39% ...`."""
        stopped = f", a trial the time limit stopped {self.share(self.stopped_s):.0%}" if self.stopped_s else ""
        return (f"time: {self.search_s:.0f} s in all ({self.trials} trials): timed calls "
                f"{self.share(self.timed_s):.0%}, compile {self.share(self.compile_s):.0%}{stopped}, the rest "
                f"{self.share(self.other_s):.0%} (model loading, worker starts, pipeline copies, knobs, warm-up calls, "
                "scoring, storage)")


def time_split(study: optuna.Study, since: datetime, search_s: float, candidates: Iterable[Candidate]) -> TimeSplit:
    """The split of a search that started at `since` (local time, as Optuna stamps trials) and took `search_s`: its
    trials are those started since then, on any worker; `candidates` are the ones it re-measured."""
    timed = compiled = 0.0
    ran = 0
    for trial in finished(study):
        record = TrialRecord.of(trial)
        if trial.datetime_start is None or trial.datetime_start < since or not record.seconds:
            continue
        ran += 1
        timed += record.seconds.get("timed", 0.0)
        if compiles(record.settings or record.params):
            compiled += record.seconds.get("warmup", 0.0)
    stopped = sum(record.trial_seconds for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                  if (record := TrialRecord.of(t)).stopped and t.datetime_start is not None
                  and t.datetime_start >= since)
    for candidate in {id(c): c for c in candidates}.values():
        timed += sum(candidate.latency_s)
        if compiles(candidate.settings):
            compiled += candidate.warmup_s
    return TimeSplit(search_s=search_s, timed_s=timed, compile_s=compiled, trials=ran, stopped_s=stopped)
