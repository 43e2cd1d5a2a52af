"""Bad input and faults, one by one (issue 16): each promise of the README holds. A user's mistake or a fault of the
machine is one line, never a traceback; nothing leaks, nothing hangs."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import autotune


def test_autotune_search_stays_the_function_after_the_tuner_is_imported():
    first = autotune.search
    importlib.import_module("autotune.tuner")
    assert inspect.isfunction(first) and autotune.search is first
    # No submodule may share a public name: importing it would replace the name on the package.
    package = Path(autotune.__file__).parent
    assert [name for name in autotune.__all__ if (package / f"{name}.py").exists() or (package / name).is_dir()] == []
