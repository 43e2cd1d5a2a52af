"""The end of a search: re-measure the study's best configurations beside the default one, and write the profile.

Shared by a one-process search (`run.run_search`) and by `autotune export` of a study that workers filled.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from autotune import __version__, knobs, pipelines
from autotune.compare.ablation import ablations, measure_ablation
from autotune.compare.candidates import (
    Candidate,
    choose_picks,
    pareto_candidates,
    pareto_front,
    save_images,
    top_candidates,
)
from autotune.compare.records import TrialRecord, feasible
from autotune.compare.remeasure import remeasure
from autotune.compare.scoring import Scoring
from autotune.exceptions import CannotWrite, NothingFits
from autotune.hardware import Fingerprint
from autotune.measure.comparison import Ratio
from autotune.measure.figures import KnobEffect, Metrics, SizeSettings, SpeedRatio
from autotune.measure.host_load import BUSY_SHARE, others_share
from autotune.profile import (
    Goal,
    ModelInfo,
    Profile,
    ProfileSet,
    Provenance,
    now,
)
from autotune.units import format_size
from autotune.worker.process import Worker, WorkerConfig
from autotune.workload import Workload

from .space import REFERENCE_RECIPE
from .spec import Events, StudySpec, scoring_for
from .storages import redact
from .study import finished
from .time_split import TimeSplit

# A leader whose trial peaked above this share of the memory budget may not fit when re-measured: keep fallbacks.
NEAR_BUDGET = 0.8


@dataclass
class SearchOutcome:
    profile: Profile  # with --objective pareto, the `balanced` pick of `profile_set`
    baseline: Candidate
    best: Candidate
    candidates: list[Candidate]
    study_name: str
    storage: str
    trials: int
    profile_path: Path | None = None
    profile_set: ProfileSet | None = None
    reference: Any = None  # the reference rendering, when quality was measured
    images_path: Path | None = None
    storage_url: str | None = None  # unredacted, for reopening the study in this process; never written
    time_split: TimeSplit | None = None  # where the search's time went (`time_split`), set by the search

    @property
    def study(self) -> optuna.Study:
        """The search's Optuna study, opened again (its trials, `optuna.visualization`, the dashboard)."""
        return optuna.load_study(study_name=self.study_name, storage=self.storage_url or self.storage)

    @property
    def speedup(self) -> float | None:
        """The best configuration's images/s over the default's, measured side by side; None when the default
        configuration failed here or was never timed (there is no ratio to give). See `speedup_ratio` for its
        interval, without which the number is no claim."""
        ratio = self.speedup_ratio
        return ratio.median if ratio is not None else None

    @property
    def speedup_ratio(self) -> Ratio | None:
        """The speed-up with its bootstrap interval and verdict (faster, slower, or cannot tell)."""
        return self.best.vs(self.baseline)


