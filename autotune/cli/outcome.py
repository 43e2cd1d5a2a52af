"""What a search prints: its progress and a line per trial as it runs, then the table it ends with (as an export
does): the chosen configuration(s) beside the default one, re-measured together, a video pipeline's rate in
videos/s with frames/s beside it; then what each chosen knob is worth (the ablation)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from autotune.units import format_size

if TYPE_CHECKING:
    from autotune.measure.figures import KnobEffect
    from autotune.tuner.outcome import SearchOutcome

CONSOLE = Console()
_VERBOSITY = {"level": 0}


def set_verbosity(level: int) -> None:
    """-1 (`--quiet`): results and errors only; 0: progress too (a line per phase and per trial); 1 (`--verbose`):
    as 0, errors with their tracebacks (the exit's concern)."""
    _VERBOSITY["level"] = level


def quiet() -> bool:
    return _VERBOSITY["level"] < 0


def print_outcome(console: Console, outcome: SearchOutcome) -> None:
    """The re-measured table, the chosen settings, and where the study and the profile are."""
    from autotune import knobs

    metric = outcome.profile.goal.quality_floor.metric if outcome.profile.goal.quality_floor else "ssim"
    console.print(remeasured_table(outcome, metric))
    print_verdict(console, outcome)
    console.print("settings: " + knobs.show_changed(outcome.best.settings))
    if outcome.profile.metrics.ablation:
        print_ablation(console, outcome.profile.metrics.ablation, metric if outcome.reference is not None else None)
    if outcome.time_split is not None:
        console.print(outcome.time_split.describe())
    console.print(f"study {outcome.study_name} in {outcome.storage}")
    if outcome.profile_set is not None:
        console.print(f"profile set of {len(outcome.profile_set.profiles)} Pareto-optimal configurations written to "
                      f"[bold]{outcome.profile_path}[/bold]; apply one with "
                      f"apply_profile(pipe, \"{outcome.profile_path}#balanced\")")
    else:
        console.print(f"profile written to [bold]{outcome.profile_path}[/bold]")
    if outcome.profile_path is not None:
        console.print(f"next: autotune verify {outcome.profile_path} (re-measure it here); autotune report "
                      f"{outcome.profile_path} (the search in one HTML page); in the app, "
                      f"apply_profile(pipe, \"{outcome.profile_path}\")", highlight=False)


def remeasured_table(outcome: SearchOutcome, metric: str) -> Table:
    """The default, the chosen configuration and the other contenders, as re-measured together."""
    table = Table(title=f"The best of {outcome.trials} trials vs the default configuration, measured in the same run")
    video = outcome.profile.workload.output == "video"
    columns = ["configuration", "videos/s" if video else "images/s", *(["frames/s"] if video else []), "spread",
               "s/call", "peak memory", "batch", "vs default"]
    if outcome.reference is not None:
        columns.append(metric)
    for column in columns:
        table.add_column(column, justify="right" if column != "configuration" else "left")
    # The chosen one, then the other contenders re-measured with it (the top few), so a close second shows as such.
    rows = [("default", outcome.baseline), ("autotune", outcome.best),
            *((candidate.label, candidate) for candidate in outcome.candidates if candidate is not outcome.best)]
    if outcome.profile_set is not None:
        rows = [("default", outcome.baseline)] + [
            (name, next(c for c in outcome.candidates if c.trial == profile.provenance.trial))
            for name, profile in ((n, outcome.profile_set.pick(n)) for n in outcome.profile_set.picks)]
    for label, candidate in rows:
        # Not re-measured (the time limit came first): its trial's figures, marked, or nothing.
        rate = candidate.images_per_s if candidate.measured else candidate.trial_images_per_s
        frames = candidate.frames_per_s
        cells = [label, "-" if rate is None else f"{rate.median:.2f}" + ("" if candidate.measured else " (trial)"),
                 *([f"{frames.median:.2f}" if frames else "-"] if video else []),
                 "-" if rate is None else f"{rate.cv:.0%}",
                 f"{candidate.latency.median:.3f}" if candidate.measured else "-",
                 format_size(candidate.peak_memory_bytes or candidate.trial_peak_bytes), str(candidate.batch_size),
                 candidate.shown_vs(outcome.baseline)]
        if outcome.reference is not None:
            cells.append(f"{candidate.quality[metric]:.4g}" if metric in candidate.quality else "-")
        table.add_row(*cells)
    return table


def print_verdict(console: Console, outcome: SearchOutcome) -> None:
    """What the re-measurement can say of the speed-up, where it is not a plain interval above or below 1."""
    ratio = outcome.speedup_ratio
    if outcome.speedup is None:
        console.print(f"the default configuration did not run here ({outcome.baseline.failure or 'not timed'}): "
                      "no speed-up ratio")
    elif ratio.busy:
        console.print(f"[bold]the machine is too busy to tell autotune's choice from the default: other processes "
                      f"used {ratio.others_cpu_share:.0%} of its CPU while they were re-measured ({ratio.low:.2f}x "
                      f"to {ratio.high:.2f}x, {ratio.confidence:.0%} interval, covers the runs' noise, not the "
                      "load)[/bold]; re-measure the profile with `autotune verify` on a quiet machine")
    elif ratio.verdict == "cannot tell":
        console.print(f"[bold]the runs cannot tell autotune's choice from the default: {ratio.low:.2f}x to "
                      f"{ratio.high:.2f}x ({ratio.confidence:.0%} interval)[/bold]; a busy machine spreads them, "
                      "so re-measure it on a quiet one with `autotune verify`")


def print_ablation(console: Console, effects: list[KnobEffect], metric: str | None) -> None:
    """What each chosen knob is worth: the chosen configuration's images/s over its own without that knob, measured
    beside it, and what memory and quality it has without it."""
    from autotune import knobs

    table = Table(title="What each chosen knob is worth: the chosen configuration vs itself without it, measured in "
                        "the same rounds")
    for column in ("knob", "chosen", "put back to", "chosen vs without it", "peak without it",
                   *([f"{metric} without it"] if metric else [])):
        table.add_column(column, justify="left" if column in ("knob", "chosen", "put back to") else "right")
    for effect in effects:
        table.add_row(effect.knob, knobs.show(effect.value), knobs.show(effect.default), escape(effect.shown_speedup()),
                      format_size(effect.peak_memory_bytes),
                      *([f"{effect.quality[metric]:.4g}" if metric in effect.quality else "-"] if metric else []))
    console.print(table)


def outcome_document(outcome: SearchOutcome) -> dict:
    """What `print_outcome` shows, as data (`--json`): where the profile and the study are, and each configuration
    re-measured beside the default, with the speed-up's interval and verdict."""

    def figures(candidate) -> dict:
        rate = candidate.images_per_s if candidate.measured else candidate.trial_images_per_s
        return {"settings": candidate.settings, "measured_in": "re-measurement" if candidate.measured else "trial",
                "images_per_s": rate.model_dump() if rate else None,
                "peak_memory_bytes": candidate.peak_memory_bytes or candidate.trial_peak_bytes,
                "quality": candidate.quality or candidate.trial_quality or None, "failure": candidate.failure}

    ratio = outcome.speedup_ratio
    return {"profile": str(outcome.profile_path) if outcome.profile_path else None, "study": outcome.study_name,
            "storage": outcome.storage, "trials": outcome.trials, "default": figures(outcome.baseline),
            "chosen": figures(outcome.best),
            "candidates": [{"label": c.label, **figures(c)} for c in outcome.candidates],
            "vs_default": {**ratio.record(), "verdict": ratio.verdict} if ratio is not None else None,
            "ablation": [effect.model_dump(mode="json") for effect in outcome.profile.metrics.ablation]}


def print_event(kind: str, data: dict, console: Console = CONSOLE) -> None:
    """One line for a finished trial or a phase of a command (`autotune worker`, `export`)."""
    if quiet():
        return
    if kind == "phase":
        console.print(f"[dim]{data['message']}[/dim]", highlight=False)
    else:
        console.print(f"{trial_line(data)} ({data['done']}/{data['total']} in the study)", highlight=False)


def trial_line(data: dict) -> str:
    """A finished trial in one line: what differs from the default, then its images/s and peak; or why it failed,
    then what it tried.

    >>> trial_line({"number": 3, "changed": "precision=bf16, batch_size=8", "images_per_s": 12.34,
    ...             "peak_memory_bytes": 2_500_000_000, "failure": None, "feasible": True})
    'trial 3: precision=bf16, batch_size=8: 12.3 images/s, peak 2.3 GiB'
    """
    changed = data.get("changed") or "defaults"
    if data.get("failure"):
        return f"trial {data['number']}: {data['failure']}: {data['reason']} ({changed})"
    figures = f"{data['images_per_s'] or 0:.3g} images/s, peak {format_size(data.get('peak_memory_bytes'))}"
    return f"trial {data['number']}: {changed}: {figures}" + ("" if data.get("feasible", True) else " (infeasible)")


class SearchProgress:
    """A rich progress bar: trial n/N, best images/s so far, time left."""

    def __init__(self, out: Console, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[best]}"), TextColumn("{task.fields[left]}"),
                                 console=out, transient=False)
        self.task = self.progress.add_task("trials", total=total, best="", left="")

    def __enter__(self) -> SearchProgress:
        if not quiet():
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if not quiet():
            self.progress.__exit__(*exc)

    def event(self, kind: str, data: dict) -> None:
        if quiet():
            return
        if kind == "phase":
            self.progress.console.print(f"[dim]{data['message']}[/dim]")
            return
        best = data["best_images_per_s"]
        self.progress.update(self.task, completed=data["done"],
                             best=f"best {best:.2f} img/s" if best else "best -",
                             left=f"~{data['seconds_left'] / 60:.1f} min left")
        self.progress.console.print(trial_line(data), style="dim" if data.get("failure") else None, highlight=False)
