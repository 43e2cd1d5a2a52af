"""Isolation from other work on the host: each worker compiles in a slot of its study's folder that no process
running at the same time shares, and two searches compiling the same graph at once both complete their trials. And
what a compiled profile compiled, saved beside it by `autotune precompile`, reaches a fresh app process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from autotune.profile import SizeSettings, load_profile
from autotune.worker import compile_cache

ROOT = Path(__file__).resolve().parents[1]

HOLD = """
import sys, time
from autotune.worker import compile_cache
slot = compile_cache.claim(sys.argv[1])
print(slot.name, flush=True)
time.sleep(float(sys.argv[2]))
"""


def _claim_in_process(folder, hold_s: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(hold_s)], stdout=subprocess.PIPE, text=True)


def test_processes_at_once_get_their_own_slots_and_a_later_one_reuses_a_freed_slot(tmp_path):
    first = _claim_in_process(tmp_path, 30)
    assert first.stdout.readline().strip() == "slot-0"
    second = _claim_in_process(tmp_path, 0)
    assert second.communicate(timeout=60)[0].strip() == "slot-1"  # slot-0 is held by the running first process
    third = _claim_in_process(tmp_path, 0)
    assert third.communicate(timeout=60)[0].strip() == "slot-1"  # the second exited: its slot is free again
    first.kill()  # killed, not exited: the kernel still drops its lock
    first.wait(timeout=30)
    assert _claim_in_process(tmp_path, 0).communicate(timeout=60)[0].strip() == "slot-0"


def test_a_claimed_slot_is_where_torch_and_triton_compile(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "user-choice"))
    folder = compile_cache.study_folder("tiny sd/cpu")
    assert folder == tmp_path / "user-choice" / "autotune" / "tiny_sd_cpu"  # under the user's folder, one level
    try:
        slot = compile_cache.claim(folder)
        from torch._inductor.runtime.runtime_utils import cache_dir

        assert cache_dir() == str(slot) and os.environ["TRITON_CACHE_DIR"] == str(slot / "triton")
    finally:
        compile_cache.release()


@pytest.mark.slow
def test_two_searches_compiling_the_same_graph_at_once_lose_no_trial_to_the_compile_cache(tmp_path):
    # Both searches are told the same inductor folder, as two shells of one user; regional compile keeps it short.
    shared = tmp_path / "inductor"
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(shared)}
    procs = []
    for name in ("one", "two"):
        command = [sys.executable, "-m", "autotune.cli", "search", "--trials", "1", "--steps", "2", "--max-batch",
                   "1", "--top-k", "1", "--rounds", "1", "--pin", "compile=default", "--pin",
                   "compile_scope=regional", "--study", name,
                   "--storage", f"sqlite:///{tmp_path}/{name}.db", "--out", str(tmp_path / f"{name}.yaml")]
        procs.append(subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
        time.sleep(1)
    results = [proc.communicate(timeout=1200) for proc in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-2000:]
    for name in ("one", "two"):
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/{name}.db")
        finished = [t for t in study.trials if t.state.is_finished()]  # the recipes left queued never ran
        assert [t.state for t in finished] == [optuna.trial.TrialState.COMPLETE]
        assert finished[0].user_attrs.get("failure") is None, finished[0].user_attrs
        assert any((shared / "autotune" / name).glob("slot-*/fxgraph")), f"{name} compiled outside its folder"


# ---- what a compiled profile compiled, shipped beside it: `autotune precompile`, hot-loaded by apply_profile ----

APP = """
import sys, torch
from autotune import load_pipeline, load_profile
profile = load_profile(sys.argv[1])
pipe = load_pipeline(None, profile)
graphs = []
for height, width in [(64, 64), (48, 32), (64, 64), (48, 32)]:
    pipe(profile.workload.prompts[0], **profile.call_kwargs(height=height, width=width))
    graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
inductor = torch._dynamo.utils.counters["inductor"]
print(inductor["fxgraph_cache_hit"], inductor["fxgraph_cache_miss"], *graphs)
"""


@pytest.mark.slow
def test_a_precompiled_two_size_profile_compiles_once_per_size_and_nothing_again_in_a_fresh_app(tmp_path):
    tuned = load_profile(ROOT / "profiles" / "tiny-sd-cpu.yaml")
    # Two sizes, one image each, inductor's default mode over the denoiser's repeated blocks (regional: the least
    # compiling that shows it; bench/compiled_start.py times the shipped profile's whole-denoiser compile).
    workload = tuned.workload.model_copy(update={"height": 64, "width": 64, "other_sizes": [(48, 32)]})
    settings = tuned.settings.model_copy(update={"compile": "default", "compile_scope": "regional", "batch_size": 1,
                                                 "steps": 2, "precision": "fp32", "attention": "sdpa",
                                                 "compile_fullgraph": True, "vae_slicing": True})
    profile = tuned.model_copy(update={"workload": workload, "settings": settings,
                                       "other_sizes": [SizeSettings(height=48, width=32, batch_size=1)]})
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "app.yaml").write_text(profile.to_yaml())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "300"}
    made = subprocess.run([sys.executable, "-m", "autotune.cli", "precompile", str(shipped / "app.yaml")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert made.returncode == 0, made.stderr[-3000:]
    [artifacts] = shipped.glob("app.*.compiled")
    assert str(artifacts) in made.stdout.replace("\n", "")
    # The app process starts with an empty inductor cache of its own: every graph it needs comes from the shipped
    # file (a hit each), none is compiled again (no miss).
    ran = subprocess.run([sys.executable, "-c", APP, str(shipped / "app.yaml")], capture_output=True, text=True,
                         env={**env, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}, timeout=900)
    assert ran.returncode == 0, ran.stderr[-3000:]
    hits, misses, *graphs = (int(word) for word in ran.stdout.split()[-6:])
    assert hits > 0 and misses == 0, ran.stdout[-2000:]
    # The first size's graphs, at most as many again (dynamic) for the second; alternating after that compiles nothing.
    assert graphs[1] <= 2 * graphs[0] and graphs[1:] == [graphs[1]] * 3, graphs


def test_precompile_refuses_a_profile_that_does_not_compile_in_one_line(tmp_path):
    tuned = load_profile(ROOT / "profiles" / "tiny-sd-cpu.yaml")
    (tmp_path / "eager.yaml").write_text(tuned.model_copy(update={"settings": tuned.settings.model_copy(
        update={"compile": "none"})}).to_yaml())
    done = subprocess.run([sys.executable, "-m", "autotune.cli", "precompile", str(tmp_path / "eager.yaml")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("autotune: error: ")
    assert "does not compile (compile: none)" in done.stderr
