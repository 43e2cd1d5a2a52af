"""Check 1: `autotune probe --json` (NVML) against what torch reports, field by field."""

from __future__ import annotations

import json
import subprocess
import sys

from .core import FAIL, PASS, Context, child_env, last_line

# torch reports the memory it can address; NVML the card's total. They differ by what the driver keeps.
MEMORY_TOLERANCE = 0.05


def _series(version: str | None) -> tuple[int, ...]:
    return tuple(int(part) for part in (version or "0").split(".")[:2] if part.isdigit())


def run(ctx: Context) -> tuple[str, str | None]:
    # The probe starts first and may take the whole box: its imports (torch, diffusers, transformers, torchao) run
    # while this process imports torch, not after.
    box_s = ctx.left()
    probe = subprocess.Popen([sys.executable, "-m", "autotune.cli", "probe", "--json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        import torch

        properties = torch.cuda.get_device_properties(0)
        stdout, stderr = probe.communicate(timeout=max(1.0, ctx.left()))
    except subprocess.TimeoutExpired:
        return FAIL, f"autotune probe --json gave no answer within the box ({box_s:.0f} s)"
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait()
    ctx.figures["probe_s"] = round(box_s - ctx.left(), 1)
    if probe.returncode != 0:
        return FAIL, f"autotune probe --json exited with {probe.returncode}: {last_line(stderr)}"
    hardware = json.loads(stdout)["hardware"]
    torch_memory = int(properties.total_memory)
    rows = [
        {"field": "device", "probe": hardware["device"], "torch": "cuda", "ok": hardware["device"] == "cuda"},
        {"field": "gpu", "probe": hardware["gpu"], "torch": properties.name, "ok": hardware["gpu"] == properties.name},
        {"field": "memory_bytes", "probe": hardware["memory_bytes"], "torch": torch_memory,
         "ok": abs(hardware["memory_bytes"] - torch_memory) <= MEMORY_TOLERANCE * torch_memory,
         "note": f"within {MEMORY_TOLERANCE:.0%}: torch counts what it can address"},
        {"field": "capability", "probe": hardware["capability"], "torch": f"{properties.major}.{properties.minor}",
         "ok": hardware["capability"] == f"{properties.major}.{properties.minor}"},
        {"field": "driver", "probe": hardware["driver"], "torch": None, "ok": bool(hardware["driver"]),
         "note": "torch does not report it; None means NVML was not read"},
        {"field": "cuda", "probe": hardware["cuda"], "torch": torch.version.cuda,
         "ok": _series(hardware["cuda"]) >= _series(torch.version.cuda),
         "note": "the driver's CUDA (probe) must be at least torch's runtime"},
    ]
    ctx.figures["fields"] = rows
    wrong = [row["field"] for row in rows if not row["ok"]]
    return (FAIL, f"differs: {', '.join(wrong)}") if wrong else (PASS, None)
