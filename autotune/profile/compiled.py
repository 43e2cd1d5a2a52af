"""What a compiled profile compiled, shipped beside it so that an app's first call does not compile again.

A profile with `compile` costs the app its warm-up compile at every start (the profile's `metrics.warmup_s`, minutes
on a GPU). torch's portable cache artifacts (`torch.compiler.save_cache_artifacts` / `load_cache_artifacts`) hold
what inductor and AOTAutograd made; `autotune precompile PROFILE` renders once with the profile applied and writes
them beside the profile, and `apply_profile` hot-loads them when the file beside the profile matches this machine.
The file is keyed by what the artifacts depend on (the device, Python, torch, and Triton where there is one): a
profile taken to another GPU or torch finds no file of its key and compiles as before.

On a CPU those artifacts hold inductor's generated C++ but not the libraries built from it, which took most of the
first call again at load. So the file is a gzipped tar of the artifacts (`artifacts.bin`) and the inductor cache
folder the compile wrote (`inductor/`): the built libraries are put into this process's inductor cache (never
over a file already there), where inductor finds them by the hash of their source and build command. A machine
whose compiler or paths differ hashes differently and builds them again, as it would have.

    rtx4090.yaml                       the profile
    rtx4090.3f2a9c1b04de.compiled      what it compiled on that GPU with that torch
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import os
import tarfile
from pathlib import Path

from autotune.files import write_atomic
from autotune.hardware import Fingerprint

from . import split_pick

SUFFIX = ".compiled"
_ARTIFACTS = "artifacts.bin"  # torch.compiler.save_cache_artifacts()
_FOLDER = "inductor"  # the inductor cache folder the compile wrote


def artifacts_key(fingerprint: Fingerprint) -> str:
    """What compiled code depends on, hashed: the GPU, its compute capability and CUDA (on a CPU, the CPU and the
    vector instructions inductor's C++ was built for), Python, torch and Triton."""
    hardware, software = fingerprint.hardware, fingerprint.software
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = None
    device = ((hardware.gpu, hardware.capability, hardware.cuda) if hardware.device == "cuda"
              else (hardware.cpu, hardware.cpu_capability))
    parts = (hardware.device, *map(str, device), software.python, software.torch, str(triton))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def artifacts_path(source: str | os.PathLike, fingerprint: Fingerprint) -> Path:
    """Where the artifacts of the profile read from `source` (`set.yaml#pick` for a pick of a set) live for this
    machine: beside the profile, named after it, its pick and the machine's key."""
    path, pick = split_pick(source)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return path.with_name(f"{stem}{'.' + pick if pick else ''}.{artifacts_key(fingerprint)}{SUFFIX}")


def save_artifacts(path: Path, inductor_dir: str | os.PathLike | None = None) -> int | None:
    """Write what this process compiled to `path` (atomically), with the inductor cache folder the compile wrote;
    its size in bytes, or None when it compiled nothing."""
    import torch

    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return None
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(_ARTIFACTS)
        info.size = len(saved[0])
        tar.addfile(info, io.BytesIO(saved[0]))
        if inductor_dir is not None:
            tar.add(inductor_dir, arcname=_FOLDER, filter=lambda member: None if ".lock" in member.name else member)
    write_atomic(path, buffer.getvalue())
    return buffer.tell()


def load_artifacts(path: Path) -> bool:
    """Hot-load the artifacts in `path` into this process's compile caches, before anything compiles; False when
    there is no such file."""
    if not path.is_file():
        return False
    import torch
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    data = path.read_bytes()
    if data[:2] != b"\x1f\x8b":  # written before the inductor folder was shipped: the artifacts alone
        torch.compiler.load_cache_artifacts(data)
        return True
    target = Path(cache_dir()).resolve()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            destination = (target / member.name.removeprefix(_FOLDER + "/")).resolve()
            inside = member.name.startswith(_FOLDER + "/") and destination.is_relative_to(target)
            if member.isfile() and inside and not destination.exists():
                destination.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(destination, tar.extractfile(member).read())
                destination.chmod(member.mode & 0o755)
        torch.compiler.load_cache_artifacts(tar.extractfile(_ARTIFACTS).read())
    return True
