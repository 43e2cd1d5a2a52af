"""Faults injected into a running search, each for real: a full disk, a folder made read-only or removed, a worker
killed as the OOM killer kills, a database server restarted. Each ends in one line naming the cause and what to do
(or, for a killed worker, one recorded trial and a search that goes on), with the study kept and resumed by the same
command.

The file-system faults mount a small tmpfs (root only; skipped with the reason elsewhere) and always unmount it. The
PostgreSQL test needs the server `.ci/run` starts (AUTOTUNE_TEST_POSTGRES_URL, with its data folder and binaries).
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import psutil
import pytest

pytestmark = pytest.mark.slow  # each test runs a search in a process of its own, and breaks it

FAST = ["--trials", "2", "--steps", "2", "--max-batch", "1", "--top-k", "1", "--rounds", "1", "--pin", "compile=none",
        "--study", "faults"]
KEPT = "the study keeps every trial recorded before it"
# Wide enough that rich never wraps the line a test reads.
ENV = {**os.environ, "COLUMNS": "1000", "PYTHONUNBUFFERED": "1"}


def _search(*args: str, cwd: Path) -> subprocess.Popen:
    script = Path(sys.executable).with_name("autotune")
    return subprocess.Popen([str(script), "search", *FAST, *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(search: subprocess.Popen, timeout_s: float = 300) -> tuple[str, str]:
    try:
        return search.communicate(timeout=timeout_s)
    finally:
        if search.poll() is None:
            search.kill()
            search.communicate()


def _run_search(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    search = _search(*args, cwd=cwd)
    stdout, stderr = _finish(search)
    return subprocess.CompletedProcess(search.args, search.returncode, stdout, stderr)


def _wait_for(condition: Callable[[], bool], search: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if search.poll() is not None:
            raise AssertionError(f"the search ended first: {_finish(search)}")
        assert time.monotonic() < deadline, "the search never got there"
        time.sleep(0.05)


def _complete(database: Path) -> int:
    """Complete trials in an SQLite study, read without writing (a missing or half-made file reads as none)."""
    if not database.exists():
        return 0
    try:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    except sqlite3.OperationalError:  # removed meanwhile
        return 0
    try:
        return connection.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:  # the tables are still being made
        return 0
    finally:
        connection.close()


def _error_line(result: subprocess.CompletedProcess | tuple[int, str, str]) -> str:
    code, stdout, stderr = (result.returncode, result.stdout, result.stderr) if isinstance(
        result, subprocess.CompletedProcess) else result
    assert code == 2, (stdout, stderr)
    assert "Traceback" not in stdout + stderr, stderr
    return stderr.strip().splitlines()[-1]


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here ({result.stderr.strip() or 'mount failed'}): run as root, or where "
                    "mounting is permitted")


@pytest.fixture
def disk(tmp_path) -> Iterator[Path]:
    """A file system of its own (16 MB of tmpfs) for the profile, its study and its log; unmounted after."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    folder = tmp_path / "disk"
    folder.mkdir()
    _mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder))
    try:
        yield folder
    finally:
        # -l: a process that still holds a file there does not keep it mounted; twice for a bind mount on top.
        for _ in range(2):
            if subprocess.run(["mountpoint", "-q", str(folder)]).returncode == 0:
                subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> Path:
    """Write into `folder` until its file system says it is full; the file to delete to free it."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as out:
        for block in (b"\0" * 2**20, b"\0" * 4096, b"\0"):  # the last pages too
            try:
                while True:
                    out.write(block)
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
    return filler


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".yaml", ".tmp") or p.name.endswith(".tmp"))


# ---- a full disk ----


def test_a_disk_that_fills_mid_search_is_one_line_and_the_same_command_resumes(disk, tmp_path):
    out, database = disk / "p.yaml", (disk / "p.db").resolve()
    search = _search("--out", str(out), cwd=tmp_path)
    _wait_for(lambda: _complete(database) >= 1, search)
    filler = _fill(disk)
    stdout, stderr = _finish(search)
    kept = _complete(database)
    assert _error_line((search.returncode, stdout, stderr)) == (
        f"autotune: error: the disk holding the study sqlite:///{database} is full (database or disk is full): free "
        f"space in {database.parent}; {KEPT}: run the same command to resume")
    assert _leftovers(disk) == []  # no profile, whole or partial
    filler.unlink()
    resumed = _run_search("--out", str(out), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert out.exists() and _complete(database) == 2 and kept >= 1


def test_a_disk_full_when_the_profile_is_written_keeps_the_study_and_leaves_no_temporary_file(disk, tmp_path):
    out, database = disk / "p.yaml", (disk / "p.db").resolve()
    search = _search("--out", str(out), cwd=tmp_path)
    _wait_for(lambda: _complete(database) >= 2, search)  # every trial is in: it re-measures, then writes
    filler = _fill(disk)
    stdout, stderr = _finish(search)
    assert _error_line((search.returncode, stdout, stderr)) == (
        f"autotune: error: cannot write {out}: No space left on device; the study 'faults' is kept in "
        f"sqlite:///{database}: make room and run the same command again to write the profile")
    assert _leftovers(disk) == []
    filler.unlink()
    resumed = _run_search("--out", str(out), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert out.exists() and _complete(database) == 2  # no trial ran again: the study had them all


# ---- the output folder made read-only, or removed ----


def test_an_output_folder_made_read_only_mid_search_is_one_line_and_resumes_once_writable(disk, tmp_path):
    out, database = disk / "p.yaml", (disk / "p.db").resolve()
    search = _search("--out", str(out), cwd=tmp_path)
    _wait_for(lambda: _complete(database) >= 1, search)
    # A read-only bind mount on top: what the search opens from now on is read-only, as on a remounted disk (the
    # search's open files keep the mount below busy, so that one cannot be remounted itself).
    _mount("--bind", str(disk), str(disk))
    _mount("-o", "remount,bind,ro", str(disk))
    stdout, stderr = _finish(search)
    # SQLite's own reason depends on which write meets the read-only mount first: opening its journal, or writing.
    assert re.fullmatch(
        re.escape(f"autotune: error: cannot write the study sqlite:///{database}: {database.parent} is no longer "
                  "writable (") + r"(unable to open database file|disk I/O error|attempt to write a readonly database)"
        + re.escape(f"); {KEPT}: make {database.parent} writable and run the same command to resume"),
        _error_line((search.returncode, stdout, stderr)))
    subprocess.run(["umount", str(disk)], check=True)  # writable again
    assert _leftovers(disk) == []
    resumed = _run_search("--out", str(out), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert out.exists() and _complete(database) == 2


def test_an_output_folder_removed_mid_search_gets_its_study_back_and_the_same_command_resumes(tmp_path):
    folder = tmp_path / "out"
    out, database = folder / "p.yaml", (folder / "p.db").resolve()
    search = _search("--out", str(out), cwd=tmp_path)
    _wait_for(lambda: _complete(database) >= 1, search)
    shutil.rmtree(folder)
    stdout, stderr = _finish(search)
    line = _error_line((search.returncode, stdout, stderr))
    assert re.fullmatch(
        rf"autotune: error: the study's file {re.escape(str(database))} was removed during the search \(.+\); "
        r"autotune put it back as it was after the last recorded trial: run the same command to resume", line), line
    assert _complete(database) >= 1 and _leftovers(folder) == []
    resumed = _run_search("--out", str(out), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert out.exists() and _complete(database) == 2


# ---- a worker killed as the OOM killer kills ----


def _busy_worker(search: subprocess.Popen) -> psutil.Process | None:
    """The search's worker process while it computes (a trial is in it, not waiting for one)."""
    for child in psutil.Process(search.pid).children(recursive=True):
        try:  # a worker is forked by the fork server, the search's child; the server itself only waits
            if child.ppid() != search.pid and child.cpu_percent(interval=0.2) > 30:
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def test_a_worker_killed_mid_trial_is_one_recorded_trial_and_the_search_goes_on(tmp_path):
    out, database = tmp_path / "p.yaml", tmp_path / "p.db"
    # Longer trials, to be killed in, and a third after the one killed (the last --trials given counts).
    search = _search("--out", str(out), "--steps", "10", "--trials", "3", cwd=tmp_path)
    _wait_for(lambda: _complete(database) >= 1, search)
    deadline = time.monotonic() + 120
    while (worker := _busy_worker(search)) is None:
        assert search.poll() is None and time.monotonic() < deadline, "no trial ran in a worker"
    worker.send_signal(signal.SIGKILL)  # what the kernel's OOM killer sends
    stdout, stderr = _finish(search)
    assert search.returncode == 0, stderr
    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{database}")
    killed = [t for t in study.trials if t.user_attrs.get("failure") == "crash"]
    assert len(killed) == 1 and len([t for t in study.trials if t.state.name == "COMPLETE"]) == 3
    reason = killed[0].user_attrs["reason"]
    assert reason.startswith("the worker was killed by SIGKILL (as the kernel's out-of-memory killer does")
    assert any(line.startswith(f"trial {killed[0].number}: crash: {reason} (") for line in stdout.splitlines())
    assert out.exists() and "Traceback" not in stdout + stderr


