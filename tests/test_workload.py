"""The user's workload (issue 11 item 1): prompts, negative prompt, guidance and any call argument, typed from the
pipeline's signature, refused in one line when the pipeline cannot take it, recorded in the profile and passed back
by `call_kwargs()`; a video pipeline (Wan 2.1) is tuned with its frames and reports frames/s."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import autotune_process
from diffusers import FluxPipeline, LatentConsistencyModelPipeline, PixArtSigmaPipeline, WanPipeline

from autotune.exceptions import InvalidInput
from autotune.measure import quality
from autotune.measure.timing import render_one
from autotune.pipelines import tiny_sd_random
from autotune.profile import Profile, load_profile, profile_from_text
from autotune.workload import Workload, call_parameters, check_call, output_kind, parse_call
from tests import families

# Batched and single convolutions sum in another order: float noise, far below any visible change.
FLOAT_NOISE = 1e-3


# ---- typing call arguments from the signature ----


@pytest.mark.parametrize(("pipeline", "given", "typed"), [
    (FluxPipeline, {"max_sequence_length": "256"}, {"max_sequence_length": 256}),
    (PixArtSigmaPipeline, {"use_resolution_binning": "false", "eta": "0.5"},
     {"use_resolution_binning": False, "eta": 0.5}),
    (WanPipeline, {"num_frames": "33", "guidance_scale_2": "null"}, {"num_frames": 33, "guidance_scale_2": None}),
    (LatentConsistencyModelPipeline, {"original_inference_steps": "50"}, {"original_inference_steps": 50}),
    (WanPipeline, {"num_frames": 9}, {"num_frames": 9}),  # from Python: already a value
])
def test_call_values_are_typed_from_the_pipelines_signature(pipeline, given, typed):
    result = check_call(given, call_parameters(pipeline), pipeline.__name__)
    assert result == typed
    assert [type(value) for value in result.values()] == [type(value) for value in typed.values()]


def test_string_annotations_are_typed_too():
    def call(self, prompt=None, frames=None, fast=True, scale=1.5, latents=None, **kwargs):
        pass

    # What a pipeline module written with `from __future__ import annotations` holds: the annotations' text.
    call.__annotations__ = {"prompt": "str | None", "frames": "Optional[int]", "fast": "bool",
                            "latents": "torch.Tensor | None"}
    Postponed = type("Postponed", (), {"__call__": call})
    kinds = call_parameters(Postponed)
    assert kinds == {"prompt": ("str", "null"), "frames": ("int", "null"), "fast": ("bool",), "scale": ("float",),
                     "latents": ()}
    assert check_call({"frames": "7", "fast": "false", "scale": "2"}, kinds, "Postponed") == {
        "frames": 7, "fast": False, "scale": 2.0}


@pytest.mark.parametrize(("given", "message"), [
    ({"num_framez": "9"}, "--call num_framez: WanPipeline takes no argument 'num_framez'"),
    ({"num_frames": "nine"}, "--call num_frames=nine: WanPipeline's num_frames takes an integer"),
    ({"num_frames": "true"}, "--call num_frames=true: WanPipeline's num_frames takes an integer"),
    ({"return_dict": "yes"}, "--call return_dict: autotune sets return_dict itself"),
    ({"callback_on_step_end_tensor_inputs": "x"}, "--call callback_on_step_end_tensor_inputs: WanPipeline's "
                                                  "callback_on_step_end_tensor_inputs is not a number"),
    ({"guidance_scale": "3"}, "--call guidance_scale: autotune sets guidance_scale itself; use --guidance-scale"),
    ({"num_videos_per_prompt": "2"}, "--call num_videos_per_prompt: autotune sets num_videos_per_prompt itself; "
                                     "use the batch_size knob"),
])
def test_a_call_argument_the_pipeline_cannot_take_is_refused_naming_it_and_the_pipeline(given, message):
    with pytest.raises(InvalidInput) as error:
        check_call(given, call_parameters(WanPipeline), "WanPipeline")
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_video_pipeline_is_told_from_an_image_one():
    assert output_kind(WanPipeline) == "video" and output_kind(FluxPipeline) == "image"


def test_call_flags_parse_as_key_and_text():
    assert parse_call(["num_frames=33", "note=a=b"]) == {"num_frames": "33", "note": "a=b"}
    for bad in ("num_frames", "=3", "two words=1"):
        with pytest.raises(InvalidInput, match="--call takes KEY=VALUE"):
            parse_call([bad])


# ---- the command line refuses bad workload flags in one line ----


@pytest.mark.parametrize(("args", "message"), [
    (["--prompts", "missing.txt"], "--prompts missing.txt: cannot read the file (No such file or directory)"),
    (["--prompts", "blank.txt"], "--prompts blank.txt: the file has no prompts (one per line)"),
    (["--prompts", "latin1.txt"], "--prompts latin1.txt: not UTF-8 text"),
    (["--prompts", "."], "--prompts .: cannot read the file (Is a directory)"),
    (["--prompts", "two.txt", "--prompt", "a cat"], "give --prompt or --prompts FILE, not both"),
    (["--prompt", "  "], "--prompt is blank; give the text of a prompt"),
    (["--guidance", "-1"], "--guidance-scale must be 0 or more, got -1"),  # its short name, checked as the long one
    (["--call", "height=32"], "--call height: autotune sets height itself; use --height or --size"),
    (["--call", "num_frames"], "--call takes KEY=VALUE (a pipeline call argument), got 'num_frames'"),
])
def test_a_bad_workload_flag_is_one_line_and_status_2(tmp_path, args, message):
    (tmp_path / "blank.txt").write_text("\n   \n\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "two.txt").write_text("a dog\na cat\n")
    result = autotune_process("search", *args, "--out", str(tmp_path / "p.yaml"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"autotune: error: {message}"


@pytest.mark.slow
def test_an_unknown_call_argument_is_refused_before_any_trial_runs(tmp_path):
    result = autotune_process("search", "--model", "builtin:tiny-sd-random", "--call", "num_frames=9", "--out",
                       str(tmp_path / "p.yaml"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "autotune: error: --call num_frames: StableDiffusionPipeline takes no argument " \
                                    "'num_frames'"
    assert not list(tmp_path.iterdir())  # no study, no log: no trial ran


def test_prompts_come_from_a_file_one_per_line(tmp_path):
    from autotune.cli.flags import read_prompts

    path = tmp_path / "prompts.txt"
    path.write_text("a red cube\n\n  a lighthouse at dusk  \r\n")
    assert read_prompts([], str(path)) == ["a red cube", "a lighthouse at dusk"]
    assert read_prompts(["a cat", "a dog"], None) == ["a cat", "a dog"]
    assert read_prompts([], None) is None  # the search's default prompts


# ---- the workload in the profile, and what it renders ----


def test_the_workload_is_recorded_in_the_profile_and_returned_by_call_kwargs(make_profile):
    base = make_profile()
    workload = Workload(height=64, width=64, prompts=["a red cube", "a lighthouse"], guidance_scale=4.0,
                        negative_prompt="blurry", call={"guidance_rescale": 0.7, "clip_skip": 1})
    profile = base.model_copy(update={"workload": workload})
    text = profile.to_yaml()
    assert "negative_prompt: blurry" in text and "guidance_rescale: 0.7" in text
    loaded = profile_from_text(text)
    assert loaded.workload == workload and type(loaded.workload.call["clip_skip"]) is int
    kwargs = loaded.call_kwargs()
    assert {k: kwargs[k] for k in ("guidance_scale", "negative_prompt", "guidance_rescale", "clip_skip")} == {
        "guidance_scale": 4.0, "negative_prompt": "blurry", "guidance_rescale": 0.7, "clip_skip": 1}


def test_a_profile_without_the_new_fields_still_loads_and_passes_none_of_them():
    shipped = load_profile("profiles/tiny-sd-cpu.yaml")
    assert shipped.workload.negative_prompt is None and shipped.workload.call == {}
    assert shipped.workload.output == "image"
    assert "negative_prompt" not in shipped.call_kwargs()
    assert "num_images_per_prompt" in shipped.call_kwargs(batch=True)


def test_a_builtins_own_guidance_is_the_default_workloads_and_a_given_one_wins():
    from autotune import pipelines
    from autotune.options import SearchOptions
    from autotune.tuner.run import make_workload
    from autotune.worker import protocol

    own = pipelines.find_builtin("builtin:tiny-sd").guidance_scale
    assert own is not None and own != pipelines.default_guidance("StableDiffusionPipeline")
    info = protocol.Description(pipeline="StableDiffusionPipeline", denoiser="UNet2DConditionModel", default_size=32,
                                default_steps=50, scheduler="EulerDiscreteScheduler", domains={}, hardware={},
                                default_guidance_scale=own)
    assert make_workload(SearchOptions(), info).guidance_scale == own
    assert make_workload(SearchOptions(guidance_scale=7.5), info).guidance_scale == 7.5
    # The shipped profile was made by a search with the built-in's defaults: its workload carries them to the app.
    assert load_profile("profiles/tiny-sd-cpu.yaml").call_kwargs()["guidance_scale"] == own


def test_a_video_profile_passes_its_batch_as_num_videos_per_prompt(make_profile):
    workload = Workload(height=64, width=64, prompts=["a cat"], call={"num_frames": 9}, output="video")
    profile: Profile = make_profile(batch_size=2).model_copy(update={"workload": workload})
    kwargs = profile.call_kwargs(seed=3, batch=True)
    assert kwargs["num_videos_per_prompt"] == 2 and "num_images_per_prompt" not in kwargs
    assert kwargs["num_frames"] == 9 and len(kwargs["generator"]) == 2
    one = profile.call_kwargs(seed=3)  # an app's request: one clip
    assert "num_videos_per_prompt" not in one and len(one["generator"]) == 1


def test_the_negative_prompt_guidance_and_call_arguments_change_the_image():
    pipe = tiny_sd_random()
    steps = {"num_inference_steps": 2}

    def image(**workload) -> np.ndarray:
        workload = Workload(height=64, width=64, prompts=["a red cube"], **workload)
        return render_one(pipe, workload, steps, 0, cuda=False)[0]

    plain = image()
    for changed in (image(negative_prompt="blurry, dark"), image(guidance_scale=1.5),
                    image(call={"guidance_rescale": 0.9})):
        assert np.abs(changed - plain).max() > 10 * FLOAT_NOISE
    # What is measured is what ships: the profile's call gives the rendered image.
    workload = Workload(height=64, width=64, prompts=["a red cube"], negative_prompt="blurry, dark",
                        guidance_scale=1.5, call={"guidance_rescale": 0.9})
    shipped = pipe("a red cube", output_type="np", generator=workload.generators(0, 1),
                   **workload.call_kwargs(steps)).images[0]
    assert np.abs(shipped - image(negative_prompt="blurry, dark", guidance_scale=1.5,
                                  call={"guidance_rescale": 0.9})).max() < FLOAT_NOISE


def test_a_video_is_rendered_with_its_frames_and_scored_on_every_frame():
    pipe = families.tiny_wan()
    workload = Workload(height=64, width=64, prompts=["a cat"], output="video",
                        call={"num_frames": 5, "max_sequence_length": 16})
    clips = render_one(pipe, workload, {"num_inference_steps": 2, "num_images_per_prompt": 2}, 0, cuda=False)
    assert clips.shape == (2, 5, 64, 64, 3)
    nine = render_one(pipe, workload.model_copy(update={"call": {"num_frames": 9, "max_sequence_length": 16}}),
                  {"num_inference_steps": 2}, 0, cuda=False)
    assert nine.shape == (1, 9, 64, 64, 3)
    reference = clips[:1]
    assert quality.score(reference, reference)["psnr"] == quality.PSNR_CAP
    spoiled = reference.copy()
    spoiled[0, 4] = 1 - spoiled[0, 4]  # the last frame only
    assert quality.score(spoiled, reference)["psnr"] < quality.PSNR_CAP
    with pytest.raises(InvalidInput, match="cannot be scored"):
        quality.score(nine, reference)


def test_channels_last_is_unavailable_on_a_video_pipeline_with_the_reason(fingerprint):
    from autotune import knobs

    rows = knobs.availability(fingerprint.hardware, families.tiny_wan())
    [row] = [r for r in rows if r["knob"] == "channels_last" and r["value"] is True]
    assert not row["available"] and "3-D convolutions" in row["reason"]


@pytest.mark.slow
def test_a_tiny_wan_search_tunes_its_frames_reports_frames_per_s_and_its_profile_applies(tmp_path):
    import optuna
    from rich.console import Console

    from autotune.apply import apply_profile
    from autotune.cli.outcome import print_outcome
    from autotune.report.tables import summary_table
    from autotune.tuner.run import run_search
    from autotune.tuner.study import open_storage

    outcome = run_search(families.tiny_wan, budget="8GB", n_trials=2, out=tmp_path / "wan.yaml",
                         storage=f"sqlite:///{tmp_path}/s.db", steps=2, height=64, width=64, max_batch=1, top_k=1,
                         rounds=1, prompts=["a cat dancing"], negative_prompt="blurry", guidance_scale=4.0,
                         call={"num_frames": "5", "max_sequence_length": "16"}, quality_floor="psnr=0",
                         reference_steps=3, pinned={"compile": "none"})
    profile = load_profile(outcome.profile_path)
    assert profile.workload.output == "video"
    assert profile.workload.call == {"num_frames": 5, "max_sequence_length": 16}
    assert profile.workload.negative_prompt == "blurry" and profile.workload.guidance_scale == 4.0
    videos, frames = profile.metrics.images_per_s, profile.metrics.frames_per_s
    assert frames is not None and frames.median == pytest.approx(5 * videos.median, rel=0.01)  # each to 3 digits
    assert "psnr" in profile.metrics.quality
    assert quality.load_images(outcome.images_path)["reference"].shape == (1, 64, 64, 3)  # each clip's first frame

    pipe = apply_profile(families.tiny_wan(), profile)
    clips = pipe(profile.workload.prompts[0], output_type="np", **profile.call_kwargs(seed=0, batch=True)).frames
    assert clips.shape == (1, 5, 64, 64, 3)
    direct = render_one(pipe, profile.workload, {"num_inference_steps": profile.settings.steps}, 0, cuda=False)
    assert np.abs(clips - direct).max() < FLOAT_NOISE

    console = Console(record=True, width=200)
    print_outcome(console, outcome)
    table = console.export_text()
    assert "videos/s" in table and "frames/s" in table
    study = optuna.load_study(study_name=outcome.study_name, storage=open_storage(outcome.storage_url))
    summary = summary_table(study, [], profile)
    assert "frames/s" in summary and "num_frames=5" in summary and "negative prompt" in summary