def finish_study(
    study: optuna.Study, spec: StudySpec, fingerprint: Fingerprint, config: WorkerConfig, storage_url: str,
    out: str | Path | None, top_k: int, rounds: int, emit: Events, scoring: Scoring | None = None,
    deadline: float | None = None, others_cpu_share: float | None = None, ablation: bool = False,
) -> SearchOutcome:
    """Re-measure the study's top candidates (its Pareto front) and the default configuration here, interleaved;
    write the profile (or profile set).

    With a `deadline` (`time.monotonic()`) the re-measurement stops there with what it has, and says so in one line;
    when it timed no candidate that fits, the profile is the leading trial's, with that trial's own figures
    (`Metrics.measured_in: trial`) and no comparison with the default. `others_cpu_share` is the load the search
    measured under, recorded for a configuration that was not re-measured."""
    if scoring is None and spec.reference_steps:
        with Worker(config) as worker:
            scoring = scoring_for(spec, worker, fingerprint, emit)
    candidates = contenders(study, spec, top_k, scoring)
    baseline = Candidate("default", {**knobs.defaults(), "steps": spec.steps or spec.fixed.get("steps"),
                                     "batch_size": 1})
    emit("phase", {"message": f"re-measuring the top {len(candidates)} and the default configuration, interleaved"})
    warn_if_busy(emit)
    workload = spec.workload
    fitting = remeasure_contenders(baseline, candidates, config, workload, rounds, spec, scoring,
                                   fingerprint.hardware.memory_bytes, deadline, emit)
    profile_of = profile_maker(study, spec, fingerprint, workload, scoring, baseline, storage_url, others_cpu_share)
    best, profile_set = choose(fitting, spec.objective, scoring, profile_of)
    effects = None
    if ablation and best.measured and profile_set is None:
        changed = ", ".join(f"{a.knob}={knobs.show(a.value)}" for a in ablations(best.settings, baseline.settings))
        emit("phase", {"message": f"measuring what each chosen knob is worth: {changed}, "
                                  "each put back to the default beside the chosen configuration, interleaved"})
        effects = measure_ablation(best, baseline.settings, config, workload, rounds, spec.trial_timeout_s,
                                   scoring=scoring, device_memory_bytes=fingerprint.hardware.memory_bytes,
                                   deadline=deadline)
    outcome = SearchOutcome(profile_of(best, effects), baseline, best, candidates, study.study_name,
                            redact(storage_url), len(finished(study)), profile_set=profile_set,
                            reference=scoring.reference if scoring else None, storage_url=storage_url)
    if out is not None:
        write_outcome(outcome, out, scoring)
    return outcome


def contenders(study: optuna.Study, spec: StudySpec, top_k: int, scoring: Scoring | None) -> list[Candidate]:
    """The trials worth re-measuring: the top few distinct configurations (with fallbacks where the leader may not
    fit or meet the floor when re-measured), or a Pareto search's front."""
    ran = [t for t in finished(study) if feasible(t)]
    if not ran:
        raise NothingFits(nothing_fits_message(study, spec.memory_budget_bytes, scoring))
    if spec.objective == "pareto":
        return pareto_candidates([t for t in study.best_trials if feasible(t)], limit=max(top_k, 8))
    leader = max(ran, key=lambda t: -t.value if spec.objective == "latency" else t.value)
    near_budget = (TrialRecord.of(leader).peak_memory_bytes or 0) > NEAR_BUDGET * spec.memory_budget_bytes
    return top_candidates(ran, top_k, spec.objective, fallbacks=scoring is not None or near_budget)


def remeasure_contenders(baseline: Candidate, candidates: list[Candidate], config: WorkerConfig, workload: Workload,
                         rounds: int, spec: StudySpec, scoring: Scoring | None, device_memory_bytes: int | None,
                         deadline: float | None, emit: Events) -> list[Candidate]:
    """Time the default and the candidates in interleaved rounds; those that fit the budget and meet the floor when
    re-measured (or, when the time limit stopped it before any did, the leading trial, with its trial's figures)."""
    budget_bytes = spec.memory_budget_bytes

    def settled() -> bool:
        """Whether the leader's speed-up over the default is decided (its interval excludes 1) or cannot be."""
        timed = [c for c in candidates if c.measured]
        ratio = max(timed, key=lambda c: c.images_per_s.median).vs(baseline) if timed else None
        return ratio is None or ratio.verdict != "cannot tell"

    # A spread too wide to tell the leader from the default gets up to as many rounds again, then is reported as is.
    complete = remeasure([baseline, *candidates], config, workload, rounds, spec.trial_timeout_s, scoring=scoring,
                         extra_rounds=rounds, settled=settled, device_memory_bytes=device_memory_bytes,
                         deadline=deadline)
    floor = scoring.floor_spec if scoring else None
    fitting = [c for c in candidates if c.fits(budget_bytes) and (scoring is None or scoring.meets(c.quality))]
    if not complete:
        timed = sum(c.measured for c in [baseline, *candidates])
        emit("phase", {"message": f"warning: the time limit stopped the re-measurement before its {rounds} rounds "
                                  f"({timed} of {len(candidates) + 1} configurations timed)"
                                  + ("" if fitting else "; the profile keeps the leading trial's own figures, not "
                                                        "compared with the default")})
        if not fitting:
            fitting = candidates[:1]
    if not fitting:
        raise NothingFits(f"none of the top configurations fit {format_size(budget_bytes)}"
                          + (f" and meet {floor}" if floor else "") + " when re-measured")
    return fitting


