"""`autotune profiles ...`: list, show, validate, select and the schema of the profiles an app ships; and
`autotune precompile`, which saves what a compiled profile compiles beside it.

Like the deployment path, these commands never import Optuna; heavy modules are imported inside each command, so a
bad argument is refused before torch is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from autotune.exceptions import ProfileError
from autotune.files import is_profile_file, split_pick
from autotune.options import DEFAULT_MODEL, EXIT_CHECK_FAILED
from autotune.units import format_size
from autotune.workload import parse_size

profiles_app = typer.Typer(help="Shipped and local profiles.", no_args_is_help=True)
console = Console()

ModelOption = Annotated[str, typer.Option("--model", "-m", help="hub id, local folder, or builtin:tiny-sd / "
                                                                  "builtin:sd15-arch")]
SearchPathOption = Annotated[list[str] | None, typer.Option(
    "--search-path", "-p", help="an app's folder of profiles, looked up after AUTOTUNE_PROFILE_PATH (repeatable)")]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of tables (for scripts)")]


def print_json(document: object) -> None:
    """A command's result as JSON on stdout, the one thing there (progress goes to stderr)."""
    print(json.dumps(document, indent=2, default=str))


@profiles_app.command("schema")
def profiles_schema() -> None:
    """Print the profile's JSON Schema."""
    from autotune.profile import json_schema

    print(json.dumps(json_schema(), indent=2))


@profiles_app.command("list")
def profiles_list(search_path: SearchPathOption = None, as_json: JsonOption = False) -> None:
    """Every profile found: AUTOTUNE_PROFILE_PATH, then --search-path, then the shipped ones."""
    from autotune.profile.library import list_profiles, profile_folders

    if as_json:
        print_json([{"name": entry.name, "origin": entry.origin, "path": str(entry.path), "error": entry.error,
                     "shadowed_by": entry.shadowed_by and str(entry.shadowed_by),
                     "profile": entry.profile.to_data() if entry.profile else None}
                    for entry in list_profiles(search_path)])
        return
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
    from autotune.profile import load_profile
    from autotune.profile.library import find_profile

    path = Path(name) if Path(name).is_file() else find_profile(name, search_path)
    profile = load_profile(path)
    console.print(f"[bold]{path}[/bold]", highlight=False, soft_wrap=True)
    print(profile.to_yaml(), end="")


@profiles_app.command("validate")
def profiles_validate(
    files: Annotated[list[str], typer.Argument(help="profile files to check (for an app's CI)")],
) -> None:
    """Check profile files: schema, values, and contradictions; exit 1 when any file has a problem."""
    from autotune.profile import load_profile
    from autotune.profile.library import profile_picks

    bad = 0
    for file in files:
        try:
            picks = profile_picks(Path(file)) if Path(file).is_file() else []
            problems = [f"{pick}: {problem}" for pick in picks for problem in load_profile(file, pick).contradictions()]
            if not picks:
                problems = load_profile(file).contradictions()
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
        raise typer.Exit(EXIT_CHECK_FAILED)


@profiles_app.command("select")
def profiles_select(
    model: ModelOption = DEFAULT_MODEL,
    search_path: SearchPathOption = None,
    size: Annotated[str | None, typer.Option(help="WIDTHxHEIGHT the app renders: a profile tuned at it first")] = None,
    as_json: JsonOption = False,
) -> None:
    """Show which profile `apply_profile(pipe, "auto")` would pick for a model here, and why each other is not."""
    wanted = parse_size(size) if size else None  # before torch loads
    from autotune.profile.library import select_profile

    selection = select_profile(model, search_path=search_path, size=wanted)
    if as_json:
        print_json({"model": model, "pipeline": selection.pipeline, "denoiser": selection.denoiser,
                    "hardware": selection.hardware.model_dump(mode="json"),
                    "free_memory_bytes": selection.free_memory_bytes,
                    "chosen": selection.ranking[0].label if selection.ranking else None,
                    "ranking": [{"profile": item.label, "images_per_s": item.images_per_s, "notes": item.notes}
                                for item in selection.ranking],
                    "rejected": [{"profile": item.label, "reasons": item.rejections} for item in selection.rejected]})
        if selection.profile is None:
            raise typer.Exit(EXIT_CHECK_FAILED)
        return
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
        raise typer.Exit(EXIT_CHECK_FAILED)


def precompile(
    profile: Annotated[str, typer.Argument(help="a compiled profile's file or name")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="the model to compile (default: the "
                                                                       "profile's)")] = None,
    search_path: SearchPathOption = None,
) -> None:
    """Compile a profile here and save what it compiled beside it, so that an app's first call skips the compile."""
    is_profile_file(split_pick(profile)[0])  # a path to no file is refused here, not after torch is imported
    from autotune.apply import precompile as save_compiled

    with console.status(f"rendering with {profile} to compile it"):
        done = save_compiled(profile, model, search_path)
    console.print(f"compiled in {done.seconds:.1f} s; {format_size(done.bytes)} of torch's compile artifacts "
                  f"written to {done.path}: apply_profile loads them on a machine like this one", highlight=False)
