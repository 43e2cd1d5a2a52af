"""The report: one self-contained HTML page about a search, for a person to read.

It shows what the study found (the Pareto front, or speed against memory), which knobs mattered, how the search went,
the top configurations, and the reference images beside the chosen configurations' so that a quality score can be
seen. plotly.js and the images are inlined: the page opens without a network.

>>> found = report_source("tiny.yaml")  # doctest: +SKIP
>>> write_report(found.study, Path("tiny.html"), found.profile, found.images)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from . import knobs
from .exceptions import AutotuneError
from .hardware import Hardware
from .profile import Profile, load_profile, profile_from_dict, write_atomic
from .quality import PSNR_CAP, images_path, load_images, score
from .search import _feasible
from .study import redact
from .units import format_size

REFERENCE = "reference"  # the images key of the reference rendering
TOP_CONFIGURATIONS = 10
_SQLITE_MAGIC = b"SQLite format 3\x00"
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}
# Small images are enlarged (pixelated) to at least this width, so a person can see what the scores mean.
_MIN_IMAGE_PX = 128


class ReportError(AutotuneError, ValueError):
    """The report's source cannot be found or opened; the message says what to give instead."""


@dataclass
class ReportSource:
    """What `report_source` found: the study, the profile and images when there are some, and where to write."""

    study: optuna.Study
    profile: Profile | None
    images: dict[str, np.ndarray] | None
    default_output: Path


# ---- finding the study ----


def report_source(
    arg: str | os.PathLike, study_name: str | None = None, storage: str | None = None
) -> ReportSource:
    """Resolve `autotune report STUDY_OR_PROFILE`: a profile YAML, a study's SQLite file, or a storage URL.

    A profile names its study and storage (`provenance`); `storage` overrides the recorded one (needed when the
    recorded URL hides its password). A storage with several studies needs `study_name`.
    """
    text = str(arg)
    path = Path(text)
    if path.is_file():
        with path.open("rb") as file:
            is_sqlite = file.read(16) == _SQLITE_MAGIC
        if is_sqlite:
            study = _load_study(storage or f"sqlite:///{path.resolve()}", study_name)
            return ReportSource(study, None, _sidecar(path), path.with_suffix(".html"))
        profile = _load_profile_or_set(path)
        provenance = profile.provenance
        url = storage or (provenance.storage if provenance else None)
        if not url:
            raise ReportError(f"{path}: the profile records no study storage; give it with --storage URL")
        if "***" in url:
            raise ReportError(f"{path}: the recorded storage {url} hides its password; give the URL with --storage")
        study = _load_study(url, study_name or (provenance.study if provenance else None))
        return ReportSource(study, profile, _sidecar(path), path.with_suffix(".html"))
    if "://" in text:
        study = _load_study(storage or text, study_name)
        return ReportSource(study, None, None, Path(f"{study.study_name}.html"))
    raise ReportError(f"{text}: no such file; give a profile YAML, a study's .db file, or a storage URL")


def _load_profile_or_set(path: Path) -> Profile:
    # A profile set (Pareto results) holds several profiles; they share one study, so the first one's provenance does.
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return load_profile(path)  # its error names the problem
    if isinstance(data, dict) and "provenance" not in data and isinstance(data.get("profiles"), list):
        if not data["profiles"]:
            raise ReportError(f"{path}: the profile set has no profiles")
        return profile_from_dict(data["profiles"][0], f"{path}: profiles[0]")
    return load_profile(path)


def _sidecar(path: Path) -> dict[str, np.ndarray] | None:
    sidecar = images_path(path)
    return load_images(sidecar) if sidecar.is_file() else None


def _load_study(url: str, name: str | None) -> optuna.Study:
    shown = _redact(url)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        # Optuna would create an empty database there; a typo should not leave files behind.
        raise ReportError(f"{shown}: no such database file")
    try:
        names = optuna.get_all_study_names(storage=url)
    except Exception as error:  # a driver missing, a server unreachable, a file that is not a study database
        raise ReportError(f"cannot open the storage {shown}: {str(error).splitlines()[0]}") from None
    if name is None:
        if len(names) != 1:
            raise ReportError(f"{shown} holds {len(names)} studies ({', '.join(names) or 'none'}); "
                              "name one with --study")
        name = names[0]
    if name not in names:
        raise ReportError(f"no study {name!r} in {shown}; it holds: {', '.join(names) or 'no study'}")
    return optuna.load_study(study_name=name, storage=url)


def _redact(url: str) -> str:
    return redact(url)


