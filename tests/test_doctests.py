"""The examples in autotune's docstrings hold: each module's doctests run, from the repository's root."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import autotune

ROOT = Path(__file__).resolve().parent.parent
# A `__main__` module runs its command when imported: it has no examples to run.
MODULES = sorted(info.name for info in pkgutil.walk_packages(autotune.__path__, "autotune.")
                 if not info.name.startswith("autotune.profiles") and not info.name.endswith(".__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_the_examples_in_the_docstrings_hold(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (run pytest " \
                               f"--doctest-modules {name.replace('.', '/')}.py to see them)"
