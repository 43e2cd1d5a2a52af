"""How the `autotune` command ends: one line and an exit status for an error the user can cause, the traceback of
a bug, and the versions a bug report needs. Light: it runs before any command imports torch.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from typing import Any

from autotune.exceptions import AutotuneError, NoProfileFits, NothingFits, StorageFailed, first_line
from autotune.options import EXIT_BUG, EXIT_ERROR, EXIT_NOTHING_FITS

_TRACEBACKS = {"always": False}


def show_tracebacks() -> None:
    """Every error with its traceback (`--verbose`), as `AUTOTUNE_DEBUG=1` asks from the environment."""
    _TRACEBACKS["always"] = True


def _debugging() -> bool:
    return _TRACEBACKS["always"] or bool(os.environ.get("AUTOTUNE_DEBUG"))


def versions() -> str:
    """autotune's version and the libraries' it runs with, read without importing them (no torch start-up)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    from autotune import __version__

    found = []
    for name in ("torch", "diffusers", "transformers", "optuna", "torchao"):
        try:
            found.append(f"{name} {installed(name)}")
        except PackageNotFoundError:
            continue
    return f"autotune {__version__} ({', '.join(found)})"


def run(command: Any) -> None:
    """Run the click command of the typer app, and exit. Only autotune's own errors become one line: any other
    exception is a bug, and its traceback is what a bug report needs."""
    import typer

    threading.excepthook = _quiet_storage_threads
    _TRACEBACKS["always"] = False  # a new command line (tests run several in one process)
    try:
        # Not standalone: click's own errors (a bad flag, a missing argument) come here, to be one line too.
        status = command.main(prog_name="autotune", standalone_mode=False)
    except typer.TyperException as error:  # typer's own click: its NoArgsIsHelpError is not exported by name
        if type(error).__name__ == "NoArgsIsHelpError":  # `autotune` alone, or a group without its command
            error.show()  # type: ignore[attr-defined]
            sys.exit(EXIT_ERROR)
        ctx = getattr(error, "ctx", None)
        print(f"autotune: error: {first_line(error.format_message())} (see {ctx.command_path if ctx else 'autotune'} "
              "--help)", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except (KeyboardInterrupt, typer.Abort) as stop:  # a search's says how to resume
        stop = stop.__cause__ or stop
        print(f"autotune: {str(stop) or 'interrupted'}", file=sys.stderr)
        sys.exit(130)
    except AutotuneError as error:
        if _debugging():
            raise
        message = first_line(error)
        print(f"autotune: error: {message}", file=sys.stderr)
        sys.exit(EXIT_NOTHING_FITS if isinstance(error, (NothingFits, NoProfileFits)) else EXIT_ERROR)
    except Exception:
        traceback.print_exc()
        print(f"autotune: this is a bug in {versions()}: please report it with the traceback above",
              file=sys.stderr)
        sys.exit(EXIT_BUG)
    sys.exit(status if isinstance(status, int) else 0)


def _quiet_storage_threads(args: threading.ExceptHookArgs) -> None:
    # Optuna's heartbeat thread often meets a failed storage first; the command meets it next and says it in one line.
    if isinstance(args.exc_value, StorageFailed) and not _debugging():
        return
    threading.__excepthook__(args)
