"""Opening a study's storage, and what its failures say.

A storage that fails under a search (its disk full, its folder made read-only or removed, its server restarted)
becomes one `StorageFailed` naming the cause and what to do: an SQLAlchemy engine event replaces the driver's error,
a journal backend wraps its file's. Each transaction either committed or rolled back, so the study keeps every trial
recorded before the failure, and the same command resumes it. A server that restarts between two queries is
reconnected to without a word: stale connections are pinged, and a connection is retried while the server comes
back. The storage URL's password never leaves this process: every message shows `redact(url)`.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from sqlalchemy import event
from sqlalchemy.engine import make_url

from autotune.exceptions import AutotuneError, StorageFailed, first_line
from autotune.files import write_atomic

# A worker's parent process beats while its trial runs (compile included); a trial silent for the grace period is
# taken for dead. Short enough that a killed worker's trial is retried within a minute, long enough for a busy host.
HEARTBEAT_INTERVAL_S = 5
GRACE_PERIOD_S = 20
MAX_RETRIES = 3
CREATE_ATTEMPTS = 5
# How long a lost database server may take to come back (a restart takes seconds) before the search gives up.
RECONNECT_S = 30.0
_CREATION_RACE = ("already exists", "alembic_version")
# SQLite's words for a write its file system refused (the other OperationalErrors are Optuna's to handle).
_SQLITE_FULL = "database or disk is full"
_SQLITE_REFUSED = ("attempt to write a readonly database", "unable to open database file", "disk I/O error")
KEPT = "the study keeps every trial recorded before it"


class StorageError(AutotuneError, ValueError):
    """The storage cannot be opened, or holds no such study."""


# A query-string key that holds a password (`?password=`, `?pass=`, `?pwd=`, `?PGPASSWORD=`, `?passwd=`).
_SECRET_KEY = re.compile(r"pass|pwd", re.IGNORECASE)
_SECRET_QUERY = re.compile(r"([?&][^=&#]*(?:pass|pwd)[^=&#]*=)[^&#]*", re.IGNORECASE)


def redact(url: str) -> str:
    """The storage URL without its password (`user:pw@` or in the query string), for anything written or printed.

    >>> redact("postgresql+psycopg://tuner:pw@db/autotune?sslmode=require&password=pw")
    'postgresql+psycopg://tuner:***@db/autotune?password=***&sslmode=require'
    """
    if "://" not in url:
        return url
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://***"
    return _SECRET_QUERY.sub(r"\1***", shown)


def _passwords(url: str) -> list[str]:
    try:
        parsed = make_url(url) if "://" in url else None
    except Exception:
        return []
    if parsed is None:
        return []
    found = [parsed.password] if parsed.password else []
    for key, value in parsed.query.items():
        if _SECRET_KEY.search(key):
            found += [value] if isinstance(value, str) else list(value)
    return [password for password in found if password]


def scrub(text: str, url: str) -> str:
    """`text` (a driver's error, which may quote the URL or the password alone) without the URL's password."""
    text = text.replace(url, redact(url))
    for password in _passwords(url):
        text = text.replace(password, "***")
    return text


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`: RDB with heartbeats and retries, or a journal file for a plain path.

    >>> storage = open_storage("sqlite:///tiny.db")  # doctest: +SKIP
    >>> optuna.load_study(study_name="tiny", storage=storage)  # doctest: +SKIP
    """
    if "://" not in url:
        return optuna.storages.JournalStorage(_GuardedJournal(url))
    sqlite = url.startswith("sqlite")
    # Workers share an SQLite file (wait for its lock); a server's connections may outlive a restart (ping them).
    engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    try:
        for attempt in range(CREATE_ATTEMPTS):
            try:
                storage = _rdb_storage(url, engine_kwargs)
                break
            except Exception as error:
                # Two searches creating one new database race on its tables ("table studies already exists") or
                # on stamping its schema version (alembic_version); the loser finds them made when it tries again.
                if not any(sign in str(error) for sign in _CREATION_RACE) or attempt == CREATE_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
    except ImportError:
        hint = "pip install 'autotune[postgres]'" if url.startswith("postgresql") else "install its database driver"
        raise StorageError(f"no database driver for {redact(url)}: {hint}") from None
    except Exception as error:
        raise StorageError(f"cannot open the storage {redact(url)}: {scrub(first_line(error), url)}") from None
    _Guard(url).attach(storage.engine)  # once open: an error while opening is StorageError's, above
    return storage


def _rdb_storage(url: str, engine_kwargs: dict) -> optuna.storages.RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_INTERVAL_S, grace_period=GRACE_PERIOD_S,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
        )