# ---- a database server restarted mid-search ----


POSTGRES_URL = os.environ.get("AUTOTUNE_TEST_POSTGRES_URL")
POSTGRES_DATA = os.environ.get("AUTOTUNE_TEST_POSTGRES_DATA")
POSTGRES_BIN = os.environ.get("AUTOTUNE_TEST_POSTGRES_BIN")
needs_a_server_to_restart = pytest.mark.skipif(
    not (POSTGRES_URL and POSTGRES_DATA and POSTGRES_BIN),
    reason="no PostgreSQL server this test may restart: AUTOTUNE_TEST_POSTGRES_URL, _DATA and _BIN are not set "
           "(.ci/run starts one; locally: . .ci/postgres.sh && postgres_start)")


def _pg_ctl(*args: str) -> None:
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(str(POSTGRES_DATA))
    log = data.parent / "server.log"  # where .ci/postgres.sh started it: the server keeps it open
    # `restart` reuses the options the server was started with; `start` must be given them (its port among them).
    started_with = shlex.split((data / "postmaster.opts").read_text())[3:]  # after `postgres -D DATA`
    subprocess.run([*run_as, f"{POSTGRES_BIN}/pg_ctl", "-D", str(data), "-l", str(log), "-w", *args,
                    *(["-o", shlex.join(started_with)] if "start" in args else [])],
                   check=True, stdout=subprocess.DEVNULL, timeout=120)