# ---- the page ----


def write_report(
    study: optuna.Study,
    out: str | os.PathLike,
    profile: Profile | None = None,
    images: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write one self-contained HTML page about `study` to `out` (atomically) and return its path.

    `profile` adds the goal and the re-measured result; `images` (label -> (prompts, H, W, 3) in [0, 1], with
    `"reference"`) adds the image grid.
    """
    import plotly.offline

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = _objective_names(study, profile)
    title = f"autotune report: {study.study_name}"
    sections = [
        _section("tradeoff", "Pareto front" if _multi(study) else "Speed against memory",
                 _tradeoff(study, trials, names, profile)),
        _section("importances", "Which knobs mattered", _importances(study, trials, names)),
        _section("history", "Optimization history", _history(study, names)),
        _section("top", "Top configurations", _top_table(study, trials, profile)),
        _section("images", "Images: the reference beside the chosen configurations", _image_grid(study, images)),
    ]
    page = _PAGE.format(
        title=html.escape(title), css=_CSS, error_recorder=_ERROR_RECORDER, plotly=plotly.offline.get_plotlyjs(),
        summary=_summary(study, trials, profile), sections="\n".join(sections),
    )
    try:
        return write_atomic(out, page)
    except OSError as error:
        raise ReportError(f"{out}: cannot write the report ({error.strerror or error})") from None


def _multi(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def _objective_names(study: optuna.Study, profile: Profile | None) -> list[str]:
    if study.metric_names:  # what the search named them, when it did
        return list(study.metric_names)
    if not _multi(study):
        return ["s/image" if study.user_attrs.get("objective") == "latency" else "images/s"]
    return ["images/s", "peak memory (GiB)", _quality_metric(study, profile) or "quality"][: len(study.directions)]


def _quality_metric(study: optuna.Study, profile: Profile | None) -> str | None:
    if profile is not None and profile.goal.quality_floor is not None:
        return profile.goal.quality_floor.metric
    recorded = next((t.user_attrs["quality"] for t in study.trials if t.user_attrs.get("quality")), {})
    return next(iter(recorded), None)


def _section(anchor: str, heading: str, body: str) -> str:
    return f'<section id="{anchor}">\n<h2>{html.escape(heading)}</h2>\n{body}\n</section>'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _figure(make: Callable[[], Any], anchor: str, empty: str, height: int = 440) -> str:
    # Optuna warns about small studies on stderr; the page says what matters instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        figure = make()
    if not figure.data:
        return _note(empty)
    figure.update_layout(height=height, margin={"t": 50, "b": 40})
    return figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{anchor}", config=_PLOT_CONFIG)


# ---- plots ----


def _tradeoff(study: optuna.Study, trials: list[FrozenTrial], names: list[str], profile: Profile | None) -> str:
    from optuna.visualization import plot_pareto_front

    failed = Counter(t.user_attrs.get("failure", "no measurement") for t in trials if not _measured(t))
    caption = _note("Not plotted, failed: " + ", ".join(f"{kind} x{n}" for kind, n in failed.items())) if failed else ""
    if _multi(study):
        def make():
            return plot_pareto_front(study, target_names=names,
                                     constraints_func=lambda t: [max(t.constraints.values(), default=0.0)])
    else:
        def make():
            return _speed_memory_scatter(study, [t for t in trials if _measured(t)], profile)
    height = 640 if len(study.directions) == 3 else 440  # a 3-D plot needs the room
    return _figure(make, "tradeoff", "No trial has been measured yet.", height) + caption


def _speed_memory_scatter(study: optuna.Study, trials: list[FrozenTrial], profile: Profile | None):
    """Every measured trial: peak memory against images/s, infeasible ones grey, the best one a star."""
    import plotly.graph_objects as go

    metric = _quality_metric(study, profile)
    figure = go.Figure()
    best = _best_number(study)
    for label, members, style in (
        ("feasible", [t for t in trials if _feasible(t)], {"color": "#1f77b4"}),
        ("infeasible", [t for t in trials if not _feasible(t)], {"color": "#bbbbbb"}),
        ("best", [t for t in trials if t.number == best], {"color": "#d62728", "symbol": "star", "size": 16}),
    ):
        if not members:
            continue
        marker = {"size": 10, **style}
        if metric and label == "feasible" and any(metric in t.user_attrs.get("quality", {}) for t in members):
            marker |= {"color": [t.user_attrs.get("quality", {}).get(metric, math.nan) for t in members],
                       "colorscale": "Viridis", "colorbar": {"title": {"text": metric}}, "showscale": True}
        figure.add_trace(go.Scatter(
            x=[t.user_attrs["peak_memory_bytes"] / 2**30 for t in members],
            y=[t.user_attrs["images_per_s"] for t in members],
            mode="markers", name=label, marker=marker,
            text=[f"trial {t.number}<br>{html.escape(_changed_settings(study, t))}<br>{html.escape(_verdict(t))}"
                  for t in members],
            hovertemplate="%{text}<br>%{y:.3g} images/s, %{x:.3g} GiB<extra></extra>",
        ))
    if profile is not None and profile.goal.memory_budget_bytes:
        figure.add_vline(x=profile.goal.memory_budget_bytes / 2**30, line_dash="dash", line_color="#d62728",
                         annotation_text="budget")
    figure.update_layout(title={"text": "Each trial: images/s against peak memory"},
                         xaxis_title="peak memory (GiB)", yaxis_title="images/s")
    return figure


def _importances(study: optuna.Study, trials: list[FrozenTrial], names: list[str]) -> str:
    from optuna.importance import get_param_importances
    from optuna.visualization import plot_param_importances

    too_few = _note(f"Too few completed trials ({len(trials)}) to tell which knobs mattered; run more trials.")
    # Multi-objective: Optuna rates each objective; the check below looks at the first (speed).
    target = (lambda t: t.values[0]) if _multi(study) else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = get_param_importances(study, target=target)
    except (ValueError, RuntimeError):  # no completed trial, or no parameter that varied
        return too_few
    # With too few trials Optuna rates every knob alike: that says nothing, so the page says so instead.
    if len(set(importances.values())) <= 1:
        return too_few
    if not _multi(study):
        return _figure(lambda: plot_param_importances(study, target_name=names[0]), "importances",
                       "No knob varied between trials.")

    def make():
        figure = plot_param_importances(study)
        # Without metric names Optuna labels the objectives by index.
        labels = {f"Objective Value {i}": name for i, name in enumerate(names)}
        return figure.for_each_trace(lambda trace: trace.update(name=labels.get(trace.name, trace.name)))
    return _figure(make, "importances", "No knob varied between trials.")


def _history(study: optuna.Study, names: list[str]) -> str:
    from optuna.visualization import plot_optimization_history

    if _multi(study):
        def make():
            return plot_optimization_history(study, target=lambda t: t.values[0], target_name=names[0])
    else:
        def make():
            return plot_optimization_history(study, target_name=names[0])
    return _figure(make, "history", "No completed trial yet.")


# ---- trials ----


def _measured(trial: FrozenTrial) -> bool:
    return "images_per_s" in trial.user_attrs and "peak_memory_bytes" in trial.user_attrs


def _best_number(study: optuna.Study) -> int | None:
    try:
        return None if _multi(study) else study.best_trial.number
    except ValueError:  # no feasible trial
        return None


def _ranked(study: optuna.Study, trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Feasible before infeasible; then the Pareto front first by images/s, or by the objective."""
    if _multi(study):
        front = {t.number for t in study.best_trials}

        def score(t: FrozenTrial) -> tuple:
            return (t.number not in front, -t.user_attrs.get("images_per_s", 0.0))
    else:
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0

        def score(t: FrozenTrial) -> tuple:
            return (sign * t.value,)
    return sorted(trials, key=lambda t: (not _feasible(t), *score(t), t.number))


def _trial_settings(trial: FrozenTrial) -> dict[str, Any]:
    settings = dict(trial.user_attrs.get("settings") or trial.params)
    if "batch_size" in trial.user_attrs:  # the batch the trial chose, not the one it started from
        settings["batch_size"] = trial.user_attrs["batch_size"]
    return settings


def _changed_settings(study: optuna.Study, trial: FrozenTrial) -> str:
    """The knobs a trial set away from their defaults; the study's fixed ones are in the summary."""
    fixed = study.user_attrs.get("fixed", {})
    changed = [f"{name}={knobs.show(value)}" for name, value in _trial_settings(trial).items()
               if name in knobs.KNOBS and name not in fixed and name != "batch_size"
               and value != knobs.get(name).default]
    return ", ".join(changed) or "defaults"


def _verdict(trial: FrozenTrial) -> str:
    if _feasible(trial):
        return "feasible"
    if trial.user_attrs.get("failure"):
        return f"{trial.user_attrs['failure']}: {trial.user_attrs.get('reason', '')}".rstrip(": ")
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


def _quality_text(quality: dict[str, float] | None) -> str:
    return ", ".join(f"{name} {value:.4g}" for name, value in quality.items()) if quality else "-"


def _top_table(study: optuna.Study, trials: list[FrozenTrial], profile: Profile | None) -> str:
    if not trials:
        return _note("No completed trial yet.")
    chosen = profile.settings_dict() if profile is not None else None
    rows = []
    for rank, trial in enumerate(_ranked(study, trials)[:TOP_CONFIGURATIONS], 1):
        attrs = trial.user_attrs
        settings = _trial_settings(trial)
        is_chosen = chosen is not None and all(chosen.get(k) == v for k, v in settings.items() if k in chosen)
        rate = attrs.get("images_per_s")
        cells = [
            str(rank), f"{trial.number}" + (" (chosen)" if is_chosen else ""), _changed_settings(study, trial),
            str(settings.get("batch_size", "-")), f"{rate:.3g}" if rate is not None else "-",
            format_size(attrs.get("peak_memory_bytes")), _quality_text(attrs.get("quality")), _verdict(trial),
        ]
        css = ' class="infeasible"' if not _feasible(trial) else ' class="chosen"' if is_chosen else ""
        rows.append(f"<tr{css}>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in (
        "rank", "trial", "settings (changed from defaults)", "batch", "images/s", "peak memory", "quality",
        "feasible, or why not"))
    shown = min(len(trials), TOP_CONFIGURATIONS)
    order = "the Pareto front first, by images/s" if _multi(study) else "best first"
    remeasured = " The chosen profile was re-measured afterwards: its numbers are in the summary." if chosen else ""
    return (f"<p>{shown} of {len(trials)} completed trials, {order}, as measured during the search.{remeasured}</p>\n"
            f'<table class="top"><thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(rows) + "\n</tbody></table>")


# ---- summary ----


def _summary(study: optuna.Study, trials: list[FrozenTrial], profile: Profile | None) -> str:
    attrs = study.user_attrs
    workload = profile.workload.model_dump() if profile is not None else attrs.get("workload", {})
    fixed = attrs.get("fixed", {})
    states = Counter(t.state.name.lower() for t in study.trials)
    rows = [
        ("model", profile.model.id if profile is not None else attrs.get("model", "-")),
        ("hardware", _hardware_text(profile.hardware if profile is not None else attrs.get("hardware"))),
        ("workload", _workload_text(workload, fixed)),
        ("goal", _goal_text(study, profile)),
        ("study", f"{study.study_name}: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))),
    ]
    if profile is not None and profile.metrics is not None:
        rows.append(("result (re-measured)", _metrics_text(profile)))
        rows.append(("settings", ", ".join(f"{k}={knobs.show(v)}" for k, v in profile.settings_dict().items()
                                             if k in knobs.KNOBS and v != knobs.get(k).default) or "defaults"))
    elif trials and _feasible(best := _ranked(study, trials)[0]):
        rate = best.user_attrs.get("images_per_s")
        measured = f"{rate:.3g} images/s, " if rate is not None else ""
        rows.append(("fastest on the Pareto front" if _multi(study) else "best trial",
                     f"trial {best.number}: {measured}{format_size(best.user_attrs.get('peak_memory_bytes'))} peak, "
                     + _changed_settings(study, best)))
    if profile is not None and profile.provenance is not None:
        provenance = profile.provenance
        rows.append(("made", f"{provenance.created:%Y-%m-%d %H:%M} UTC, {provenance.sampler} seed {provenance.seed}, "
                             f"autotune {provenance.autotune or '-'}"))
    body = "\n".join(f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>" for key, value in rows)
    return f'<table class="summary">\n{body}\n</table>'


def _hardware_text(hardware: Hardware | dict | None) -> str:
    if isinstance(hardware, dict):
        try:
            hardware = Hardware.model_validate(hardware)
        except ValueError:
            return str(hardware)
    if hardware is None:
        return "-"
    return f"{hardware.describe()}, {format_size(hardware.memory_bytes)}"


def _workload_text(workload: dict, fixed: dict) -> str:
    if not workload:
        return "-"
    parts = [f"{workload.get('height')}x{workload.get('width')}", f"{len(workload.get('prompts', []))} prompts",
             f"seed {workload.get('seed')}"]
    parts += [f"{name}={knobs.show(value)}" for name, value in fixed.items()]
    return ", ".join(parts)


def _goal_text(study: optuna.Study, profile: Profile | None) -> str:
    if profile is None:
        return study.user_attrs.get("objective", "-")
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
        parts.append(f"{stat.median:.3g} images/s (spread {stat.cv:.0%}, {stat.n} runs)")
    if metrics.latency_s is not None:
        parts.append(f"{metrics.latency_s.median:.3g} s/call")
    parts.append(f"peak memory {format_size(metrics.peak_memory_bytes)}")
    if metrics.quality:
        parts.append(_quality_text(metrics.quality))
    if metrics.warmup_s is not None:
        parts.append(f"warm-up {metrics.warmup_s:.1f} s")
    return ", ".join(parts)


# ---- image grid ----


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of one image against its reference, as the search scores it (capped for identical images)."""
    return score(np.asarray(image)[None], np.asarray(reference)[None], ("psnr",))["psnr"]


def _image_grid(study: optuna.Study, images: dict[str, np.ndarray] | None) -> str:
    if not images:
        return _note("No images were saved with this study (no <profile>.images.npz next to the profile).")
    if REFERENCE not in images:
        return _note(f"The saved images have no {REFERENCE!r} rendering to compare with: "
                     f"{', '.join(images)}.")
    reference = images[REFERENCE]
    prompts = study.user_attrs.get("workload", {}).get("prompts", [])
    head = "<th></th>" + "".join(
        f"<th>{html.escape(prompts[i] if i < len(prompts) else f'prompt {i + 1}')}</th>"
        for i in range(len(reference)))
    rows = [_image_row(REFERENCE, reference, None)]
    rows += [_image_row(label, array, reference) for label, array in images.items() if label != REFERENCE]
    return ('<p>Each row renders the same prompts with the same seeds. PSNR compares each image with the reference '
            f'above it (higher is closer; identical images are capped at {PSNR_CAP:g} dB).</p>\n'
            f'<table class="grid"><thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(rows) + "\n</tbody></table>")


def _image_row(label: str, array: np.ndarray, reference: np.ndarray | None) -> str:
    comparable = reference is not None and array.shape == reference.shape
    per_image = [psnr(image, reference[i]) for i, image in enumerate(array)] if comparable else []
    if reference is None:
        header = "the reference rendering"
    elif not comparable:
        header = f"size {array.shape[1:3]} differs from the reference: not compared"
    else:
        # The search's PSNR is the mean of the per-image values already computed for the captions.
        ssim = score(array, reference, ("ssim",))["ssim"]
        header = f"PSNR {np.mean(per_image):.1f} dB, SSIM {ssim:.4f} (as the search scores it)"
    cells = []
    for i, image in enumerate(array):
        caption = _psnr_text(per_image[i]) if per_image else ""
        cells.append(f'<td><figure>{_img_tag(image, f"{label}, prompt {i + 1}")}'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure></td>")
    return (f'<tr><th>{html.escape(label)}<br><span class="note">{html.escape(header)}</span></th>'
            + "".join(cells) + "</tr>")


def _psnr_text(decibels: float) -> str:
    return "identical" if decibels >= PSNR_CAP else f"PSNR {decibels:.1f} dB"


def _img_tag(image: np.ndarray, alt: str) -> str:
    from PIL import Image

    pixels = (np.clip(np.nan_to_num(np.asarray(image, np.float64)), 0, 1) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    height, width = pixels.shape[:2]
    scale = max(1, math.ceil(_MIN_IMAGE_PX / width))
    return (f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" '
            f'width="{width * scale}" height="{height * scale}">')


# ---- the page's frame ----

# Records script errors into the page, where a person (and a headless browser's DOM dump) can see them.
_ERROR_RECORDER = """window.addEventListener("error", function (event) {
  var note = document.createElement("pre");
  note.className = "js-error";
  note.textContent = "script error: " + event.message;
  (document.body || document.documentElement).appendChild(note);
});"""

_CSS = """body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } th, td { padding: 4px 8px; text-align: left; vertical-align: top; }
table.summary th { color: #555; font-weight: normal; }
table.top td, table.top th { border-bottom: 1px solid #eee; font-size: 0.9em; }
tr.infeasible { color: #999; } tr.chosen { background: #eef6ee; }
table.grid img { image-rendering: pixelated; max-width: 384px; height: auto; display: block; }
figure { margin: 0; } figcaption, .note { color: #666; font-size: 0.85em; }
.js-error { color: #b00; background: #fee; padding: 4px; }"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<script>{error_recorder}</script>
<style>{css}</style>
<script>{plotly}</script>
</head>
<body>
<h1>{title}</h1>
{summary}
{sections}
</body>
</html>
"""