ProfileOf = Callable[[Candidate, "list[KnobEffect] | None"], Profile]


def profile_maker(study: optuna.Study, spec: StudySpec, fingerprint: Fingerprint, workload: Workload,
                  scoring: Scoring | None, baseline: Candidate, storage_url: str,
                  others_cpu_share: float | None) -> ProfileOf:
    """What makes a re-measured candidate (and its ablation) into the profile this search writes."""
    floor = scoring.floor_spec if scoring else None
    trials = len(finished(study))

    def profile_of(candidate: Candidate, effects: list[KnobEffect] | None = None) -> Profile:
        return Profile(
            hardware=fingerprint.hardware,
            software=fingerprint.software,
            model=ModelInfo(id=spec.model, revision=spec.commit, variant=(spec.hub or {}).get("variant"),
                            config=(spec.hub or {}).get("config"),
                            pipeline=spec.pipeline, denoiser=spec.denoiser,
                            default_guidance_scale=pipelines.default_guidance(spec.pipeline)),
            workload=workload,
            goal=Goal(objective=spec.objective, memory_budget_bytes=spec.memory_budget_bytes,
                      quality_floor=scoring.floor_record() if scoring and floor else None),
            settings=candidate.settings,
            other_sizes=[SizeSettings(**{key: size[key] for key in SizeSettings.model_fields})
                         for size in candidate.trial_sizes if size.get("batch_size")],
            metrics=metrics_of(candidate, baseline, others_cpu_share, effects),
            provenance=Provenance(sampler=type(study.sampler).__name__, seed=spec.seed, trials=trials,
                                  study=study.study_name, storage=redact(storage_url), created=now(),
                                  autotune=__version__, trial=candidate.trial),
        )

    return profile_of


def choose(fitting: list[Candidate], objective: str, scoring: Scoring | None,
           profile_of: ProfileOf) -> tuple[Candidate, ProfileSet | None]:
    """The configuration the profile holds (for a Pareto search, the balanced pick of the profile set it writes)."""
    if not fitting[0].measured:  # the time limit's fallback: the leading trial, as its trial measured it
        return fitting[0], None
    if objective == "pareto":
        metric = scoring.metric if scoring else "ssim"
        front = pareto_front(fitting, metric)
        picks = choose_picks(front, metric)
        return front[picks["balanced"]], ProfileSet(profiles=[profile_of(c, None) for c in front], picks=picks)
    if objective == "latency":
        return min(fitting, key=lambda c: c.latency.median), None
    return max(fitting, key=lambda c: c.images_per_s.median), None


def write_outcome(outcome: SearchOutcome, out: str | Path, scoring: Scoring | None) -> None:
    """Write the profile (and its images); a write that fails (a full disk) says the study is safe."""
    try:
        outcome.profile_path = (outcome.profile_set or outcome.profile).save(out)
        if scoring is not None:
            outcome.images_path = save_images(Path(out), scoring.reference, outcome.baseline, outcome.candidates)
    except CannotWrite as error:
        raise CannotWrite(f"{error}; the study {outcome.study_name!r} is kept in {outcome.storage}: make room and "
                          "run the same command again to write the profile") from error


