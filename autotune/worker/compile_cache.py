"""Where a worker process compiles: its own inductor / FX graph / Triton cache folder, which no other process writes
while it runs.

torch's default inductor folder (`/tmp/torchinductor_$USER`) is shared by every process of the user: two searches
compiling the same graph at once were seen to load each other's half-written `main.so` ("file too short"). A
study's workers share a folder per study; each worker claims the first free slot in it with an exclusive lock held
for its whole life (the kernel drops the lock when the process exits, even when it is killed). Workers that follow
one another reuse what the earlier ones compiled; workers that run at once never share a slot.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

# More workers than this at once on one host, for one study, is a bug rather than a plan.
MAX_SLOTS = 256

_held: list[int] = []  # the lock file descriptor of this process's slot, kept open for the process's life


def study_folder(study: str | None) -> Path:
    """The study's compile folder: under `$TORCHINDUCTOR_CACHE_DIR` when the user set one, else autotune's cache."""
    from autotune.files import cache_dir

    base = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    root = Path(base) / "autotune" if base else cache_dir() / "compile"
    return root / re.sub(r"[^A-Za-z0-9._-]", "_", study or "no-study")


def claim(folder: str | os.PathLike) -> Path:
    """Claim the first free slot of `folder` for this process and compile there from now on; return the slot."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    release()
    for index in range(MAX_SLOTS):
        descriptor = os.open(folder / f"slot-{index}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            continue
        _held.append(descriptor)
        slot = folder / f"slot-{index}"
        # torch reads these at each compile; Triton's kernels would otherwise go to one shared ~/.triton.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(slot)
        os.environ["TRITON_CACHE_DIR"] = str(slot / "triton")
        return slot
    raise RuntimeError(f"all {MAX_SLOTS} compile slots of {folder} are held by running processes")


def release() -> None:
    """Give this process's slot back (a worker moved to another study's folder)."""
    while _held:
        os.close(_held.pop())
