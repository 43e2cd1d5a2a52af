"""Writing files so that a reader sees the old file or the new one, never half of one (the one place that does it),
checking the files a command will read or write before it imports anything heavy, and where autotune keeps what it
caches."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .exceptions import CannotWrite, ProfileError, ReportError

PROFILE_SUFFIXES = (".yaml", ".yml", ".json")
REPORT_SOURCES = "give a profile YAML, a study's .db or .journal file, or a storage URL"


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path` through a temporary file in the same folder, synced, then renamed.

    The rename is atomic on one file system, and the fsync before it means a crash cannot leave a renamed file whose
    bytes never reached the disk. A new file is readable by all (0644); an existing file keeps its mode.

    >>> write_atomic("out/profile.yaml", "schema: 1\\n")  # doctest: +SKIP
    PosixPath('out/profile.yaml')
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise CannotWrite(f"cannot write {path}: {error.strerror or error}") from error
    try:
        # mkstemp makes the file private (0600); profiles and reports are meant to be shared and shipped.
        os.chmod(temporary, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with os.fdopen(handle, "wb") as out:
            out.write(data.encode("utf-8") if isinstance(data, str) else data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):  # a full disk, a quota: the user's to fix, in one line
            raise CannotWrite(f"cannot write {path}: {error.strerror or error}") from error
        raise
    return path


def check_writable(path: str | os.PathLike) -> None:
    """Refuse, before any work, a file that could not be written at the end: its folder (or the nearest one that
    exists, since `write_atomic` makes the rest) must be a folder this process can create files in.

    >>> check_writable("/proc/profile.yaml")  # doctest: +SKIP
    CannotWrite: cannot write /proc/profile.yaml: /proc is not a writable folder
    """
    path = Path(path)
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise CannotWrite(f"cannot write {path}: {folder} is not a folder")
    try:  # os.access says yes to root on a read-only mount; only creating a file tells
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".autotune-write-check.")
    except OSError as error:
        raise CannotWrite(f"cannot write {path}: {folder} is not a writable folder ({error.strerror or error})") \
            from None
    os.close(handle)
    os.unlink(probe)


def storage_file(url: str) -> Path | None:
    """The file an Optuna storage keeps its studies in: an SQLite URL's database, or a journal (a plain path); None
    for a database server's URL."""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return None if "://" in url else Path(url)


def check_report_source(source: str) -> None:
    """Refuse, before Optuna or torch is imported, a report source (`autotune report STUDY_OR_PROFILE`, or the SQLite
    URL a profile records) that names no file or an empty one: SQLite would take an empty or missing file for a new
    database and write into it, and a report only reads. A server's URL passes: only opening it tells.

    >>> check_report_source("sqlite:///gone.db")  # doctest: +SKIP
    ReportError: sqlite:///gone.db: no such database file
    """
    file = storage_file(source)  # a plain path (profile, .db, .journal) is itself
    if file is None:
        return
    if not file.is_file():
        sqlite = source.startswith("sqlite:///")
        raise ReportError(f"{source}: no such database file" if sqlite else f"{source}: no such file; {REPORT_SOURCES}")
    if file.stat().st_size == 0:
        raise ReportError(f"{source}: the file is empty; {REPORT_SOURCES}")


def split_pick(path: str | os.PathLike[str], pick: str | None = None) -> tuple[Path, str | None]:
    """`sets/sd15.yaml#balanced` -> (Path("sets/sd15.yaml"), "balanced"); a plain path has only `pick` (if any)."""
    text = os.fspath(path)
    if "#" not in text or Path(text).exists():
        return Path(text), pick
    text, named = text.rsplit("#", 1)
    if named and pick and named != pick:
        raise ProfileError(f"{text}: two picks given, {named!r} in the path and {pick!r}")
    return Path(text), named or pick


def is_profile_file(path: Path) -> bool:
    """Whether `path` (`split_pick`'s) is a profile's file; False for a name the library looks up. A path that names
    no file (one with a folder or a profile's suffix) is refused here, before the CLI imports torch to look it up.

    >>> is_profile_file(Path("gone.yaml"))  # doctest: +SKIP
    ProfileError: gone.yaml: no such profile file
    """
    if path.is_file():
        return True
    text = str(path)
    if os.sep in text or "/" in text or text.endswith(PROFILE_SUFFIXES):
        raise ProfileError(f"{text}: no such profile file")
    return False


def cache_dir() -> Path:
    """`AUTOTUNE_CACHE`, else `$XDG_CACHE_HOME/autotune`, else `~/.cache/autotune`."""
    if os.environ.get("AUTOTUNE_CACHE"):
        return Path(os.environ["AUTOTUNE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autotune"
