"""An app's first call with a compiled profile, with and without the compile artifacts `autotune precompile` ships
beside it: each in a fresh process with an empty inductor cache, as on a machine that has never compiled it.

    python bench/compiled_start.py [--profile profiles/tiny-sd-cpu.yaml] [--runs 2]

Prints, per run, the first call's seconds (load and apply excluded), the second call's, and the inductor cache hits;
then the ratio of the medians. Run it alone: two cores saturate easily.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

APP = """
import json, sys, time
import torch
from autotune import load_pipeline, load_profile
profile = load_profile(sys.argv[1])
pipe = load_pipeline(None, profile)
prompt = profile.workload.prompts[0]
times = []
for _ in range(2):
    started = time.perf_counter()
    pipe(prompt, **profile.call_kwargs())
    times.append(time.perf_counter() - started)
inductor = torch._dynamo.utils.counters["inductor"]
print(json.dumps({"first_s": times[0], "second_s": times[1], "fx_graph_cache_hits": inductor["fxgraph_cache_hit"],
                  "fx_graph_cache_bypasses": inductor["fxgraph_cache_bypass"]}))
"""


def first_call(profile: Path) -> dict:
    """One fresh app process on `profile`, compiling into an empty inductor cache."""
    with tempfile.TemporaryDirectory(prefix="autotune-bench-inductor-") as empty:
        env = {"TORCHINDUCTOR_CACHE_DIR": empty, "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        done = subprocess.run([sys.executable, "-c", APP, str(profile)], capture_output=True, text=True, env=env,
                              timeout=1800)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=str(ROOT / "profiles" / "tiny-sd-cpu.yaml"))
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="autotune-bench-") as folder:
        bare, shipped = Path(folder) / "bare", Path(folder) / "shipped"
        bare.mkdir()
        shipped.mkdir()
        name = Path(args.profile).name
        shutil.copy(args.profile, bare / name)
        shutil.copy(args.profile, shipped / name)
        made = subprocess.run([sys.executable, "-m", "autotune.cli", "precompile", str(shipped / name)],
                              capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                                   "COLUMNS": "200"}, timeout=1800)
        if made.returncode != 0:
            raise SystemExit(made.stderr[-3000:])
        print(made.stdout.strip().splitlines()[-1])
        results = {"without artifacts": [], "with artifacts": []}
        for _ in range(args.runs):  # interleaved, so that a change in the machine's load touches both alike
            results["without artifacts"].append(first_call(bare / name))
            results["with artifacts"].append(first_call(shipped / name))
    for label, runs in results.items():
        for run in runs:
            print(f"{label:18s} first call {run['first_s']:7.2f} s, second {run['second_s']:6.3f} s, "
                  f"FX graph cache hits {run['fx_graph_cache_hits']}, bypasses {run['fx_graph_cache_bypasses']}")
    without = statistics.median(r["first_s"] for r in results["without artifacts"])
    shipped_s = statistics.median(r["first_s"] for r in results["with artifacts"])
    print(f"median first call: {without:.2f} s without, {shipped_s:.2f} s with the shipped artifacts: "
          f"{without / shipped_s:.2f}x")


if __name__ == "__main__":
    main()
