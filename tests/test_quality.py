"""Quality as a goal: the floor's syntax, the metrics, the reference cache, searches with a floor, the Pareto set."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from autotune import knobs, options
from autotune.apply import apply_profile
from autotune.compare.candidates import Candidate, choose_picks, pareto_front
from autotune.exceptions import AutotuneError, ProfileError
from autotune.measure import quality, timing
from autotune.pipelines import shapes, tiny_sd_random
from autotune.profile import load_profile, load_profile_set
from autotune.tuner.run import run_search

# Cheap and still meaningful: a 6-step reference, 3-step workload, batches of 1 and 2, one re-measure round.
SMALL = dict(height=64, width=64, steps=3, reference_steps=6, max_batch=2, rounds=1, top_k=2,
             pinned={"compile": "none"}, trial_timeout_s=300)


@pytest.mark.parametrize("text, metric, value, relative", [
    ("ssim=0.90", "ssim", 0.90, False), ("psnr=30", "psnr", 30.0, False), ("ssim=-5%", "ssim", -5.0, True),
    (" psnr = 35.5 ", "psnr", 35.5, False),
])
def test_floor_syntax(text, metric, value, relative):
    assert options.parse_floor(text) == options.FloorSpec(metric, value, relative)


@pytest.mark.parametrize("text, complaint", [
    ("ssim", "expected METRIC=VALUE"), ("fid=3", "unknown metric 'fid'"), ("ssim=5%", "a drop from the reference"),
    ("ssim=1.5", "between -1 and 1"), ("psnr=abc", "expected METRIC=VALUE"), ("prompt=2", "between 0 and 1"),
])
def test_bad_floors_name_the_problem(text, complaint):
    with pytest.raises(AutotuneError, match=complaint):
        options.parse_floor(text)


def test_a_relative_floor_is_taken_off_the_reference_noise_floor():
    assert options.parse_floor("ssim=-5%").resolve({"ssim": 0.98}) == pytest.approx(0.931)
    assert options.parse_floor("psnr=30").resolve({"psnr": 100.0}) == 30.0


def test_scores_rank_closeness_to_the_reference_and_nan_is_the_worst():
    rng = np.random.default_rng(0)
    reference = rng.random((2, 32, 32, 3), dtype=np.float32)
    slightly = np.clip(reference + rng.normal(0, 0.01, reference.shape), 0, 1).astype(np.float32)
    badly = np.clip(reference + rng.normal(0, 0.2, reference.shape), 0, 1).astype(np.float32)

    same, close, far = (quality.score(images, reference) for images in (reference, slightly, badly))
    assert same == {"psnr": quality.PSNR_CAP, "ssim": pytest.approx(1.0)}
    assert same["psnr"] > close["psnr"] > far["psnr"] and same["ssim"] > close["ssim"] > far["ssim"]
    assert close["psnr"] == pytest.approx(40, abs=1)  # noise of 0.01 is 40 dB
    poisoned = reference.copy()
    poisoned[0, 0, 0, 0] = np.nan
    assert quality.score(poisoned, reference) == {"psnr": 0.0, "ssim": -1.0}
    with pytest.raises(AutotuneError, match="cannot be scored"):
        quality.score(reference[:1], reference)


def test_a_trial_scores_its_worst_prompt_and_keeps_every_prompts_scores():
    rng = np.random.default_rng(1)
    reference = rng.random((4, 16, 16, 3), dtype=np.float32)
    images = reference.copy()
    images[2] = np.clip(images[2] + rng.normal(0, 0.1, images[2].shape), 0, 1)  # one ruined prompt of four

    by_prompt = quality.score_by_prompt(images, reference, ("psnr", "ssim"))
    assert [value == quality.PSNR_CAP for value in by_prompt["psnr"]] == [True, True, False, True]
    assert quality.score(images, reference) == {"psnr": by_prompt["psnr"][2], "ssim": by_prompt["ssim"][2]}
    assert quality.aggregate({"prompt": [1.0, 0.0, 1.0, 1.0]}) == {"prompt": 0.75}  # a share, not the worst
    clips = np.stack([reference, images], axis=1)  # a video prompt's frames: the mean over its clip
    assert quality.score_by_prompt(clips, np.stack([reference, reference], axis=1), ("psnr",))["psnr"][2] == (
        pytest.approx((quality.PSNR_CAP + by_prompt["psnr"][2]) / 2))


def test_the_prompt_judge_reads_the_scenes_it_was_asked_for():
    prompts = list(shapes.HELD_OUT_PROMPTS)
    drawn = (shapes.render_batch([shapes.parse(p) for p in prompts]).permute(0, 2, 3, 1).numpy() + 1) / 2
    assert quality.score(drawn, drawn, ("prompt",), prompts) == {"prompt": 1.0}
    swapped = prompts[1:] + prompts[:1]  # every image scored against another scene's caption
    assert quality.score(drawn, drawn, ("prompt",), swapped) == {"prompt": 0.0}
    with pytest.raises(AutotuneError, match="reads only the built-in scenes"):
        quality.score(drawn[:1], drawn[:1], ("prompt",), ["a photo of a cat"])
    with pytest.raises(AutotuneError, match="not 'a photo of a cat'"):
        quality.check_judgeable(options.parse_floor("prompt=0.9"), [prompts[0], "a photo of a cat"])
    quality.check_judgeable(options.parse_floor("psnr=30"), ["a photo of a cat"])  # other metrics read any prompt


def test_models_that_are_not_here_are_refused_not_downloaded(monkeypatch):
    monkeypatch.delenv("AUTOTUNE_CLIP_MODEL", raising=False)
    images = np.zeros((1, 8, 8, 3), dtype=np.float32)
    with pytest.raises(AutotuneError, match="never downloaded"):
        quality.score(images, images, ("clip",), ["a cat"])


def test_the_reference_cache_key_follows_what_the_rendering_depends_on(tmp_path):
    workload = {"height": 64, "width": 64, "prompts": ["a"], "seed": 0, "guidance_scale": 7.5}
    versions = {"torch": "2.13.0", "diffusers": "0.42.1", "transformers": "5.24.0"}
    key = quality.reference_key("builtin:tiny-sd-random", workload, 50, "cpu", versions)
    assert key == quality.reference_key("builtin:tiny-sd-random", dict(workload), 50, "cpu", dict(versions))
    assert key != quality.reference_key("builtin:tiny-sd-random", workload, 20, "cpu", versions)
    assert key != quality.reference_key("builtin:tiny-sd-random", {**workload, "seed": 1}, 50, "cpu", versions)
    newer = {**versions, "diffusers": "0.43"}
    assert key != quality.reference_key("builtin:tiny-sd-random", workload, 50, "cpu", newer)
    images = np.random.default_rng(1).random((1, 4, 4, 3), dtype=np.float32)
    quality.save_reference(tmp_path / "r.npz", images, {"ssim": 1.0})
    loaded, noise = quality.load_reference(tmp_path / "r.npz")
    assert np.array_equal(loaded, images) and noise == {"ssim": 1.0}


def rescore(profile, reference):
    """Render the profile's configuration here, in this process, and score it: independent of the search's workers."""
    pipe = apply_profile(tiny_sd_random(), profile)
    pipe.set_progress_bar_config(disable=True)
    images = timing.render(pipe, profile.workload, knobs.call_kwargs(profile.settings_dict()))
    return quality.score(timing.stack(images, len(profile.workload.prompts)), reference)


@pytest.mark.slow
def test_a_floor_is_met_by_the_chosen_configuration_when_rescored(tmp_path):
    outcome = run_search("builtin:tiny-sd-random", budget="8GB", n_trials=7, out=tmp_path / "floor.yaml",
                         quality_floor="psnr=35", **SMALL)

    profile = load_profile(tmp_path / "floor.yaml")
    assert profile.goal.quality_floor.metric == "psnr" and profile.goal.quality_floor.min == 35
    assert profile.goal.quality_floor.reference_steps == 6
    assert profile.metrics.quality["psnr"] >= 35
    assert rescore(profile, outcome.reference)["psnr"] >= 35
    study = optuna.load_study(study_name=profile.provenance.study, storage=f"sqlite:///{tmp_path / 'floor.db'}")
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert {"scheduler", "steps", "precision"} <= set(study.trials[-1].params)  # they joined the search
    # After the seeds, the bisection for the fewest steps that meet the floor, from the reference, one at a time.
    [reference] = [t for t in finished if t.user_attrs.get("recipe") == "reference"]
    fewer = [t for t in finished if t.user_attrs.get("recipe") == "fewer steps"]
    assert fewer and len(study.trials) == 7  # nothing left queued past the study's trials
    for trial in fewer:
        assert trial.params["steps"] < reference.params["steps"]
        assert {**trial.params, "steps": 0} == {**reference.params, "steps": 0}
    for trial in finished:  # every scored trial: infeasible exactly when under the floor
        if trial.user_attrs.get("quality"):
            assert (trial.constraints["quality"] > 0) == (trial.user_attrs["quality"]["psnr"] < 35)
    assert (tmp_path / "floor.images.npz").exists()


@pytest.mark.slow
def test_a_floor_only_the_reference_meets_keeps_its_scheduler_and_steps(tmp_path):
    outcome = run_search("builtin:tiny-sd-random", budget="8GB", n_trials=4, out=None, quality_floor="psnr=60",
                         storage=f"sqlite:///{tmp_path / 'strict.db'}", **SMALL)

    settings = outcome.profile.settings_dict()
    assert settings["scheduler"] == "default" and settings["steps"] == 6
    assert outcome.best.quality["psnr"] >= 60
    assert outcome.baseline.quality["psnr"] < 60  # the default 3 steps do not


@pytest.mark.slow
def test_a_pareto_search_writes_a_profile_set_whose_picks_apply(tmp_path):
    out = tmp_path / "front.yaml"
    outcome = run_search("builtin:tiny-sd-random", budget="8GB", n_trials=5, out=out, objective="pareto", **SMALL)

    front = load_profile_set(out)
    assert front == outcome.profile_set  # the YAML round trip loses nothing
    assert set(front.picks) == {"fastest", "balanced", "smallest"}
    rates = [p.metrics.images_per_s.median for p in front.profiles]
    assert front.picks["fastest"] == rates.index(max(rates))
    for pick in front.picks:
        chosen = front.pick(pick)
        assert load_profile(f"{out}#{pick}") == chosen
        for pipe in (apply_profile(tiny_sd_random(), f"{out}#{pick}"), apply_profile(tiny_sd_random(), out, pick=pick)):
            for name in ("precision", "attention", "channels_last"):
                assert knobs.get(name).read(pipe) == chosen.settings_dict()[name]
        assert chosen.metrics.quality["ssim"] <= 1.0
    with pytest.raises(ProfileError, match="name a pick"):
        load_profile(out)
    with pytest.raises(ProfileError, match="no pick 'nicest'"):
        load_profile(f"{out}#nicest")


def candidate(label, rate, memory, ssim):
    made = Candidate(label, {"batch_size": 1}, latency_s=[1 / rate], peak_memory_bytes=memory)
    made.quality = {"ssim": ssim}
    return made


def test_the_front_drops_dominated_configurations_and_picks_name_the_extremes():
    fast = candidate("fast", 10.0, 900, 0.90)
    small = candidate("small", 2.0, 100, 0.95)
    middle = candidate("middle", 6.0, 300, 0.99)
    worse = candidate("worse", 5.0, 400, 0.98)  # beaten by middle on all three
    front = pareto_front([small, worse, fast, middle], "ssim")
    assert [c.label for c in front] == ["fast", "middle", "small"]
    picks = choose_picks(front, "ssim")
    assert picks == {"fastest": 0, "balanced": 1, "smallest": 2}


@pytest.mark.slow
def test_a_study_under_a_floor_is_joined_by_a_worker_and_exported_with_its_floor(tmp_path):
    from autotune.tuner.distributed import export_profile, run_worker

    storage, name = f"sqlite:///{tmp_path / 'shared.db'}", "shared"
    run_search("builtin:tiny-sd-random", budget="8GB", n_trials=2, out=None, storage=storage, study_name=name,
               quality_floor="psnr=35", **SMALL)
    study = optuna.load_study(study_name=name, storage=storage)
    study.set_user_attr("n_trials", 3)  # as a later `autotune search --trials 3` would record it

    assert run_worker(storage, name) == 1  # the joining worker scores against the reference too
    joined = [t for t in optuna.load_study(study_name=name, storage=storage).trials if "quality" in t.user_attrs]
    assert len(joined) == 3 and all("quality" in t.constraints for t in joined)
    outcome = export_profile(storage, name, tmp_path / "exported.yaml", top_k=1, rounds=1)

    exported = load_profile(tmp_path / "exported.yaml")
    assert exported.goal.quality_floor.metric == "psnr" and exported.goal.quality_floor.min == 35
    assert exported.metrics.quality["psnr"] >= 35
    assert outcome.profile.settings == exported.settings
