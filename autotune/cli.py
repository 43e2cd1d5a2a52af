"""The `autotune` command line: thin typer commands over the Python API.

Known errors print one line and exit 2; `AUTOTUNE_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

# transformers announces optional image backends at import; that is noise on a command line.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from . import knobs, pipelines  # noqa: E402
from .exceptions import AutotuneError, ProfileError, first_line  # noqa: E402
from .hardware import probe as probe_machine  # noqa: E402
from .profile import json_schema  # noqa: E402
from .study import STORAGE_ENV  # noqa: E402
from .units import format_size, parse_size  # noqa: E402

app = typer.Typer(help="Find the fastest diffusers configuration for this machine, and apply it.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
profiles_app = typer.Typer(help="Shipped and local profiles.", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")
console = Console()

ModelOption = Annotated[str, typer.Option("--model", "-m", help="hub id, local folder, or builtin:tiny-sd / "
                                                                  "builtin:sd15-arch")]
StorageOption = Annotated[str | None, typer.Option(
    envvar=STORAGE_ENV, help="the study's Optuna storage: postgresql://user:password@host/db, mysql+pymysql://..., "
                             "sqlite:///file.db, or a journal file's path")]
StudyOption = Annotated[str | None, typer.Option(help="the study's name")]
OutOption = Annotated[str, typer.Option("--out", "-o", help="profile to write ({study}: study name)")]
WorkersOption = Annotated[int, typer.Option(help="worker processes on this host: one per visible GPU, or CPU workers "
                                                 "(search --workers 1 runs the trials in its own process)")]
TopKOption = Annotated[int, typer.Option(help="how many of the study's best configurations to re-measure at the end")]
RoundsOption = Annotated[int, typer.Option(help="rounds of the interleaved re-measurement")]


class UsageError(AutotuneError, ValueError):
    """A flag's value is wrong."""


@app.command()
def probe(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
    model: Annotated[str | None, typer.Option("--model", "-m", help="also check knobs against this pipeline")] = None,
) -> None:
    """Print this machine's fingerprint and every knob value: available here or not, and why not."""
    fingerprint = probe_machine()
    pipe = pipelines.load(model) if model else None
    rows = knobs.availability(fingerprint.hardware, pipe)
    if as_json:
        print(json.dumps({**fingerprint.model_dump(mode="json"), "knobs": rows}, indent=2))
        return
    machine = Table(title="Machine", show_header=False)
    for section in (fingerprint.hardware, fingerprint.software):
        for key, value in section.model_dump().items():
            shown = format_size(value) if key.endswith("bytes") else value
            machine.add_row(key, "-" if shown is None else str(shown))
    console.print(machine)
    table = Table(title="Knobs" + (f" on {model}" if model else ""))
    for column in ("knob", "value", "available", "why not / note"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["knob"], knobs.show(row["value"]), "yes" if row["available"] else "[red]no[/red]",
                      row["reason"] or row["note"] or "")
    console.print(table)


