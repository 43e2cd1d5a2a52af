"""Bad input and faults, one by one (issue 16): each promise of the README holds. A user's mistake or a fault of the
machine is one line, never a traceback; nothing leaks, nothing hangs."""

from __future__ import annotations

import importlib
import inspect
import time
from pathlib import Path

import pytest

import autotune
from autotune.exceptions import ProfileError
from autotune.profile import load_profile


def test_autotune_search_stays_the_function_after_the_tuner_is_imported():
    first = autotune.search
    importlib.import_module("autotune.tuner")
    assert inspect.isfunction(first) and autotune.search is first
    # No submodule may share a public name: importing it would replace the name on the package.
    package = Path(autotune.__file__).parent
    assert [name for name in autotune.__all__ if (package / f"{name}.py").exists() or (package / name).is_dir()] == []


def _one_short_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and len(text) < 600, text
    return text


def test_a_yaml_alias_bomb_is_refused_fast_in_one_short_line(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nschema: *a9\n")
    started = time.perf_counter()
    with pytest.raises(ProfileError) as error:
        load_profile(bomb)
    assert time.perf_counter() - started < 2
    assert "expands to more than" in _one_short_line(error.value)


def test_deep_nesting_and_a_self_reference_are_one_line_not_a_recursion_error(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("schema: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ProfileError) as error:
        load_profile(deep)
    assert "nested deeper than" in _one_short_line(error.value)
    looped = tmp_path / "looped.yaml"
    looped.write_text("schema: &a [*a]\n")
    with pytest.raises(ProfileError) as error:
        load_profile(looped)
    assert "refers to itself" in _one_short_line(error.value)


def test_a_bad_value_is_quoted_short(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text(f"schema: {'x' * 100000}\n")
    with pytest.raises(ProfileError) as error:
        load_profile(path)
    _one_short_line(error.value)
