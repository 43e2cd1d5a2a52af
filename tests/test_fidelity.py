"""What the profile ships is what was measured: the batch, the seeds, the guidance, the steps, the pipeline kind.

On tiny pipelines of several families (tests/families.py): a stochastic scheduler (LCM, SDXL with Euler ancestral)
and a deterministic one (tiny-sd's PNDM), SD3 for the pipeline's own guidance, img2img for a pipeline autotune
cannot feed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from autotune import knobs
from autotune.apply import apply_profile
from autotune.cli import app
from autotune.exceptions import UnknownModel
from autotune.measure.timing import render_one
from autotune.pipelines import tiny_sd_random
from autotune.profile import IMAGE_SEED_STRIDE, Workload, load_profile, profile_from_dict
from autotune.tuner.run import run_search
from autotune.tuner.space import recipes, steps_range
from autotune.tuner.trials import trial_timeout
from tests import families

SHIPPED = "profiles/tiny-sd-cpu.yaml"
# Batched and single convolutions sum in another order: float noise, far below any visible change.
FLOAT_NOISE = 1e-3


@pytest.mark.parametrize("build", [families.tiny_lcm, families.tiny_sdxl_ancestral, tiny_sd_random],
                         ids=["lcm", "sdxl-euler-ancestral", "sd-pndm"])
def test_image_k_is_the_same_at_batch_1_and_batch_4(build):
    pipe = build()
    workload = Workload(height=64, width=64, prompts=["a red cube", "a lighthouse"])
    batch = render_one(pipe, workload, {"num_inference_steps": 3, "num_images_per_prompt": 4}, 1, cuda=False)
    seed = workload.seed + 1  # the second prompt's
    for k in range(4):
        alone = pipe("a lighthouse", height=64, width=64, num_inference_steps=3, output_type="np",
                     generator=[torch.Generator("cpu").manual_seed(seed + IMAGE_SEED_STRIDE * k)]).images[0]
        assert np.abs(batch[k] - alone).max() < FLOAT_NOISE, f"image {k} changed with the batch"


def test_the_pipelines_own_guidance_is_used_unless_the_workload_sets_one():
    pipe = families.tiny_sd3()
    steps = {"num_inference_steps": 2}

    def direct(**guidance):
        generator = torch.Generator("cpu").manual_seed(0)
        return pipe("a red cube", height=64, width=64, output_type="np", generator=generator, **steps,
                    **guidance).images[0]

    own = render_one(pipe, Workload(height=64, width=64, prompts=["a red cube"]), steps, 0, cuda=False)[0]
    assert np.abs(own - direct()).max() < FLOAT_NOISE  # SD3's own 7.0
    assert np.abs(own - direct(guidance_scale=7.5)).max() > 10 * FLOAT_NOISE
    explicit = render_one(pipe, Workload(height=64, width=64, prompts=["a red cube"], guidance_scale=7.5), steps, 0,
                      cuda=False)[0]
    assert np.abs(explicit - direct(guidance_scale=7.5)).max() < FLOAT_NOISE


def test_call_kwargs_pass_no_guidance_unless_the_workload_set_it(make_profile):
    assert "guidance_scale" not in make_profile().call_kwargs()
    # A profile written when 7.5 was every workload's guidance and one generator served a call: it still means both.
    data = yaml.safe_load(load_profile(SHIPPED).to_yaml())
    data["workload"]["guidance_scale"] = 7.5
    del data["workload"]["seeding"]
    old = profile_from_dict({**data, "schema": 1})
    assert old.workload.guidance_scale == 7.5 and old.call_kwargs()["guidance_scale"] == 7.5
    assert old.workload.seeding == "shared"


def test_the_step_range_under_a_floor_keeps_the_workloads_own_steps():
    space = {"steps": steps_range(4, 50)}
    assert 4 in space["steps"]
    assert all(params["steps"] == 4 for params in recipes(space, "cpu", {"steps": 4}))


def test_an_img2img_pipeline_is_refused_up_front(tmp_path):
    with pytest.raises(UnknownModel, match="StableDiffusionImg2ImgPipeline needs an input image"):
        run_search(families.tiny_img2img, budget="8GB", n_trials=1, out=None, storage=f"sqlite:///{tmp_path}/s.db",
                   steps=2, max_batch=1, pinned={"compile": "none"})


def test_the_reference_trial_gets_time_for_its_steps(make_spec):
    spec = make_spec(fixed={}, trial_timeout_s=100.0, steps=4, reference_steps=50)
    assert trial_timeout(spec, {"steps": 50}) == pytest.approx(100.0 * 50 / 4)
    assert trial_timeout(spec, {"steps": 4}) == trial_timeout(spec, {"steps": 2}) == 100.0


def test_probe_shows_the_install_extra_in_brackets(monkeypatch):
    monkeypatch.setattr(knobs, "availability", lambda hardware, pipe: [
        {"knob": "attention", "value": "xformers", "available": False,
         "reason": "xformers is not installed (pip install 'autotune[xformers]')", "note": None}])
    result = CliRunner().invoke(app, ["probe"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "pip install 'autotune[xformers]'" in result.output


def test_a_pipeline_without_a_safety_checker_loads_without_a_warning(tmp_path):
    import logging

    from autotune.pipelines import load

    families.tiny_sdxl_ancestral().save_pretrained(tmp_path / "sdxl")
    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("diffusers").addHandler(handler)  # diffusers' loggers do not propagate to pytest's
    try:
        assert type(load(str(tmp_path / "sdxl"))).__name__ == "StableDiffusionXLPipeline"
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    assert not [message for message in warnings if "safety_checker" in message]


def test_the_shipped_profiles_call_kwargs_render_the_images_it_measured():
    """At the profile's batch, each prompt's first image is the one the search scored (at batch 1); compile is left
    out here (it computes the same images, and would take minutes on this machine)."""
    profile = load_profile(SHIPPED)
    profile = profile.model_copy(update={"settings": profile.settings.model_copy(update={"compile": "none"})})
    pipe = apply_profile(tiny_sd_random(), profile)
    kwargs = profile.call_kwargs(batch=True)
    assert kwargs["num_images_per_prompt"] == profile.settings.batch_size > 1
    for index, prompt in enumerate(profile.workload.prompts):
        seed = profile.workload.prompt_seed(index)
        shipped = pipe(prompt, output_type="np", **profile.call_kwargs(seed=seed, batch=True)).images
        scored = render_one(pipe, profile.workload, {**kwargs, "num_images_per_prompt": 1}, index, cuda=False)[0]
        assert np.abs(shipped[0] - scored).max() < FLOAT_NOISE


def test_when_every_trial_errored_nothing_fits_says_why_not_memory():
    import optuna

    from autotune.tuner.outcome import nothing_fits_message
    from autotune.tuner.space import REFERENCE_RECIPE
    from autotune.tuner.trials import record_failure

    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({}, user_attrs={"recipe": REFERENCE_RECIPE})
    reasons = ["no answer within 600 s; the worker was killed", "ValueError: Input is in incorrect format",
               "ValueError: Input is in incorrect format"]
    kinds = iter(zip(["timeout", "error", "error"], reasons, strict=True))
    study.optimize(lambda trial: record_failure(trial, "throughput", *next(kinds)), n_trials=3)
    message = nothing_fits_message(study, 4 * 2**30)
    assert "nothing fits" not in message
    assert "every trial failed (3 of 3)" in message
    assert "(2): error: ValueError: Input is in incorrect format" in message
    assert "the reference configuration itself (trial 0) failed: no answer within 600 s" in message


def test_a_searched_lcm_profile_renders_at_its_batch_the_images_the_search_scored(tmp_path):
    """LCM draws noise at every step: with a generator per image, the profile's batch changes no image."""
    from autotune.measure.quality import load_images

    outcome = run_search(families.tiny_lcm, budget="8GB", n_trials=1, out=tmp_path / "lcm.yaml",
                         storage=f"sqlite:///{tmp_path}/s.db", steps=2, reference_steps=4, max_batch=4, top_k=1,
                         rounds=1, quality_floor="psnr=0", pinned={"compile": "none", "batch_size": 4})
    profile = load_profile(outcome.profile_path)
    assert profile.workload.seeding == "per-image" and profile.call_kwargs(batch=True)["num_images_per_prompt"] == 4
    scored = load_images(outcome.images_path)[outcome.best.label]
    pipe = apply_profile(families.tiny_lcm(), profile)
    for index, prompt in enumerate(profile.workload.prompts):
        shipped = pipe(prompt, output_type="np", **profile.call_kwargs(seed=profile.workload.prompt_seed(index),
                                                                       batch=True))
        assert np.abs(shipped.images[0] - scored[index]).max() < FLOAT_NOISE