def metrics_of(candidate: Candidate, baseline: Candidate | None = None,
               others_cpu_share: float | None = None, ablation: list[KnobEffect] | None = None) -> Metrics:
    """A re-measured candidate's numbers as a profile records them; what was not measured is None. A candidate the
    re-measurement never timed (the time limit came first) keeps its trial's figures, marked as such, with
    `others_cpu_share` the load they were measured under."""
    if not candidate.measured:
        return Metrics(images_per_s=candidate.trial_images_per_s, peak_memory_bytes=candidate.trial_peak_bytes or None,
                       quality={k: round(v, 4) for k, v in candidate.trial_quality.items()},
                       quality_by_prompt=_rounded(candidate.trial_quality_by_prompt), measured_in="trial",
                       others_cpu_share=_share(others_cpu_share))
    ratio = candidate.vs(baseline) if baseline is not None else None
    return Metrics(images_per_s=candidate.images_per_s, frames_per_s=candidate.frames_per_s,
                   vs_default=SpeedRatio(**ratio.record()) if ratio is not None else None,
                   latency_s=candidate.latency,
                   peak_memory_bytes=candidate.peak_memory_bytes or None,
                   quality={k: round(v, 4) for k, v in candidate.quality.items()},
                   quality_by_prompt=_rounded(candidate.quality_by_prompt),
                   warmup_s=round(candidate.warmup_s, 3),
                   others_cpu_share=_share(candidate.others_cpu_share), ablation=ablation or [])


def _rounded(by_prompt: dict[str, list[float]]) -> dict[str, list[float]]:
    return {metric: [round(value, 4) for value in values] for metric, values in by_prompt.items()}


def _share(share: float | None) -> float | None:
    return None if share is None else round(share, 3)


def warn_if_busy(emit: Events) -> float:
    """Say so when other work is using the machine: it can slow a timed run many times over. The search's own
    workers are not counted. Returns the share of the CPU the others use."""
    share = others_share()
    if share > BUSY_SHARE:
        emit("phase", {"message": f"warning: other processes are using {share:.0%} of this machine's "
                                  f"{os.cpu_count() or 1} cores; timings will be noisy"})
    return share


def nothing_fits_message(study: optuna.Study, budget_bytes: int, scoring: Scoring | None = None) -> str:
    """Why no trial is feasible, and what to change: the best quality reached, the smallest memory needed, or, when
    no trial ran to the end, why they failed (which says nothing about memory)."""
    done = [TrialRecord.of(t) for t in finished(study)]
    reference = next((t for t in done if t.recipe == REFERENCE_RECIPE), None)
    reference_failed = (f"; the reference configuration itself (trial {reference.number}) failed: {reference.reason}"
                        if reference is not None and reference.constraints.get("failure", 0) > 0 else "")
    if scoring is not None and scoring.minimum is not None:
        scored = [t.quality[scoring.metric] for t in done
                  if scoring.metric in t.quality and t.constraints.get("memory", 1) <= 0]
        if scored:
            return (f"nothing meets the quality floor {scoring.metric} >= {scoring.minimum:.4g} within "
                    f"{format_size(budget_bytes)}: the best {scoring.metric} measured was {max(scored):.4g}"
                    f"{reference_failed}; lower --quality-floor (no profile written)")
    ran = [t for t in done if t.constraints.get("failure", 0) <= 0]
    peaks = [t.peak_memory_bytes for t in ran if t.peak_memory_bytes and t.constraints.get("memory", 0) > 0]
    if peaks:
        return (f"nothing fits in {format_size(budget_bytes)}: the smallest configuration measured needed "
                f"{format_size(min(peaks))}{reference_failed}; raise --budget (no profile written)")
    reasons = Counter(f"{t.failure}: {t.reason}" for t in done if t.failure)
    if not reasons:
        return f"no configuration could be used: none of {len(done)} trials ran to the end (no profile written)"
    reason, count = reasons.most_common(1)[0]
    return (f"every trial failed ({sum(reasons.values())} of {len(done)}); the most common reason "
            f"({count}): {reason}{reference_failed} (no profile written)")