@app.command()
def search(
    model: Annotated[str, typer.Option("--model", "-m", help="hub id, local folder, or builtin:tiny-sd")] = "",
    budget: Annotated[str | None, typer.Option(help="memory budget: 6GB, 6GiB, 6000MB, 6.5G or 80%")] = None,
    objective: Annotated[str, typer.Option(
        help="throughput (images/s), latency (s/image, batch 1), or pareto (images/s, memory and quality: writes a "
             "profile set with the picks fastest, balanced, smallest)")] = "throughput",
    trials: Annotated[int, typer.Option(help="trials in the study (a resumed study counts its finished ones)")] = 30,
    timeout: Annotated[float | None, typer.Option(help="stop starting trials after this many seconds")] = None,
    height: Annotated[int | None, typer.Option(help="image height (default: the pipeline's own)")] = None,
    width: Annotated[int | None, typer.Option(help="image width (default: the pipeline's own)")] = None,
    steps: Annotated[int | None, typer.Option(help="inference steps (default: the pipeline's own)")] = None,
    out: OutOption = "{study}.yaml",
    storage: Annotated[str | None, typer.Option(envvar=STORAGE_ENV, help="Optuna storage URL (default: SQLite "
                                                                       "next to --out)")] = None,
    study: Annotated[str | None, typer.Option(help="study name (default: model, hardware, size, objective)")] = None,
    seed: Annotated[int, typer.Option(help="sampler seed, recorded in the profile")] = 0,
    sampler: Annotated[str, typer.Option(help="tpe, gp or random")] = "tpe",
    trial_timeout: Annotated[float, typer.Option(help="seconds before a trial is killed as hung")] = 600.0,
    max_batch: Annotated[int, typer.Option(help="largest batch a trial tries")] = 16,
    pin: Annotated[list[str] | None, typer.Option(help="KNOB=VALUE: keep a knob at a value (repeatable)")] = None,
    quality_floor: Annotated[str | None, typer.Option(
        help="ssim=0.90, psnr=30, or ssim=-5% (of the reference's own noise): every image must score this against "
             "the reference rendering; scheduler, steps, precision and VAE tiling then join the search")] = None,
    reference_steps: Annotated[int, typer.Option(help="steps of the reference rendering")] = 50,
    report: Annotated[bool, typer.Option("--report", help="write the HTML report next to the profile")] = False,
    workers: WorkersOption = 1,
    top_k: TopKOption = 3,
    rounds: RoundsOption = 3,
) -> None:
    """Search the fastest configuration under a memory budget and write its profile."""
    from .quality import parse_floor
    from .search import run_search

    _check_choice("objective", objective, ("throughput", "latency", "pareto"))
    floor = parse_floor(quality_floor) if quality_floor is not None else None
    _check_choice("sampler", sampler, ("tpe", "gp", "random"))
    _check_at_least_one(("trials", trials), ("height", height), ("width", width), ("steps", steps),
                        ("max-batch", max_batch), ("workers", workers), ("top-k", top_k), ("rounds", rounds),
                        ("reference-steps", reference_steps))
    if budget is not None:
        parse_size(budget, probe_machine().hardware.memory_bytes)  # a bad budget fails before any work
    pinned = _parse_pins(pin or [])
    if not model:
        model = pipelines.DEFAULT_MODEL
        console.print(f"[dim]no --model given: using the built-in {model} (random weights, no download)[/dim]")
    progress = SearchProgress(console, trials)
    with progress:
        outcome = run_search(
            model, budget=budget, objective=objective, n_trials=trials, timeout_s=timeout, height=height,
            width=width, steps=steps, seed=seed, sampler=sampler, storage=storage, study_name=study,
            out=out, trial_timeout_s=trial_timeout, max_batch=max_batch, pinned=pinned, workers=workers,
            top_k=top_k, rounds=rounds, quality_floor=floor, reference_steps=reference_steps,
            on_event=progress.event,
        )
    _print_outcome(outcome)
    if report:
        _write_search_report(outcome)


@app.command()
def worker(
    storage: StorageOption = None,
    study: StudyOption = None,
    timeout: Annotated[float | None, typer.Option(help="stop starting trials after this many seconds")] = None,
    log: Annotated[str, typer.Option(help="where the trial processes write what torch prints ({study}: study "
                                          "name)")] = "{study}.log",
    workers: WorkersOption = 1,
) -> None:
    """Join a study and run its trials until it has its trial count or its time limit: one per host or per GPU."""
    from .distributed import run_worker

    storage, study = _study_flags(storage, study)
    _check_at_least_one(("workers", workers))
    completed = run_worker(storage, study, timeout_s=timeout, log_path=log.replace("{study}", study),
                           workers=workers, on_event=_print_event)
    if workers == 1:
        console.print(f"this worker completed {completed} trials of study {study}")


@app.command()
def export(
    storage: StorageOption = None,
    study: StudyOption = None,
    out: OutOption = "{study}.yaml",
    top_k: TopKOption = 3,
    rounds: RoundsOption = 3,
) -> None:
    """Write the profile of a study that workers filled, re-measuring its top candidates on this host."""
    from .distributed import export_profile

    storage, study = _study_flags(storage, study)
    _check_at_least_one(("top-k", top_k), ("rounds", rounds))
    outcome = export_profile(storage, study, out, top_k=top_k, rounds=rounds, on_event=_print_event)
    _print_outcome(outcome)


def _study_flags(storage: str | None, study: str | None) -> tuple[str, str]:
    if not storage:
        raise UsageError(f"--storage is required (or {STORAGE_ENV}): the URL of the study's storage")
    if not study:
        raise UsageError("--study is required: the name of the study")
    return storage, study


def _print_event(kind: str, data: dict) -> None:
    if kind == "phase":
        console.print(f"[dim]{data['message']}[/dim]", highlight=False)
    elif data.get("failure"):
        console.print(f"trial {data['number']}: {data['failure']}: {data['reason']} "
                      f"({data['done']}/{data['total']} in the study)", highlight=False)
    else:
        console.print(f"trial {data['number']}: {data['images_per_s'] or 0:.3g} images/s "
                      f"({data['done']}/{data['total']} in the study)", highlight=False)


