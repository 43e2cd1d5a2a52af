"""Bad input and faults, one by one (issue 16): each promise of the README holds. A user's mistake or a fault of the
machine is one line, never a traceback; nothing leaks, nothing hangs."""

from __future__ import annotations

import errno
import importlib
import inspect
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import psutil
import pytest
from conftest import autotune_cli, autotune_process

import autotune
from autotune import files
from autotune.compare.candidates import Candidate
from autotune.exceptions import AutotuneError, AutotuneWarning, CannotWrite, ProfileError, TrialFailed
from autotune.profile import library, load_profile
from autotune.tuner import study
from autotune.tuner.outcome import SearchOutcome, write_outcome


def test_autotune_search_stays_the_function_after_the_tuner_is_imported():
    first = autotune.search
    importlib.import_module("autotune.tuner.run")
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


@pytest.fixture
def folder_with_a_bad_file(tmp_path) -> Path:
    folder = tmp_path / "app"
    folder.mkdir()
    shutil.copy(library.shipped_profiles_dir() / "tiny-sd-cpu.yaml", folder / "good.yaml")
    (folder / "latin1.yaml").write_bytes("schema: 1\nhardware: {cpu: Proc\xe9ssor}\n".encode("latin-1"))
    return folder


def test_a_non_utf8_profile_is_skipped_with_a_warning_and_the_rest_still_works(folder_with_a_bad_file, tiny_pipe):
    folder = folder_with_a_bad_file
    with pytest.warns(AutotuneWarning, match=r"skipping .*latin1\.yaml: not UTF-8 text"):
        entries = {entry.name: entry for entry in library.list_profiles(folder)}
    assert entries["good"].profile is not None and entries["latin1"].profile is None
    with pytest.warns(AutotuneWarning):
        selection = library.select_profile(tiny_pipe, search_path=folder)
    assert any("latin1.yaml: not UTF-8" in "; ".join(item.rejections) for item in selection.rejected)
    for args in (["list"], ["show", "good"], ["select"]):
        result = autotune_cli("profiles", *args, "--search-path", str(folder))
        assert result.exit_code in (0, 1) and not isinstance(result.exception, UnicodeDecodeError), result.output
    result = autotune_cli("profiles", "validate", str(folder / "latin1.yaml"), str(folder / "good.yaml"))
    assert result.exit_code == 1
    assert f"invalid {folder / 'latin1.yaml'}: not UTF-8 text" in result.output
    assert f"ok {folder / 'good.yaml'}" in result.output


def test_a_link_out_of_a_profile_folder_is_never_followed(tmp_path):
    secret = tmp_path / "secret.yaml"
    shutil.copy(library.shipped_profiles_dir() / "tiny-sd-cpu.yaml", secret)
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "leak.yaml").symlink_to(secret)
    with pytest.raises(ProfileError, match="leads outside"):
        library.find_profile("leak", folder)
    result = autotune_cli("profiles", "show", "leak", "--search-path", str(folder))
    assert isinstance(result.exception, ProfileError) and "tiny-sd" not in result.output
    (entry,) = [entry for entry in library.list_profiles(folder) if entry.name == "leak"]
    assert entry.profile is None and "leads outside" in entry.error


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://tuner@db/autotune?password=s3cret-pw",
    "postgresql+psycopg://db/autotune?sslmode=require&PassWord=s3cret-pw",
    "mysql+pymysql://tuner@db/autotune?pwd=s3cret-pw",
    "postgresql+psycopg://db/autotune?db_password=s3cret-pw&pass=s3cret-pw",
    "postgresql+psycopg://tuner:s3cret-pw@db/autotune",
])
def test_a_password_in_the_query_string_is_hidden_too(url):
    assert "s3cret-pw" not in study.redact(url) and "***" in study.redact(url)
    assert "sslmode=require" in study.redact(url) or "sslmode" not in url


def test_trial_failed_is_one_of_autotune_s_errors():
    assert issubclass(TrialFailed, AutotuneError) and issubclass(TrialFailed, RuntimeError)


