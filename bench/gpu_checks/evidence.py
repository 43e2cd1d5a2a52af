"""The run's evidence in one archive: a GPU run returns at most 8 files, and the checks write ~35 (logs, each check's
JSON, the studies' .db, budget-6gb/, report.html). Everything the run wrote under DIR goes into
`DIR/evidence.tar.gz` and the loose copies are removed; gpu_check.json, gpu_check.md and the search's profile stay
beside it. Files that were in DIR before the run (not written since it began) are left alone.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from .core import PROFILE_SUFFIX

ARCHIVE = "evidence.tar.gz"
KEPT = ("gpu_check.json", "gpu_check.md", ARCHIVE)
# mtime resolution and clock skew: a file written in the run's first second still counts as the run's.
SLACK_S = 2.0


def kept(relative: Path) -> bool:
    """Whether a file stays loose at the top of DIR."""
    return relative.parent == Path(".") and (relative.name in KEPT or relative.name.endswith(PROFILE_SUFFIX))


def pack(out: Path, since: float) -> list[str]:
    """Move every file under `out` written at or after `since` (time.time()), but the kept ones, into
    `out/evidence.tar.gz`; return their paths relative to `out`. Empty folders left behind are removed."""
    written = sorted(path for path in out.rglob("*") if path.is_file() and not path.is_symlink()
                     and not kept(path.relative_to(out)) and path.stat().st_mtime >= since - SLACK_S)
    names = [str(path.relative_to(out)) for path in written]
    if not written:
        return names
    archive = out / ARCHIVE
    with tarfile.open(archive.with_suffix(".tmp"), "w:gz") as tar:
        for path, name in zip(written, names, strict=True):
            tar.add(path, arcname=name)
    os.replace(archive.with_suffix(".tmp"), archive)
    for path in written:
        path.unlink()
    for folder in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    return names