class SearchProgress:
    """A rich progress bar: trial n/N, best images/s so far, time left."""

    def __init__(self, out: Console, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[best]}"), TextColumn("{task.fields[left]}"),
                                 console=out, transient=False)
        self.task = self.progress.add_task("trials", total=total, best="", left="")

    def __enter__(self) -> SearchProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def event(self, kind: str, data: dict) -> None:
        if kind == "phase":
            self.progress.console.print(f"[dim]{data['message']}[/dim]")
            return
        best = data["best_images_per_s"]
        self.progress.update(self.task, completed=data["done"],
                             best=f"best {best:.2f} img/s" if best else "best -",
                             left=f"~{data['seconds_left'] / 60:.1f} min left")
        if data.get("failure"):
            self.progress.console.print(f"[dim]trial {data['number']}: {data['failure']}: {data['reason']}[/dim]")


def _print_outcome(outcome) -> None:
    table = Table(title=f"Best of {outcome.trials} trials vs the default configuration, measured in the same run")
    metric = outcome.profile.goal.quality_floor.metric if outcome.profile.goal.quality_floor else "ssim"
    columns = ["configuration", "images/s", "spread", "s/call", "peak memory", "batch", "vs default"]
    if outcome.reference is not None:
        columns.append(metric)
    for column in columns:
        table.add_column(column, justify="right" if column != "configuration" else "left")
    # No ratio to a default configuration that failed here (`speedup` is None): its column shows "-".
    base = outcome.baseline.images_per_s.median if outcome.speedup is not None else 0.0
    rows = [("default", outcome.baseline), ("autotune", outcome.best)]
    if outcome.profile_set is not None:
        rows = [("default", outcome.baseline)] + [
            (name, next(c for c in outcome.candidates if c.trial == profile.provenance.trial))
            for name, profile in ((n, outcome.profile_set.pick(n)) for n in outcome.profile_set.picks)]
    for label, candidate in rows:
        rate = candidate.images_per_s
        cells = [label, f"{rate.median:.2f}", f"{rate.cv:.0%}", f"{candidate.latency.median:.3f}",
                 format_size(candidate.peak_memory_bytes), str(candidate.batch_size),
                 f"{rate.median / base:.2f}x" if base else "-"]
        if outcome.reference is not None:
            cells.append(f"{candidate.quality[metric]:.4g}" if metric in candidate.quality else "-")
        table.add_row(*cells)
    console.print(table)
    if outcome.speedup is None:
        console.print(f"the default configuration did not run here ({outcome.baseline.failure or 'not timed'}): "
                      "no speed-up ratio")
    changed = {k: v for k, v in outcome.best.settings.items() if v != knobs.get(k).default}
    console.print("settings: " + (", ".join(f"{k}={knobs.show(v)}" for k, v in changed.items()) or "defaults"))
    console.print(f"study {outcome.study_name} in {outcome.storage}")
    if outcome.profile_set is not None:
        console.print(f"profile set of {len(outcome.profile_set.profiles)} Pareto-optimal configurations written to "
                      f"[bold]{outcome.profile_path}[/bold]; apply one with "
                      f"apply_profile(pipe, \"{outcome.profile_path}#balanced\")")
    else:
        console.print(f"profile written to [bold]{outcome.profile_path}[/bold]")


def _write_search_report(outcome) -> None:
    import optuna

    from .quality import load_images
    from .report import write_report

    if outcome.profile_path is None:
        return
    study = optuna.load_study(study_name=outcome.study_name, storage=outcome.storage_url)
    images = load_images(outcome.images_path) if outcome.images_path else None
    path = write_report(study, outcome.profile_path.with_suffix(".html"), outcome.profile, images)
    console.print(f"report written to [bold]{path}[/bold]")


def _parse_pins(pins: list[str]) -> dict[str, object]:
    import yaml

    parsed: dict[str, object] = {}
    for pin in pins:
        name, sep, value = pin.partition("=")
        if not sep or not name:
            raise UsageError(f"--pin takes KNOB=VALUE, got {pin!r}")
        if name not in knobs.KNOBS:
            raise UsageError(f"--pin: unknown knob {name!r}; known: {', '.join(k.name for k in knobs.in_order())}")
        parsed[name] = yaml.safe_load(value)  # YAML scalars, as in a profile: true, 4, null, fp16
    return parsed


def _check_at_least_one(*flags: tuple[str, int | None]) -> None:
    for flag, value in flags:
        if value is not None and value < 1:
            raise UsageError(f"--{flag} must be at least 1, got {value}")