def test_a_full_disk_at_the_profile_write_is_one_line_that_keeps_the_study(tmp_path, monkeypatch):
    profile = load_profile(library.shipped_profiles_dir() / "tiny-sd-cpu.yaml")
    baseline = Candidate("default", {})
    outcome = SearchOutcome(profile, baseline, baseline, [], "tiny-study", "sqlite:////work/tiny.db", 1)

    def full(source, target):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "replace", full)
    with pytest.raises(CannotWrite) as error:
        write_outcome(outcome, tmp_path / "tiny.yaml", None)
    line = _one_short_line(error.value)
    assert line.startswith(f"cannot write {tmp_path / 'tiny.yaml'}: No space left on device")
    assert "the study 'tiny-study' is kept in sqlite:////work/tiny.db" in line
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def _cli_process(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    program = textwrap.dedent(f"""
        import atexit, sys
        atexit.register(lambda: print("loaded:" + ",".join(m for m in ("torch", "optuna") if m in sys.modules)))
        sys.argv = ["autotune", *{list(args)!r}]
        from autotune.cli import main
        main()
    """)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, cwd=cwd)
    loaded = result.stdout.strip().splitlines()[-1].removeprefix("loaded:") if result.stdout.strip() else ""
    return result, set(filter(None, loaded.split(",")))


