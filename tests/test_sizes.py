"""Several sizes, one profile: a search that tunes the knobs for every size an app renders, with a batch for each;
`"auto"` preferring a profile tuned at the size the app asks for. (A compiled profile compiling once per size however
the app alternates: `test_compile_cache.py`.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from autotune import pipelines
from autotune.apply import apply_profile
from autotune.exceptions import ProfileError
from autotune.measure.figures import Stat
from autotune.measure.timing import summarize
from autotune.profile import Profile, load_profile
from autotune.profile.library import select_profile
from autotune.tuner.trials import record_result
from autotune.worker import protocol

ROOT = Path(__file__).resolve().parents[1]
GiB = 1024**3


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotune.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}, timeout=900)


@pytest.mark.slow
def test_a_two_size_search_writes_one_profile_with_a_batch_for_each_size(tmp_path):
    searched = _run_cli("search", "--size", "64x64", "--size", "32x48", "--budget", "4GB", "--trials", "2",
                        "--steps", "2", "--max-batch", "2", "--pin", "compile=none", "--top-k", "1", "--rounds", "1",
                        "--out", "two.yaml", cwd=tmp_path)
    assert searched.returncode == 0, searched.stdout[-2000:] + searched.stderr[-2000:]
    profile = load_profile(tmp_path / "two.yaml")
    assert (profile.workload.height, profile.workload.width, profile.workload.other_sizes) == (64, 64, [(48, 32)])
    [other] = profile.other_sizes
    assert (other.height, other.width) == (48, 32) and other.batch_size in (1, 2) and other.images_per_s > 0
    assert profile.contradictions() == []
    study = optuna.load_study(study_name=profile.provenance.study, storage=f"sqlite:///{tmp_path / 'two.db'}")
    assert all(t.user_attrs["sizes"][0]["height"] == 48 for t in study.trials if "settings" in t.user_attrs)

    # The app's side: both sizes, one image each, and the other size's batch when it asks for a batch.
    pipe = apply_profile(pipelines.load("builtin:tiny-sd-random"), profile)
    for height, width in ((64, 64), (48, 32)):
        image = pipe("a cube", **profile.call_kwargs(height=height, width=width)).images[0]
        assert image.size == (width, height)
    assert profile.call_kwargs(batch=True, height=48, width=32)["num_images_per_prompt"] == other.batch_size
    with pytest.raises(ProfileError, match="no batch for 16x16: it was tuned at 64x64, 48x32"):
        profile.call_kwargs(batch=True, height=16, width=16)


def _measured(batch: int, images_per_s: float, peak_gib: float, oom: str | None = None) -> protocol.BatchResult:
    if oom:
        return protocol.BatchResult(batch_size=batch, oom=oom)
    return protocol.BatchResult(batch_size=batch, images_per_s=summarize([images_per_s] * 3),
                                seconds_per_image=1 / images_per_s, peak_memory_bytes=int(peak_gib * GiB))


def test_a_trial_at_two_sizes_is_worth_the_geometric_mean_and_fits_only_if_every_size_fits():
    study = optuna.create_study(direction="maximize")
    own = (_measured(1, 4.0, 1.0), _measured(2, 8.0, 1.5))
    answer = protocol.TrialResult(settings={}, batches=own, other_sizes=(
        protocol.SizeResult(32, 32, (_measured(1, 16.0, 0.5), _measured(2, 32.0, 3.5))),))
    trial = study.ask()
    # 2 GiB: the small size's batch 2 is over the budget, so its batch 1 (16/s) counts with the own size's 8/s.
    assert record_result(trial, "throughput", answer, budget_bytes=2 * GiB) == pytest.approx((8.0 * 16.0) ** 0.5)
    assert trial.user_attrs["sizes"] == [{"height": 32, "width": 32, "batch_size": 1, "images_per_s": 16.0,
                                          "peak_memory_bytes": int(0.5 * GiB), "oom": None}]

    out_of_memory = protocol.TrialResult(settings={}, batches=own, other_sizes=(
        protocol.SizeResult(512, 512, (_measured(1, 0, 0, oom="CUDA out of memory"),)),))
    trial = study.ask()
    assert record_result(trial, "throughput", out_of_memory, budget_bytes=2 * GiB) == 0.0  # infeasible
    assert trial.user_attrs["sizes"][0]["oom"] == "CUDA out of memory"


def test_auto_prefers_a_profile_tuned_at_the_size_the_app_renders(tuned_profile):
    def tuned_at(height: int, width: int, images_per_s: float) -> Profile:
        return tuned_profile.model_copy(update={
            "workload": tuned_profile.workload.model_copy(update={"height": height, "width": width}),
            "metrics": tuned_profile.metrics.model_copy(update={"images_per_s": Stat(median=images_per_s, cv=0,
                                                                                     n=1)})})

    big, small = tuned_at(64, 64, 100.0), tuned_at(32, 32, 10.0)
    here = dict(fingerprint=tuned_profile.hardware, free_memory_bytes=64 * GiB)
    tiny = pipelines.tiny_sd_random()
    assert select_profile(tiny, [big, small], **here).profile is big  # no size asked: the faster
    selection = select_profile(tiny, [big, small], size=(32, 32), **here)
    assert selection.profile is small
    assert "tuned at 32x32 (height x width), this size" in selection.ranking[0].notes
    assert "tuned at 64x64 (height x width), not at this size" in selection.ranking[1].notes


@pytest.mark.parametrize(("flags", "expected"), [
    (["--size", "64"], "--size takes WIDTHxHEIGHT in pixels (768x512), got '64'"),
    (["--size", "64x64", "--height", "32"], "give the sizes with --size or with --height/--width, not both"),
    (["--size", "64x64", "--size", "64x64"], "a size is given twice"),
    (["--size", "64x64", "--size", "32x32", "--quality-floor", "psnr=30"], "several sizes are searched for speed"),
])
def test_bad_sizes_are_one_line_before_any_work(flags, expected, tmp_path):
    done = _run_cli("search", *flags, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(f"autotune: error: {expected}") and done.stderr.strip().count("\n") == 0
    assert "Traceback" not in done.stderr and not list(tmp_path.iterdir())