def _check_choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"--{flag} must be one of {', '.join(allowed)}, got {value!r}")


@profiles_app.command("schema")
def profiles_schema() -> None:
    """Print the profile's JSON Schema."""
    print(json.dumps(json_schema(), indent=2))


SearchPathOption = Annotated[list[str] | None, typer.Option(
    "--search-path", "-p", help="an app's folder of profiles, looked up after AUTOTUNE_PROFILE_PATH (repeatable)")]


@profiles_app.command("list")
def profiles_list(search_path: SearchPathOption = None) -> None:
    """Every profile found: AUTOTUNE_PROFILE_PATH, then --search-path, then the shipped ones."""
    from .library import list_profiles, profile_folders

    table = Table(title="Profiles")
    for column in ("name", "from", "hardware", "model", "workload", "goal", "images/s", "peak memory"):
        table.add_column(column, justify="right" if column in ("images/s", "peak memory") else "left",
                         overflow="fold")
    for entry in list_profiles(search_path):
        name = entry.name if entry.shadowed_by is None else f"[dim]{entry.name} (hidden)[/dim]"
        if entry.profile is None:
            error = (entry.error or "").removeprefix(f"{entry.path}: ")
            table.add_row(name, entry.origin, f"[red]invalid: {error}[/red]", "", "", "", "", "")
            continue
        table.add_row(name, entry.origin, *_headline(entry.profile))
    console.print(table)
    folders = ", ".join(f"{folder.path} ({folder.origin})" for folder in profile_folders(search_path))
    console.print(f"[dim]looked in {folders}[/dim]")


def _headline(profile) -> list[str]:
    workload, settings, goal, metrics = profile.workload, profile.settings, profile.goal, profile.metrics
    steps = f", {settings.steps} steps" if settings.steps else ""
    rate = metrics.images_per_s.median if metrics and metrics.images_per_s else None
    return [
        profile.hardware.describe(),
        f"{profile.model.id} ({profile.model.pipeline})",
        f"{workload.height}x{workload.width}{steps}, batch {settings.batch_size}",
        f"{goal.objective}, budget {format_size(goal.memory_budget_bytes)}"
        + (f", {goal.quality_floor.metric} >= {goal.quality_floor.min}" if goal.quality_floor else ""),
        f"{rate:.3g}" if rate is not None else "-",
        format_size(metrics.peak_memory_bytes if metrics else None),
    ]


@profiles_app.command("show")
def profiles_show(
    name: Annotated[str, typer.Argument(help="a profile name from `autotune profiles list`, or a path")],
    search_path: SearchPathOption = None,
) -> None:
    """Print one profile: where it was found, then its YAML."""
    from pathlib import Path

    from .library import find_profile
    from .profile import load_profile

    path = Path(name) if Path(name).is_file() else find_profile(name, search_path)
    profile = load_profile(path)
    console.print(f"[bold]{path}[/bold]", highlight=False, soft_wrap=True)
    print(profile.to_yaml(), end="")


@profiles_app.command("validate")
def profiles_validate(
    files: Annotated[list[str], typer.Argument(help="profile files to check (for an app's CI)")],
) -> None:
    """Check profile files: schema, values, and contradictions; exit 1 when any file has a problem."""
    from .library import check_profile, profile_picks
    from .profile import load_profile

    bad = 0
    for file in files:
        try:
            picks = profile_picks(Path(file)) if Path(file).is_file() else []
            problems = [f"{pick}: {problem}" for pick in picks for problem in check_profile(load_profile(file, pick))]
            if not picks:
                problems = check_profile(load_profile(file))
        except ProfileError as error:
            problems = [str(error).removeprefix(f"{file}: ")]
        if problems:
            bad += 1
            for problem in problems:
                console.print(f"[red]invalid[/red] {file}: {problem}", highlight=False, soft_wrap=True)
        else:
            console.print(f"[green]ok[/green] {file}", highlight=False)
    if bad:
        console.print(f"{bad} of {len(files)} profiles have problems")
        raise typer.Exit(1)