def test_an_output_folder_that_cannot_be_written_is_refused_before_anything_loads(tmp_path):
    (tmp_path / "a-file").write_text("")
    result, loaded = _cli_process("search", "--trials", "1", "--out", str(tmp_path / "a-file" / "p.yaml"), cwd=tmp_path)
    assert result.returncode == 2 and loaded == set(), result.stderr
    assert result.stderr.strip().startswith(f"autotune: error: cannot write {tmp_path / 'a-file' / 'p.yaml'}: ")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file"]  # no study database, no log


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_output_folder_is_refused_before_anything_loads(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    result, loaded = _cli_process("search", "--trials", "1", "--out", str(folder / "p.yaml"), cwd=tmp_path)
    assert result.returncode == 2 and loaded == set(), result.stderr
    assert "is not a writable folder" in result.stderr


def _complete_trials(database: Path) -> int:
    if not database.exists():
        return 0
    try:
        with sqlite3.connect(database) as connection:
            return connection.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:  # the tables are still being made
        return 0


@pytest.mark.slow
def test_ctrl_c_in_a_search_prints_the_resume_line_and_no_traceback(tmp_path):
    script = Path(sys.executable).with_name("autotune")
    search = subprocess.Popen(
        [str(script), "search", "--trials", "40", "--steps", "2", "--max-batch", "1", "--pin", "compile=none",
         "--study", "ctrl-c", "--out", str(tmp_path / "ctrl-c.yaml")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # As a terminal's foreground job: a shell script's background job (`pytest &`) starts with Ctrl-C ignored,
        # and every process it starts inherits that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while _complete_trials(tmp_path / "ctrl-c.db") < 1 and time.monotonic() < deadline and search.poll() is None:
            time.sleep(0.5)
        assert search.poll() is None, search.communicate()
        os.killpg(search.pid, signal.SIGINT)  # as a terminal sends it: to the search and its worker
        stdout, stderr = search.communicate(timeout=120)
    finally:
        if search.poll() is None:
            os.killpg(search.pid, signal.SIGKILL)
    assert search.returncode == 130, stderr
    resume = "autotune: interrupted: the study is saved; run the same command to resume"
    assert stderr.strip().splitlines()[-1] == resume
    assert "Traceback" not in stdout + stderr and "failed with" not in stderr


@pytest.mark.parametrize(("args", "line"), [
    (["search", "--budget", "6"], "size '6' has no unit; add one (6GB, 6GiB, 6000MB) or write a share as 80%"),
    (["search", "--budget", "0.5"], "size '0.5' has no unit; add one (6GB, 6GiB, 6000MB) or write a share as 80%"),
    (["search", "--timeout", "-5"], "--timeout must be more than 0 seconds, got -5"),
    (["search", "--trial-timeout", "0"], "--trial-timeout must be more than 0 seconds, got 0"),
    (["worker", "--storage", "sqlite:///x.db", "--study", "x", "--timeout", "-1"],
     "--timeout must be more than 0 seconds, got -1"),
    (["verify", "tiny-sd-cpu", "--time-limit", "0"], "--timeout must be more than 0 seconds, got 0"),
])
def test_a_bare_size_or_a_negative_time_limit_is_one_line_and_status_2(args, line, tmp_path):
    result = autotune_process(*args, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip() == f"autotune: error: {line}", result.stderr
    assert list(tmp_path.iterdir()) == []


def test_report_refuses_an_empty_file_and_leaves_it_empty(tmp_path):
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    for source in (str(empty), f"sqlite:///{empty}"):
        result = autotune_process("report", source, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().endswith("the file is empty; give a profile YAML, a study's .db or .journal "
                                              "file, or a storage URL")
        assert empty.stat().st_size == 0


@pytest.mark.parametrize(("knob", "value"), [("batch_size", True), ("batch_size", 4097), ("batch_size", 0),
                                             ("cpu_threads", True), ("cpu_threads", 1025)])
def test_a_batch_or_thread_count_is_a_bounded_integer_never_a_boolean(knob, value, tmp_path):
    shipped = (library.shipped_profiles_dir() / "tiny-sd-cpu.yaml").read_text()
    path = tmp_path / "p.yaml"
    path.write_text(re.sub(rf"(?m)^(\s*{knob}:).*$", rf"\1 {str(value).lower()}", shipped))
    with pytest.raises(ProfileError, match=rf"settings\.{knob}"):
        load_profile(path)


def test_the_largest_batch_and_thread_count_round_trip_through_yaml(tmp_path):
    profile = load_profile(library.shipped_profiles_dir() / "tiny-sd-cpu.yaml")
    big = profile.model_copy(update={"settings": profile.settings.model_copy(
        update={"batch_size": 4096, "cpu_threads": 1024})})
    again = load_profile(big.save(tmp_path / "big.yaml"))
    assert again == big and again.settings.batch_size == 4096 and again.settings.cpu_threads == 1024


@pytest.mark.slow
def test_a_worker_exits_when_its_driver_is_killed(tmp_path):
    driver = textwrap.dedent("""
        import threading, time, psutil
        import faulty_pipelines
        from autotune.worker import protocol
        from autotune.worker.process import Worker, WorkerConfig

        worker = Worker(WorkerConfig(model=faulty_pipelines.never_loads, device="cpu"))
        threading.Thread(target=worker.request, args=(protocol.Describe(), 3600), daemon=True).start()
        def workers():  # forked by the fork server, a child of this driver (not the resource tracker)
            me = psutil.Process()
            return [p for p in me.children(recursive=True) if p.ppid() != me.pid]

        while not workers():
            time.sleep(0.1)
        print(workers()[0].pid, flush=True)
        time.sleep(3600)
    """)
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, text=True, env=env)
    worker = None
    try:
        worker = psutil.Process(int(process.stdout.readline()))
        time.sleep(8)  # the worker imports, then loads the model: it is computing
        assert worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE
        process.kill()
        process.wait()
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(worker)
    finally:
        process.kill()
        if worker is not None and _alive(worker):  # an orphan is no child of ours any more
            worker.kill()


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_search_joining_a_running_study_samples_with_its_own_seed(tmp_path):
    one = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")
    assert study.seed_for(one, 0) == 0  # alone on its study: the seed, reproducible
    one.ask()  # another search is running a trial
    two = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")
    assert study.seed_for(two, 0) != 0 and study.seed_for(two, 0) == study.seed_for(two, 0)
    first = optuna.samplers.RandomSampler(seed=0).sample_independent(
        two, two.ask(), "x", optuna.distributions.FloatDistribution(0, 1))
    joined = optuna.samplers.RandomSampler(seed=study.seed_for(two, 0)).sample_independent(
        two, two.ask(), "x", optuna.distributions.FloatDistribution(0, 1))
    assert first != joined


RACE = '''
import sys, time
import optuna
from autotune.tuner.study import open_storage
while time.time() < float(sys.argv[2]):
    pass
optuna.create_study(study_name="race", storage=open_storage(f"sqlite:///{sys.argv[1]}"), load_if_exists=True)
print("ok")
'''


@pytest.mark.slow
def test_searches_creating_one_new_sqlite_study_at_once_all_open_it(tmp_path):
    # Item 8: the second of two searches died with "table ... already exists" when both created the file at once.
    script = tmp_path / "race.py"
    script.write_text(RACE)
    start = time.time() + 15  # every process has imported Optuna by then, so they create the tables together
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "new.db"), str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [proc.communicate(timeout=120) for proc in procs]
    assert [out.strip() for out, _ in results] == ["ok"] * 4, [err[-1500:] for _, err in results]
