"""Under a quality floor, a step cache's threshold is calibrated by rendering, not sampled (issue 24, item 5)."""

from __future__ import annotations

import optuna
import pytest

from autotune import knobs
from autotune.tuner.run import run_search
from autotune.tuner.space import CALIBRATED, calibrated_part, calibration_for
from autotune.worker.calibration import largest_meeting


def test_bisection_finds_the_largest_value_that_meets_it_or_the_ends():
    edge = 0.1
    found = largest_meeting(lambda value: value <= edge, 0.02, 0.3, 8)
    assert found <= edge and found > edge * 0.9  # 6 bisections of a 15x range: within 10%
    assert largest_meeting(lambda value: True, 0.02, 0.3, 6) == 0.3
    assert largest_meeting(lambda value: False, 0.02, 0.3, 6) == 0.02


def test_only_a_floor_takes_the_threshold_out_of_the_sampled_space():
    space = {"cache": knobs.Categorical(("none", "first-block")),
             "cache_threshold": knobs.FloatRange(0.02, 0.3, log=True)}
    assert calibrated_part(dict(space), floor=False) == {}
    kept = dict(space)
    calibrated = calibrated_part(kept, floor=True)
    assert set(calibrated) == set(CALIBRATED) and "cache_threshold" not in kept
    first_block = {**knobs.defaults(), "cache": "first-block"}
    task = calibration_for(calibrated, first_block, "psnr", 30.0)
    assert (task.knob, task.low, task.high, task.minimum) == ("cache_threshold", 0.02, 0.3, 30.0)
    assert calibration_for(calibrated, knobs.defaults(), "psnr", 30.0) is None  # no cache: nothing to calibrate
    assert calibration_for(calibrated, first_block, "ssim", None) is None  # a Pareto search has no floor


@pytest.mark.slow
def test_a_first_block_cache_trial_under_a_floor_times_the_largest_threshold_that_meets_it(tmp_path):
    storage = f"sqlite:///{tmp_path / 'c.db'}"
    run_search("builtin:tiny-flux-random", budget="8GB", n_trials=1, steps=8, reference_steps=8, max_batch=1,
               top_k=1, rounds=1, quality_floor="psnr=60", out=tmp_path / "c.yaml", storage=storage, study_name="c",
               pinned={"compile": "none", "cache": "first-block"}, trial_timeout_s=300)

    trial = optuna.load_study(study_name="c", storage=storage).trials[0]
    tried = trial.user_attrs["calibration"]
    chosen = trial.user_attrs["settings"]["cache_threshold"]
    assert "cache_threshold" not in trial.params and 2 <= len(tried) <= 6
    assert [value for value, _ in tried[:2]] == [0.3, 0.02]  # the range's ends first
    met = [value for value, score in tried if score >= 60]
    assert chosen == (max(met) if met else 0.02)
    assert all(score < 60 for value, score in tried if value > chosen)
    assert trial.user_attrs["seconds"]["calibration"] > 0


@pytest.mark.slow
def test_a_first_block_cache_trial_scores_every_batch_and_keeps_the_fastest_that_meets_the_floor(tmp_path):
    # First Block Cache skips for the whole batch: on the trained tiny-flux, UniPC at 7 steps with the threshold
    # calibrated at batch 1 (0.3, 32 dB) falls to 23 dB at batch 2. Scored at batch 1 alone, the trial kept batch 8
    # with batch 1's score, and the re-measurement at batch 8 found the floor missed.
    storage = f"sqlite:///{tmp_path / 'b.db'}"
    outcome = run_search(
        "builtin:tiny-flux", budget="8GB", n_trials=1, steps=28, reference_steps=28, max_batch=8, top_k=1, rounds=1,
        quality_floor="psnr=30", out=None, storage=storage, study_name="b", trial_timeout_s=300,
        pinned={"compile": "none", "cache": "first-block", "scheduler": "unipc", "steps": 7})

    trial = optuna.load_study(study_name="b", storage=storage).trials[0]
    batches = {entry["batch_size"]: entry for entry in trial.user_attrs["batches"]}
    assert set(batches) == {1, 2}, batches  # batch 2 missed the floor: no batch 4 was timed
    assert batches[1]["quality"]["psnr"] >= 30 > batches[2]["quality"]["psnr"]
    assert trial.user_attrs["batch_size"] == 1 and trial.user_attrs["quality"] == batches[1]["quality"]
    assert outcome.best.settings["batch_size"] == 1 and outcome.best.quality["psnr"] >= 30  # re-scored at batch 1
