"""The Python API's manners: what it exports, that it ships type information, and that it leaves an app's logging
as it found it."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import optuna

import autotune
from autotune.tuner.study import optuna_warnings_only


def test_every_exported_name_resolves_and_the_warnings_can_be_filtered():
    for name in autotune.__all__:
        assert getattr(autotune, name) is not None, name
    assert issubclass(autotune.FallbackWarning, autotune.AutotuneWarning)
    assert issubclass(autotune.ProfileMismatchWarning, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", autotune.FallbackWarning)  # what an app that expects fallbacks writes


def test_the_package_says_it_is_typed():
    assert (Path(autotune.__file__).parent / "py.typed").is_file()


def test_importing_the_search_leaves_optunas_logging_alone():
    code = ("import optuna; optuna.logging.set_verbosity(optuna.logging.DEBUG); "
            "import autotune.tuner.run, autotune.tuner.distributed, autotune.tuner.trials; "
            "assert optuna.logging.get_verbosity() == optuna.logging.DEBUG")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_a_search_quiets_optuna_only_while_it_runs():
    optuna.logging.set_verbosity(optuna.logging.INFO)
    with optuna_warnings_only():
        assert optuna.logging.get_verbosity() == optuna.logging.WARNING
    assert optuna.logging.get_verbosity() == optuna.logging.INFO


def test_a_recommendation_applies_as_a_profile_does(monkeypatch, fingerprint):
    from autotune import apply_profile, knobs, pipelines, recommend
    from autotune.recommendation import Recommendation

    chosen = recommend("builtin:tiny-sd-random", budget="4GB")
    assert isinstance(chosen, Recommendation)
    pipe = pipelines.load("builtin:tiny-sd-random")
    assert apply_profile(pipe, chosen) is pipe
    assert {name: knobs.get(name).read(pipe) for name in ("precision", "channels_last")} == {
        name: knobs.get(name).reads_as(chosen.settings[name], pipe) for name in ("precision", "channels_last")}
    # A recommendation that changes something is applied as such (the CPU's own is mostly the pipeline as loaded).
    forced = Recommendation({**chosen.settings, "channels_last": True}, {})
    assert knobs.get("channels_last").read(apply_profile(pipelines.load("builtin:tiny-sd-random"), forced)) is True


def test_search_takes_exactly_the_search_options_with_their_defaults():
    import dataclasses
    import inspect

    from autotune.options import SearchOptions
    from autotune.tuner.run import search

    parameters = inspect.signature(search).parameters
    fields = {f.name: f for f in dataclasses.fields(SearchOptions)}
    assert list(parameters)[1:] == list(fields)  # the same options, in the same order, beside the model
    defaults = SearchOptions()
    for name, parameter in list(parameters.items())[1:]:
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, name
        assert parameter.default == getattr(defaults, name) or parameter.default is None, name


def test_the_options_are_checked_when_made_and_named_as_the_caller_names_them(tmp_path):
    import pytest
    from typer.testing import CliRunner

    from autotune.cli import app
    from autotune.exceptions import InvalidOption
    from autotune.options import SearchOptions
    from autotune.tuner.run import run_search

    with pytest.raises(InvalidOption, match=r"^trial_timeout_s must be more than 0 seconds, got 0$"):
        SearchOptions(trial_timeout_s=0)
    with pytest.raises(InvalidOption, match=r"^n_trials must be at least 1, got 0$"):
        run_search("builtin:tiny-sd-random", n_trials=0)
    with pytest.raises(TypeError, match="not both"):
        run_search("builtin:tiny-sd-random", SearchOptions(), n_trials=2)
    with pytest.raises(InvalidOption, match=r"^only takes a list of one or more values for each knob; steps: '4'$"):
        SearchOptions(only={"steps": "4"})
    with pytest.raises(InvalidOption, match=r"^only names compile, pinned too: pin a knob or narrow it, not both$"):
        SearchOptions(only={"compile": ["none"]}, pinned={"compile": "none"})
    result = CliRunner().invoke(app, ["search", "--trial-timeout", "0", "--out", str(tmp_path / "p.yaml")])
    assert str(result.exception) == "--trial-timeout must be more than 0 seconds, got 0"  # `autotune` exits 2 on it
    assert list(tmp_path.iterdir()) == []
