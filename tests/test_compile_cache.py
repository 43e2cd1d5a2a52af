"""Isolation from other work on the host: each worker compiles in a slot of its study's folder that no process
running at the same time shares, and two searches compiling the same graph at once both complete their trials."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import optuna
import pytest

from autotune import compile_cache

HOLD = """
import sys, time
from autotune import compile_cache
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
