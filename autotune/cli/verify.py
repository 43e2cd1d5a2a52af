"""`autotune verify`: a profile re-measured here in worker processes, each metric passed or failed against its record.

Like every command, its flags are checked before torch or diffusers is imported.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from autotune.exceptions import InvalidInput
from autotune.files import is_profile_file, split_pick
from autotune.options import DEFAULT_TOLERANCE, EXIT_CHECK_FAILED

from .flags import check_at_least_one, check_positive
from .outcome import quiet
from .profiles import JsonOption, SearchPathOption, print_json

console = Console()
progress = Console(stderr=True)  # with --json, stdout holds the JSON alone


def verify(
    profile: Annotated[str, typer.Argument(help="a profile file or name")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="the model to run it on (default: the "
                                                                       "profile's)")] = None,
    tolerance: Annotated[float, typer.Option(help="how far below the recorded images/s still passes (0.10: 10%)")]
    = DEFAULT_TOLERANCE,
    workers: Annotated[int, typer.Option(help="worker processes measured, one after the other")] = 5,
    rounds: Annotated[int, typer.Option(help="rounds of 2 timed runs in each worker, after its warm-up")] = 2,
    search_path: SearchPathOption = None,
    time_limit: Annotated[float | None, typer.Option("--timeout", "--time-limit", help="seconds after which no "
                                                     "further worker starts (the first always runs); --time-limit is "
                                                     "its older name")] = None,
    as_json: JsonOption = False,
) -> None:
    """Re-measure a profile here: images/s, peak memory and quality against its record; exit 1 when one fails."""
    if not 0 < tolerance < 1:
        raise InvalidInput(f"--tolerance must be between 0 and 1 (0.10 is 10%), got {tolerance}")
    check_at_least_one(("workers", workers), ("rounds", rounds))
    check_positive(("timeout", time_limit))
    is_profile_file(split_pick(profile)[0])  # a path to no file is refused here, not after torch is imported
    from autotune.compare.verify import verify_profile

    with (progress if as_json else console).status("re-measuring the profile in worker processes") as status:
        def show(message: str) -> None:
            if not quiet():
                (progress if as_json else console).log(message, highlight=False)
            status.update(message)

        result = verify_profile(profile, model, tolerance=tolerance, workers=workers, rounds=rounds,
                                search_path=search_path, time_limit_s=time_limit, on_progress=show)
    if as_json:
        print_json({"profile": profile, "model": result.model, "passed": result.passed,
                    "same_hardware": result.same_hardware, "hardware": result.hardware.model_dump(mode="json"),
                    "checks": [vars(check) for check in result.checks],
                    "images_per_s": result.images_per_s.model_dump() if result.images_per_s else None,
                    "worker_images_per_s": result.worker_images_per_s, "peak_memory_bytes": result.peak_memory_bytes,
                    "warmup_s": result.warmup_s, "others_cpu_share": result.others_cpu_share, "busy": result.busy})
        if not result.passed:
            raise typer.Exit(EXIT_CHECK_FAILED)
        return
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
        raise typer.Exit(EXIT_CHECK_FAILED)
