"""The `autotune` command line: thin typer commands over the Python API.

Known errors print one line and exit 2; `AUTOTUNE_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

# transformers announces optional image backends at import; that is noise on a command line.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from . import knobs, pipelines  # noqa: E402
from .exceptions import AutotuneError  # noqa: E402
from .hardware import probe as probe_machine  # noqa: E402
from .profile import json_schema  # noqa: E402
from .units import format_size  # noqa: E402

app = typer.Typer(help="Find the fastest diffusers configuration for this machine, and apply it.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
profiles_app = typer.Typer(help="Shipped and local profiles.", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")
console = Console()

ModelOption = Annotated[str, typer.Option("--model", "-m", help="hub id, local folder, or builtin:tiny-sd / "
                                                                  "builtin:sd15-arch")]


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
        table.add_row(row["knob"], _show(row["value"]), "yes" if row["available"] else "[red]no[/red]",
                      row["reason"] or row["note"] or "")
    console.print(table)


@profiles_app.command("schema")
def profiles_schema() -> None:
    """Print the profile's JSON Schema."""
    print(json.dumps(json_schema(), indent=2))


def _show(value: object) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def main() -> None:
    try:
        app()
    except (AutotuneError, ValueError, FileNotFoundError) as error:
        if os.environ.get("AUTOTUNE_DEBUG"):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"autotune: error: {message}", file=sys.stderr)
        sys.exit(2)