@profiles_app.command("select")
def profiles_select(
    model: ModelOption = pipelines.DEFAULT_MODEL,
    search_path: SearchPathOption = None,
) -> None:
    """Show which profile `apply_profile(pipe, "auto")` would pick for a model here, and why each other is not."""
    from .library import select_profile

    selection = select_profile(model, search_path=search_path)
    console.print(f"{selection.pipeline} with a {selection.denoiser} ({model}) on {selection.hardware.describe()}, "
                  f"{format_size(selection.free_memory_bytes)} free", highlight=False)
    table = Table(title="Ranking" if selection.ranking else "Ranking: no profile fits, nothing would be applied")
    for column in ("rank", "profile", "images/s", "why"):
        table.add_column(column)
    for number, item in enumerate(selection.ranking, 1):
        rate = item.images_per_s
        table.add_row("chosen" if number == 1 else str(number), item.label, f"{rate:.3g}" if rate else "-",
                      "; ".join(item.notes))
    for item in selection.rejected:
        table.add_row("[red]rejected[/red]", item.label, "", "; ".join(item.rejections))
    console.print(table)
    if selection.profile is None:
        console.print("no profile fits: tune this model here with autotune search, or ship one made on this hardware")
        raise typer.Exit(1)


@app.command()
def verify(
    profile: Annotated[str, typer.Argument(help="a profile file or name")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="the model to run it on (default: the "
                                                                       "profile's)")] = None,
    tolerance: Annotated[float, typer.Option(help="how far below the recorded images/s still passes (0.10: 10%)")]
    = 0.10,
    workers: Annotated[int, typer.Option(help="worker processes measured, one after the other")] = 5,
    rounds: Annotated[int, typer.Option(help="rounds of 2 timed runs in each worker, after its warm-up")] = 2,
    search_path: SearchPathOption = None,
) -> None:
    """Re-measure a profile here: images/s, peak memory and quality against its record; exit 1 when one fails."""
    from .verify import verify_profile

    if not 0 < tolerance < 1:
        raise UsageError(f"--tolerance must be between 0 and 1 (0.10 is 10%), got {tolerance}")
    _check_at_least_one(("workers", workers), ("rounds", rounds))
    with console.status("re-measuring the profile in worker processes"):
        result = verify_profile(profile, model, tolerance=tolerance, workers=workers, rounds=rounds,
                                search_path=search_path)
    recorded = result.profile.hardware
    console.print(f"profile measured on {recorded.describe()}; verified on {result.hardware.describe()}"
                  + ("" if result.same_hardware else " [yellow](another machine: budget and floor only)[/yellow]"),
                  highlight=False)
    table = Table(title=f"{profile} on {result.model}")
    for column in ("metric", "recorded", "measured here", "limit", "result", "note"):
        table.add_column(column)
    colour = {"pass": "green", "fail": "red", "skip": "yellow"}
    for check in result.checks:
        table.add_row(check.metric, check.recorded, check.measured, check.limit,
                      f"[{colour[check.status]}]{check.status}[/{colour[check.status]}]", check.note)
    console.print(table)
    settings, workload = result.profile.settings, result.profile.workload
    warmup = f", slowest warm-up {result.warmup_s:.1f} s" if result.warmup_s is not None else ""
    console.print(f"measured {workload.height}x{workload.width}, batch {settings.batch_size}, "
                  f"{settings.steps or 'default'} steps: {result.workers} worker processes in turn x {result.rounds} "
                  f"rounds x 2 runs{warmup}; each worker's median: "
                  f"{', '.join(f'{rate:.3g}' for rate in result.worker_images_per_s) or '-'} images/s; "
                  f"other processes used {result.others_cpu_share:.0%} of the CPU meanwhile", highlight=False)
    if result.busy:
        console.print("[yellow]warning: the machine was busy while verify measured; timings are unreliable[/yellow]")
    if not result.passed:
        raise typer.Exit(1)


@app.command()
def report(
    source: Annotated[str, typer.Argument(metavar="STUDY_OR_PROFILE",
                                          help="a profile YAML, a study's SQLite .db file, or a storage URL")],
    output: Annotated[str | None, typer.Option("--output", "-o", help="the HTML file to write (default: next to "
                                                                       "the profile or .db, as <stem>.html)")] = None,
    study: Annotated[str | None, typer.Option(help="study name (needed when the storage holds several)")] = None,
    storage: Annotated[str | None, typer.Option(help="storage URL instead of the one the profile records")] = None,
) -> None:
    """Write one self-contained HTML page about a search: trade-offs, knob importances, history, top
    configurations, and the reference images beside the chosen configurations'."""
    from .report import report_source, write_report

    found = report_source(source, study_name=study, storage=storage)
    print(write_report(found.study, output or found.default_output, found.profile, found.images))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt as stop:  # a search's says how to resume
        print(f"autotune: {str(stop) or 'interrupted'}", file=sys.stderr)
        sys.exit(130)
    except (AutotuneError, ValueError, FileNotFoundError) as error:
        if os.environ.get("AUTOTUNE_DEBUG"):
            raise
        message = first_line(error)
        print(f"autotune: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