@pytest.fixture
def server() -> Iterator[optuna.storages.RDBStorage]:
    """The test's own connection to the server, which survives its restarts; its pool closed after."""
    storage = optuna.storages.RDBStorage(str(POSTGRES_URL), engine_kwargs={"pool_pre_ping": True})
    yield storage
    storage.engine.dispose()


def _complete_in(storage: optuna.storages.RDBStorage, name: str) -> int:
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # not made yet
        return 0
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _lost_connection_line(result: tuple[int, str, str]) -> None:
    shown = re.escape(re.sub(r":[^:@/]+@", ":***@", str(POSTGRES_URL)))
    line = _error_line(result)
    assert re.fullmatch(rf"autotune: error: lost the connection to the study's storage {shown} \(.+\); {KEPT} on "
                        r"the server: run the same command to resume once it answers", line), line


@needs_a_server_to_restart
def test_a_database_server_restarted_mid_search_is_reconnected_to_or_one_line_and_resumed(tmp_path, server):
    name = f"restart-{uuid.uuid4().hex[:8]}"  # the server outlives a test run: never reuse a study
    args = ["--storage", str(POSTGRES_URL), "--study", name, "--out", str(tmp_path / "p.yaml")]
    search = _search(*args, cwd=tmp_path)
    _wait_for(lambda: _complete_in(server, name) >= 1, search)
    _pg_ctl("-m", "fast", "restart")  # every connection dropped, the server away for a moment
    stdout, stderr = _finish(search)
    # Idle connections are pinged and made again; a query the drop cut (in the middle of its transaction) is not
    # retried, and ends the search in its line.
    if search.returncode != 0:
        _lost_connection_line((search.returncode, stdout, stderr))
        resumed = _run_search(*args, cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in stdout + stderr
    assert _complete_in(server, name) == 2 and (tmp_path / "p.yaml").exists()


@needs_a_server_to_restart
def test_a_database_server_that_stays_away_is_one_line_and_the_same_command_resumes(tmp_path, server):
    name = f"away-{uuid.uuid4().hex[:8]}"
    args = ["--storage", str(POSTGRES_URL), "--study", name, "--out", str(tmp_path / "p.yaml")]
    search = _search(*args, cwd=tmp_path)
    _wait_for(lambda: _complete_in(server, name) >= 1, search)
    _pg_ctl("-m", "fast", "stop")
    try:
        stdout, stderr = _finish(search)  # after the reconnection window (storages.RECONNECT_S)
    finally:
        _pg_ctl("start")
    _lost_connection_line((search.returncode, stdout, stderr))
    resumed = _run_search(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert _complete_in(server, name) == 2 and (tmp_path / "p.yaml").exists()
