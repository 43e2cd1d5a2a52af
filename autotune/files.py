"""Writing files so that a reader sees the old file or the new one, never half of one. The one place that does it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path` through a temporary file in the same folder, synced, then renamed.

    The rename is atomic on one file system, and the fsync before it means a crash cannot leave a renamed file whose
    bytes never reached the disk. A new file is readable by all (0644); an existing file keeps its mode.

    >>> write_atomic("out/profile.yaml", "schema: 1\\n")  # doctest: +SKIP
    PosixPath('out/profile.yaml')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); profiles and reports are meant to be shared and shipped.
        os.chmod(temporary, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with os.fdopen(handle, "wb") as out:
            out.write(data.encode("utf-8") if isinstance(data, str) else data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
