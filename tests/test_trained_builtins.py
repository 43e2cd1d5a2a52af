"""The trained built-ins draw what they are asked, as a real model does: from the shipped weights, with no download,
and with a quality that falls when the steps do (issue 24). `bench/realism.py` measures the rest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autotune import pipelines
from autotune.measure import quality, timing
from autotune.pipelines import shapes
from autotune.pipelines.trained import PROMPTS

TRAINED = ["builtin:tiny-sd", "builtin:tiny-flux"]


def _render(pipe, model: str, steps: int) -> np.ndarray:
    workload = pipelines.find_builtin(model).workload(PROMPTS)
    return timing.stack(timing.render(pipe, workload, {"num_inference_steps": steps}), len(PROMPTS))


def test_the_default_prompts_are_held_out_and_ask_for_different_things():
    scenes = [shapes.parse(prompt) for prompt in PROMPTS]
    assert len(scenes) >= 4 and all(scene in shapes.HELD_OUT_SCENES for scene in scenes)
    for attribute in ("colour", "shape", "position", "background"):
        assert len({getattr(scene, attribute) for scene in scenes}) == len(scenes), attribute


@pytest.mark.parametrize("model", TRAINED)
def test_a_trained_builtin_loads_from_the_package_in_float32(model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = pipelines.load(model)
    assert pipe.config._name_or_path == model
    denoiser = pipelines.denoiser(pipe)
    assert denoiser.dtype == torch.float32 and pipe.vae.dtype == torch.float32
    assert all(torch.isfinite(p).all() for p in denoiser.parameters())
    info = pipelines.find_builtin(model)
    assert info.prompts == PROMPTS and info.size == 32


@pytest.mark.parametrize("model", TRAINED)
def test_a_trained_builtin_draws_its_prompts_and_not_at_two_steps(model):
    pipe = pipelines.load(model)
    default, two = (_render(pipe, model, n) for n in (pipelines.find_builtin(model).steps, 2))
    # The judge reads the default configuration's images as their prompts (issue 24: 90% or more), and not a 2-step
    # blur. Both hold at each built-in's default guidance (bench/realism.py measured others).
    assert quality.score(default, default, ("prompt",), list(PROMPTS))["prompt"] >= 0.9
    assert quality.score(two, two, ("prompt",), list(PROMPTS))["prompt"] <= 0.25


@pytest.mark.parametrize("model", TRAINED)
def test_a_trained_builtins_images_move_away_from_the_defaults_as_the_steps_fall(model):
    pipe = pipelines.load(model)
    default, few, two = (_render(pipe, model, n) for n in (pipelines.find_builtin(model).steps, 8, 2))
    # A random-weight model barely moves: tiny-sd-random keeps 30 dB at 4 steps (bench/realism.py).
    assert quality.score(two, default, ("psnr",))["psnr"] < quality.score(few, default, ("psnr",))["psnr"]
    assert quality.score(two, default, ("psnr",))["psnr"] < 30


def test_a_trained_builtin_whose_weights_are_missing_says_so_in_one_line(tmp_path, monkeypatch):
    from autotune.exceptions import UnknownModel
    from autotune.pipelines import trained as builtin_trained

    monkeypatch.setattr(builtin_trained, "WEIGHTS", tmp_path)
    with pytest.raises(UnknownModel, match="not shipped yet .* use builtin:tiny-flux-random"):
        pipelines.load("builtin:tiny-flux")