class _Guard:
    """One storage's failures: the first one found is the one every later error of that storage reports (Optuna
    retries and tells after the first, and each would otherwise name a consequence instead of the cause)."""

    def __init__(self, url: str):
        self.url = url
        self.failure: StorageFailed | None = None
        self.lock = threading.Lock()

    def attach(self, engine: Any) -> None:
        event.listen(engine, "handle_error", self.handle_error)
        if not self.url.startswith("sqlite"):
            event.listen(engine, "do_connect", self.connect)

    def handle_error(self, context: Any) -> None:
        if context.is_pre_ping:  # a dead pooled connection: SQLAlchemy connects anew, below
            return
        cause = first_line(context.original_exception)
        if self.url.startswith("sqlite"):
            if cause != _SQLITE_FULL and not cause.startswith(_SQLITE_REFUSED):
                return  # a too-long IN list, a lock timeout: Optuna's to handle, or a bug
        elif not (context.is_disconnect or context.connection is None):
            return
        raise self.fail(lambda: self.describe(cause)) from context.original_exception

    def fail(self, message: Callable[[], str]) -> StorageFailed:
        with self.lock:
            if self.failure is None:
                self.failure = StorageFailed(message())
            return StorageFailed(str(self.failure))

    def describe(self, cause: str) -> str:
        shown, cause = redact(self.url), scrub(cause, self.url)
        if not self.url.startswith("sqlite"):
            return (f"lost the connection to the study's storage {shown} ({cause}); {KEPT} on the server: run the "
                    "same command to resume once it answers")
        path = Path(make_url(self.url).database or "")
        return describe_file_failure(path, shown, cause, errno.ENOSPC if cause == _SQLITE_FULL else None)

    def connect(self, dialect: Any, record: Any, cargs: tuple, cparams: dict) -> Any:
        # A restarting server refuses connections for a few seconds: wait for it rather than end the search; but
        # only once, not again for each of the writes Optuna tries after the first failed.
        deadline = time.monotonic() + (RECONNECT_S if self.failure is None else 0)
        while True:
            try:
                return dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)


def describe_file_failure(path: Path, shown: str, cause: str, code: int | None) -> str:
    """The line for a study file (SQLite or journal) that could not be written: full, read-only, or removed."""
    folder = path.parent
    if code == errno.ENOSPC:
        return (f"the disk holding the study {shown} is full ({cause}): free space in {folder}; {KEPT}: run the "
                "same command to resume")
    if not path.exists():
        if restore_deleted(path):
            return (f"the study's file {path} was removed during the search ({cause}); autotune put it back as it "
                    "was after the last recorded trial: run the same command to resume")
        return (f"the study's file {path} was removed during the search ({cause}) and its trials with it: run the "
                "same command to start the study again")
    return (f"cannot write the study {shown}: {folder} is no longer writable ({cause}); {KEPT}: make {folder} "
            "writable and run the same command to resume")


def restore_deleted(path: Path) -> bool:
    """Copy a removed file that this process still holds open (Linux shows it as `/proc/self/fd/N -> path
    (deleted)`) back to `path`: its bytes are the study as it was when the last transaction committed."""
    try:
        held = [fd for fd in Path("/proc/self/fd").iterdir() if _target(fd) == f"{path.absolute()} (deleted)"]
        return bool(held) and write_atomic(path, held[0].read_bytes()) is not None
    except OSError:  # no /proc; CannotWrite too: the folder cannot be made again
        return False


def _target(link: Path) -> str | None:
    try:
        return os.readlink(link)
    except OSError:  # closed meanwhile (the listing's own descriptor is)
        return None


class _GuardedJournal(JournalFileBackend):
    """A journal file whose full disk, read-only or removed folder is one `StorageFailed`, as for SQLite."""

    def __init__(self, file_path: str):
        super().__init__(file_path)
        self.path = Path(file_path)
        self.guard = _Guard(file_path)

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        try:
            yield from super().read_logs(log_number_from)
        except OSError as error:
            raise self.failed(error) from error

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        try:
            super().append_logs(logs)
        except OSError as error:
            raise self.failed(error) from error

    def failed(self, error: OSError) -> StorageFailed:
        cause, code = error.strerror or str(error), error.errno
        return self.guard.fail(lambda: describe_file_failure(self.path, str(self.path), cause, code))


Function = TypeVar("Function", bound=Callable[..., Any])


def surface_storage_failures(function: Function) -> Function:
    """Raise the `StorageFailed` behind whatever Optuna made of it: its trial loop can turn a failed `tell` into an
    AssertionError (the trial it reads back is still running), and that is no message for a user."""

    @functools.wraps(function)
    def surfaced(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except StorageFailed:
            raise
        except Exception as error:
            failure = failure_behind(error)
            if failure is None:
                raise
            raise failure from error

    return surfaced  # type: ignore[return-value]


def failure_behind(error: BaseException | None) -> StorageFailed | None:
    """The `StorageFailed` that `error` was raised while handling, if any."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, StorageFailed):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


class _NoStorageTraceback(logging.Filter):
    """Optuna logs a trial whose objective met the failed storage with its traceback; the search says it in one
    line when the error reaches it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and failure_behind(record.exc_info[1]))


logging.getLogger("optuna.study._optimize").addFilter(_NoStorageTraceback())
