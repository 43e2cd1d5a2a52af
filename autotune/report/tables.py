"""The report's two tables: the summary (model, hardware, workload, goal, result) and the top configurations."""

from __future__ import annotations

import html
import statistics
from collections import Counter

import optuna
from optuna.trial import FrozenTrial

from autotune import knobs
from autotune.compare.records import TrialRecord
from autotune.hardware import Hardware
from autotune.measure.figures import KnobEffect
from autotune.profile import Profile
from autotune.tuner.spec import StudySpec, recorded_spec
from autotune.units import format_size
from autotune.workload import Workload

from .page import note
from .trials import changed_settings, feasible, fixed_knobs, multi, quality_text, ranked, verdict

TOP_CONFIGURATIONS = 10


def top_table(study: optuna.Study, trials: list[FrozenTrial], profile: Profile | None) -> str:
    """The best `TOP_CONFIGURATIONS` completed trials, as measured during the search; the profile's is marked."""
    if not trials:
        return note("No completed trial yet.")
    chosen = profile.settings_dict() if profile is not None else None
    fixed = fixed_knobs(study)
    rows = []
    for rank, trial in enumerate(ranked(study, trials)[:TOP_CONFIGURATIONS], 1):
        record = TrialRecord.of(trial)
        settings = record.ran_with
        is_chosen = chosen is not None and all(chosen.get(k) == v for k, v in settings.items() if k in chosen)
        rate = record.images_per_s
        cells = [
            str(rank), f"{trial.number}" + (" (chosen)" if is_chosen else ""), changed_settings(trial, fixed),
            str(settings.get("batch_size", "-")), f"{rate:.3g}" if rate is not None else "-",
            format_size(record.peak_memory_bytes), predicted_text(record), quality_text(record.quality),
            verdict(trial),
        ]
        css = ' class="infeasible"' if not feasible(trial) else ' class="chosen"' if is_chosen else ""
        rows.append(f"<tr{css}>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in (
        "rank", "trial", "settings (changed from defaults)", "batch", "images/s", "peak memory",
        "predicted (error)", "quality", "feasible, or why not"))
    shown = min(len(trials), TOP_CONFIGURATIONS)
    order = "the Pareto front first, by images/s" if multi(study) else "best first"
    remeasured = " The chosen profile was re-measured afterwards: its numbers are in the summary." if chosen else ""
    errors = prediction_errors(trials)
    if errors:
        remeasured += (f" The memory model, calibrated on the trials before each one, predicted the peak within "
                       f"{statistics.median(errors):.0%} (median; worst {max(errors):.0%}) over {len(errors)} "
                       "measured trials.")
    return (f"<p>{shown} of {len(trials)} completed trials, {order}, as measured during the search.{remeasured}</p>\n"
            f'<table class="top"><thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(rows) + "\n</tbody></table>")


def predicted_text(record: TrialRecord) -> str:
    """The memory model's prediction for a trial, with its error against the measured peak when there is one."""
    predicted, measured = record.predicted_peak_bytes, record.peak_memory_bytes
    if predicted is None:
        return "-"
    if not measured:
        return format_size(predicted)
    return f"{format_size(predicted)} ({(predicted - measured) / measured:+.0%})"


def prediction_errors(trials: list[FrozenTrial]) -> list[float]:
    """|predicted - measured| / measured for each trial that has both."""
    pairs = [(r.predicted_peak_bytes, r.peak_memory_bytes) for r in map(TrialRecord.of, trials)]
    return [abs(p - m) / m for p, m in pairs if p is not None and m]


def summary_table(study: optuna.Study, trials: list[FrozenTrial], profile: Profile | None) -> str:
    """What was searched and what came of it: from the profile when there is one, else from the study's attrs."""
    spec = recorded_spec(study)
    workload = profile.workload if profile is not None else spec.workload if spec else None
    states = Counter(t.state.name.lower() for t in study.trials)
    rows = [
        ("model", profile.model.id if profile is not None else spec.model if spec else "-"),
        ("hardware", _hardware_text(profile.hardware if profile is not None else spec.hardware if spec else None)),
        ("workload", _workload_text(workload, spec.fixed if spec else {})),
        ("goal", _goal_text(spec, profile)),
        ("study", f"{study.study_name}: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))),
    ]
    if profile is not None and profile.metrics is not None:
        rows.append(("result (re-measured)", _metrics_text(profile)))
        rows.append(("settings", ", ".join(f"{k}={knobs.show(v)}" for k, v in profile.settings_dict().items()
                                             if k in knobs.KNOBS and v != knobs.get(k).default) or "defaults"))
        if profile.metrics.ablation:
            rows.append(("what each knob is worth (vs the chosen without it)",
                         "; ".join(_effect_text(effect) for effect in profile.metrics.ablation)))
    elif trials and feasible(best := ranked(study, trials)[0]):
        record = TrialRecord.of(best)
        measured = f"{record.images_per_s:.3g} images/s, " if record.images_per_s is not None else ""
        rows.append(("fastest on the Pareto front" if multi(study) else "best trial",
                     f"trial {best.number}: {measured}{format_size(record.peak_memory_bytes)} peak, "
                     + changed_settings(best, spec.fixed if spec else {})))
    if profile is not None and profile.provenance is not None:
        provenance = profile.provenance
        rows.append(("made", f"{provenance.created:%Y-%m-%d %H:%M} UTC, {provenance.sampler} seed {provenance.seed}, "
                             f"autotune {provenance.autotune or '-'}"))
    body = "\n".join(f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>" for key, value in rows)
    return f'<table class="summary">\n{body}\n</table>'


def _effect_text(effect: KnobEffect) -> str:
    """`precision=bf16: 1.84x (1.70-1.99x) over fp32`, or why it has no figure."""
    return (f"{effect.knob}={knobs.show(effect.value)}: {effect.shown_speedup()}"
            + (f" over {knobs.show(effect.default)}" if effect.speedup is not None else ""))


def _hardware_text(hardware: Hardware | None) -> str:
    if hardware is None:
        return "-"
    return f"{hardware.describe()}, {format_size(hardware.memory_bytes)}"


def _workload_text(workload: Workload | None, fixed: dict) -> str:
    if workload is None:
        return "-"
    parts = [f"{workload.height}x{workload.width}", f"{len(workload.prompts)} prompts", f"seed {workload.seed}"]
    if workload.guidance_scale is not None:
        parts.append(f"guidance {workload.guidance_scale:g}")
    if workload.negative_prompt is not None:
        parts.append(f"negative prompt {workload.negative_prompt!r}")
    parts += [f"{name}={knobs.show(value)}" for name, value in workload.call.items()]
    parts += [f"{name}={knobs.show(value)}" for name, value in fixed.items()]
    return ", ".join(parts)


def _goal_text(spec: StudySpec | None, profile: Profile | None) -> str:
    if profile is None:
        return spec.objective if spec else "-"
    goal = profile.goal
    text = f"{goal.objective}, memory budget {format_size(goal.memory_budget_bytes)}"
    if goal.quality_floor is not None:
        text += f", {goal.quality_floor.metric} >= {goal.quality_floor.min}"
    return text


def _metrics_text(profile: Profile) -> str:
    metrics = profile.metrics
    parts = []
    if metrics.images_per_s is not None:
        stat = metrics.images_per_s
        unit = "videos/s" if profile.workload.output == "video" else "images/s"
        parts.append(f"{stat.median:.3g} {unit} (spread {stat.cv:.0%}, {stat.n} runs)")
    if metrics.frames_per_s is not None:
        parts.append(f"{metrics.frames_per_s.median:.3g} frames/s")
    if metrics.latency_s is not None:
        parts.append(f"{metrics.latency_s.median:.3g} s/call")
    parts.append(f"peak memory {format_size(metrics.peak_memory_bytes)}")
    if metrics.quality:
        parts.append(quality_text(metrics.quality) + (" (worst prompt)" if len(profile.workload.prompts) > 1 else ""))
    for metric, values in metrics.quality_by_prompt.items():
        if len(values) > 1:
            parts.append(f"{metric} by prompt " + " / ".join(f"{value:.4g}" for value in values))
    if metrics.warmup_s is not None:
        parts.append(f"warm-up {metrics.warmup_s:.1f} s")
    return ", ".join(parts)
