"""The command line's contract: a user's mistake is one line and status 2, refused before torch is imported; a bug
keeps its traceback. Run as a user runs it: the console script in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import autotune_process

from autotune import cli
from autotune.exceptions import InvalidInput
from autotune.options import EXIT_BUG, EXIT_NOTHING_FITS, OBJECTIVES, PRUNERS, SAMPLERS
from autotune.profile import library


def _modules_loaded_by(*args: str) -> tuple[int, set[str]]:
    """Run the CLI in a fresh interpreter; the exit status and which heavy modules it had imported by its end."""
    program = textwrap.dedent(f"""
        import atexit, sys
        heavy = ("torch", "diffusers", "optuna")
        atexit.register(lambda: print("loaded:" + ",".join(m for m in heavy if m in sys.modules)))
        sys.argv = ["autotune", *{list(args)!r}]
        from autotune.cli import main
        main()
    """)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "COLUMNS": "200"})
    loaded = result.stdout.strip().splitlines()[-1].removeprefix("loaded:")
    return result.returncode, set(filter(None, loaded.split(",")))


@pytest.mark.parametrize(("args", "message"), [
    (["--budget", "6XB"], "size '6XB' is not understood; write it like 6GB, 6GiB, 6000MB, 6.5G or 80%"),
    (["--budget", "150%"], "size '150%' must be a share between 0% and 100% of the device's memory"),
    (["--objective", "nope"], f"--objective must be one of {', '.join(OBJECTIVES)}, got 'nope'"),
    (["--sampler", "nope"], f"--sampler must be one of {', '.join(SAMPLERS)}, got 'nope'"),
    (["--pruner", "median"], f"--pruner must be one of {', '.join(PRUNERS)}, got 'median'"),
    (["--only", "quantization"], "--only takes KNOB=VALUE, got 'quantization'"),
    (["--only", "quantization=none,"], "--only takes KNOB=VALUE,VALUE,..., got 'quantization=none,'"),
    (["--only", "quantisation=none"], "--only: unknown knob 'quantisation'; known: "),
    (["--only", "compile=none,default", "--pin", "compile=none"],
     "--only names compile, pinned too: pin a knob or narrow it, not both"),
])
def test_a_bad_search_flag_is_one_line_and_status_2(args, message):
    result = autotune_process("search", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith(f"autotune: error: {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [["search", "--budget", "6XB"], ["search", "--quality-floor", "ssim=2"],
                                  ["search", "--only", "quantization"], ["verify", "x.yaml", "--tolerance", "2"],
                                  ["worker"], ["report", "no-such-study.db"], ["verify", "gone.yaml"],
                                  ["precompile", "profiles/gone.yaml#fastest"]])
def test_a_bad_flag_is_refused_before_torch_diffusers_or_optuna_is_imported(args):
    status, loaded = _modules_loaded_by(*args)
    assert status == 2 and loaded == set()


def test_profiles_list_never_imports_optuna():
    status, loaded = _modules_loaded_by("profiles", "list")
    assert status == 0 and "optuna" not in loaded
    assert "torch" in loaded  # the check above is not vacuous: this path does import the knob registry


def test_a_bug_is_not_hidden_behind_a_friendly_line(monkeypatch, capsys):
    def broken(search_path=None):
        raise ValueError("a bug, not the user's mistake")

    monkeypatch.setattr(library, "list_profiles", broken)
    monkeypatch.setattr(sys, "argv", ["autotune", "profiles", "list"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    error = capsys.readouterr().err
    assert exit_.value.code == EXIT_BUG == 70  # told apart from a failed check (1) and a user's mistake (2)
    assert "Traceback (most recent call last)" in error and "ValueError: a bug, not the user's mistake" in error
    assert error.strip().splitlines()[-1].startswith("autotune: this is a bug in autotune 0.1.0 (torch ")


def test_version_completion_and_the_exit_status_of_nothing_fits():
    version = autotune_process("--version")
    assert version.returncode == 0 and version.stdout.startswith("autotune 0.1.0 (torch ")
    # The shell named, as typer's own tests name it: detecting it reads the parent processes, which vary under CI.
    script = Path(sys.executable).with_name("autotune")
    completion = subprocess.run([str(script), "--show-completion", "bash"], capture_output=True, text=True,
                                timeout=300, env={**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert completion.returncode == 0 and "complete" in completion.stdout and "autotune" in completion.stdout
    # No shipped profile is for tiny-flux: "auto" finds none, and says so with its own status.
    nothing = autotune_process("precompile", "auto", "--model", "builtin:tiny-flux-random")
    assert nothing.returncode == EXIT_NOTHING_FITS == 3, nothing.stderr
    assert nothing.stderr.startswith("autotune: error: ") and nothing.stderr.strip().count("\n") == 0


def test_an_autotune_error_becomes_one_line_unless_autotune_debug_is_set(monkeypatch, capsys):
    def refused(search_path=None):
        raise InvalidInput("the user's mistake\nsecond line")

    monkeypatch.setattr(library, "list_profiles", refused)
    monkeypatch.setattr(sys, "argv", ["autotune", "profiles", "list"])
    monkeypatch.delenv("AUTOTUNE_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2 and capsys.readouterr().err == "autotune: error: the user's mistake\n"
    monkeypatch.setenv("AUTOTUNE_DEBUG", "1")
    with pytest.raises(InvalidInput):
        cli.main()
    monkeypatch.delenv("AUTOTUNE_DEBUG")
    monkeypatch.setattr(sys, "argv", ["autotune", "-v", "profiles", "list"])  # --verbose: the same as the variable
    with pytest.raises(InvalidInput):
        cli.main()


def test_quiet_and_verbose_are_one_or_the_other(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["autotune", "-q", "-v", "profiles", "list"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2 and "--quiet and --verbose ask for opposite things" in capsys.readouterr().err


def test_every_error_autotune_raises_on_purpose_is_also_the_builtin_it_means():
    import autotune.exceptions as exceptions

    errors = [value for value in vars(exceptions).values()
              if isinstance(value, type) and issubclass(value, exceptions.AutotuneError)
              and value is not exceptions.AutotuneError]
    assert errors
    vague = (Exception, BaseException, object)
    for error in errors:
        assert any(base.__module__ == "builtins" and base not in vague for base in error.__mro__), (
            f"{error.__name__} inherits no builtin error but Exception")


@pytest.mark.parametrize(("args", "message"), [
    (["search", "--bogus"], "No such option: --bogus"),
    (["search", "--trials", "x"], "Invalid value for '--trials'"),
    (["verify"], "Missing argument 'profile'."),
])
def test_a_flag_the_parser_refuses_is_one_line_and_status_2_too(args, message):
    result = autotune_process(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"autotune: error: {message}") and result.stderr.strip().count("\n") == 0
    assert result.stderr.strip().endswith(f"(see autotune {args[0]} --help)")


def test_each_short_flag_means_one_long_flag_in_every_command():
    import click
    import typer

    meanings: dict[str, set[str]] = {}

    def walk(command: click.Command) -> None:
        for param in command.params:
            shorts = [o for o in param.opts if len(o) == 2]
            longs = [o for o in param.opts if o.startswith("--")]
            for short in shorts:
                meanings.setdefault(short, set()).add(longs[0])
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(cli.app))
    assert {short: longs for short, longs in meanings.items() if len(longs) > 1} == {}
    assert meanings["-o"] == {"--out"} and meanings["-m"] == {"--model"}
