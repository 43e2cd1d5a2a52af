"""The loader: `apply_profile` and `load_pipeline` put a profile on a pipeline in the documented order, fall back
with a warning where a value cannot run here, warn about profiles measured elsewhere, and refuse other pipelines.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

import autotune
from autotune import knobs, pipelines
from autotune.apply import KnobUnavailable, apply_profile, apply_settings, check_pipeline_fits, load_pipeline
from autotune.exceptions import (
    AutotuneWarning,
    FallbackWarning,
    IncompatibleProfile,
    ProfileMismatchWarning,
    UnknownModel,
)
from autotune.hardware import probe
from autotune.profile.library import select_profile

HARDWARE = probe().hardware
UNAVAILABLE = [(knob.name, value) for knob in knobs.in_order() if not knob.call_time
               for value in knob.choices() if knob.unavailable(value, HARDWARE) is not None]


def test_apply_profile_returns_the_same_pipeline_changed(tiny_pipe, make_profile, assert_state):
    settings = {"precision": "bf16", "scheduler": "euler", "vae_tiling": True}
    assert apply_profile(tiny_pipe, make_profile(**settings)) is tiny_pipe
    assert_state(tiny_pipe, settings)


def test_apply_profile_applies_knobs_in_the_documented_order(tiny_pipe, make_profile, monkeypatch, assert_state):
    applied = []
    for knob in knobs.in_order():  # record each real apply, then let it run
        def recording(pipe, value, settings, hw, _apply=knob.apply, _name=knob.name):
            applied.append(_name)
            _apply(pipe, value, settings, hw)

        monkeypatch.setitem(vars(knob), "apply", recording)
    settings = {"precision": "bf16", "scheduler": "euler", "attention": "sliced", "attention_slice_size": 2,
                "vae_slicing": True, "channels_last": True}

    apply_profile(tiny_pipe, make_profile(**settings))

    # Options (attention_slice_size...) are applied by their parent; call-time knobs go into the call.
    assert applied == [k.name for k in knobs.in_order() if not k.call_time and k.parent is None]
    assert applied.index("precision") < applied.index("attention") < applied.index("channels_last") \
        < applied.index("offload") < applied.index("compile")
    assert_state(tiny_pipe, settings)


def _activating(knob: knobs.Knob, value) -> dict:
    """The parent value an option needs, and what `value` requires of other knobs (sdpa-cudnn: fp16 or bf16)."""
    needed = {}
    if knob.parent is not None:
        parent, values = knob.parent
        needed = {parent: next(v for v in knobs.get(parent).values(HARDWARE) if v in values)}
    filled = knobs.with_requirements({**needed, knob.name: value}, HARDWARE)
    return {k: v for k, v in filled.items() if k != knob.name}


@pytest.mark.parametrize(("name", "value"), UNAVAILABLE, ids=[f"{n}={v}" for n, v in UNAVAILABLE])
def test_an_unavailable_value_falls_back_with_a_warning(name, value, tiny_pipe, make_profile, assert_state,
                                                        generate):
    knob = knobs.get(name)
    fallback = knob.fallback(value, HARDWARE, tiny_pipe)
    warned = rf"{name}={re.escape(repr(value))} is unavailable here \(.+\); using {re.escape(repr(fallback))}"

    with pytest.warns(FallbackWarning, match=warned):
        apply_profile(tiny_pipe, make_profile(**_activating(knob, value), **{name: value}))

    assert knob.unavailable(fallback, HARDWARE, tiny_pipe) is None
    assert_state(tiny_pipe, {name: fallback})
    generate(tiny_pipe)


def _with_attention_lora(pipe):
    """`pipe` with a LoRA on its UNet's query, key and value projections, added through diffusers' own `add_adapter`,
    its weights random so that it changes the image (PEFT starts them at no change)."""
    from peft import LoraConfig

    torch.manual_seed(0)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v"],
                                     init_lora_weights=False))
    return pipe


def test_fused_qkv_waits_for_a_lora_to_be_merged(make_profile, generate):
    pytest.importorskip("peft")
    base = generate(pipelines.tiny_sd_random())
    with_lora = generate(_with_attention_lora(pipelines.tiny_sd_random()))
    assert np.abs(with_lora - base).max() > 0.05  # the LoRA draws something else

    # What the knob guards against: diffusers fuses the base weights and the LoRA is dropped from the fused layers.
    fused_by_hand = _with_attention_lora(pipelines.tiny_sd_random())
    fused_by_hand.unet.fuse_qkv_projections()
    assert np.abs(generate(fused_by_hand) - with_lora).max() > 0.05

    unmerged = _with_attention_lora(pipelines.tiny_sd_random())
    with pytest.warns(FallbackWarning, match=r"fuse_qkv=True .*a LoRA on \d+ query/key/value projections .*"
                                             r"pipe\.fuse_lora\(\).*using False"):
        apply_profile(unmerged, make_profile(fuse_qkv=True))
    assert knobs.get("fuse_qkv").read(unmerged) is False
    np.testing.assert_allclose(generate(unmerged), with_lora, atol=1e-5)

    merged = _with_attention_lora(pipelines.tiny_sd_random())
    merged.fuse_lora()
    merged.unload_lora_weights()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        apply_profile(merged, make_profile(fuse_qkv=True))
    assert knobs.get("fuse_qkv").read(merged) is True
    np.testing.assert_allclose(generate(merged), with_lora, atol=1e-3)

    # Loaded after a profile that fused them, a LoRA misses the fused layers: hence "merge it before apply_profile".
    late = pipelines.tiny_sd_random()
    apply_profile(late, make_profile(fuse_qkv=True))
    assert np.abs(generate(_with_attention_lora(late)) - with_lora).max() > 0.05


@pytest.mark.skipif(HARDWARE.device != "cpu", reason="offload runs where there is an accelerator")
def test_offload_without_an_accelerator_becomes_none(tiny_pipe, make_profile, generate):
    with pytest.warns(FallbackWarning, match=r"offload='model' .*accelerator.*using 'none'"):
        apply_profile(tiny_pipe, make_profile(offload="model"))
    assert knobs.get("offload").read(tiny_pipe) == "none"
    assert not any(hasattr(m, "_hf_hook") for m in tiny_pipe.unet.modules())
    generate(tiny_pipe)


@pytest.mark.skipif(HARDWARE.device != "cpu", reason="xformers may run on a GPU")
def test_xformers_on_a_cpu_becomes_sdpa(tiny_pipe, make_profile):
    with pytest.warns(FallbackWarning, match="attention='xformers'.*using 'sdpa'"):
        apply_profile(tiny_pipe, make_profile(attention="xformers"))
    for model in (tiny_pipe.unet, tiny_pipe.vae):
        assert {type(p) for p in model.attn_processors.values()} == {AttnProcessor2_0}


@pytest.mark.skipif(HARDWARE.device != "cpu", reason="needs a value that cannot run here")
def test_the_tuner_gets_an_error_instead_of_a_fallback_before_anything_changes(tiny_pipe):
    with pytest.raises(KnobUnavailable, match=r"offload='model' is unavailable here: .*accelerator"):
        apply_settings(tiny_pipe, {"precision": "bf16", "offload": "model"}, HARDWARE, fallback=False)
    assert tiny_pipe.unet.dtype == torch.float32


def test_an_option_without_its_parent_changes_nothing(tiny_pipe, make_profile):
    apply_profile(tiny_pipe, make_profile(attention="sdpa", attention_slice_size=2, compile="none",
                                          compile_scope="regional", compile_fullgraph=True))
    assert {type(p) for p in tiny_pipe.unet.attn_processors.values()} == {AttnProcessor2_0}
    assert not any(getattr(m, "_compiled_call_impl", None) is not None for m in tiny_pipe.unet.modules())


def test_a_profile_measured_here_applies_without_warnings(tiny_pipe, make_profile):
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutotuneWarning)
        apply_profile(tiny_pipe, make_profile(vae_slicing=True))


def test_a_profile_from_another_gpu_warns_and_still_applies(tiny_pipe, make_profile, gpu_hardware, assert_state):
    profile = make_profile(vae_slicing=True).model_copy(update={"hardware": gpu_hardware})
    with pytest.warns(ProfileMismatchWarning, match=r"measured on NVIDIA GeForce RTX 3060 \(sm 8.6\), this is"):
        apply_profile(tiny_pipe, profile)
    assert_state(tiny_pipe, {"vae_slicing": True})


def _series_neighbour(version: str, same: bool) -> str:
    """A version in the same release series as `version` (0.x: same minor; else same major), or just outside it."""
    major, minor = (int(p) for p in version.split("+")[0].split(".")[:2])
    if major == 0:
        return f"0.{minor}.999" if same else f"0.{minor + 1}.0"
    return f"{major}.{minor + 1}.0" if same else f"{major + 1}.0.0"


@pytest.mark.parametrize("library", ["torch", "diffusers"])
def test_a_profile_from_another_library_series_warns(library, tiny_pipe, make_profile, fingerprint):
    installed = getattr(fingerprint.software, library)
    profile = make_profile()
    other = profile.software.model_copy(update={library: _series_neighbour(installed, same=False)})
    with pytest.warns(ProfileMismatchWarning, match=f"measured with {library} "):
        apply_profile(tiny_pipe, profile.model_copy(update={"software": other}))

    same = profile.software.model_copy(update={library: _series_neighbour(installed, same=True)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProfileMismatchWarning)
        apply_profile(tiny_pipe, profile.model_copy(update={"software": same}))


@pytest.mark.parametrize(("field", "value"), [("pipeline", "StableDiffusionXLPipeline"),
                                              ("denoiser", "SD3Transformer2DModel")])
def test_a_profile_for_another_pipeline_is_refused_before_anything_changes(field, value, tiny_pipe, make_profile):
    profile = make_profile(precision="bf16")
    profile = profile.model_copy(update={"model": profile.model.model_copy(update={field: value})})
    with pytest.raises(IncompatibleProfile, match=rf"tuned for .*{value}.*this pipeline is StableDiffusionPipeline"):
        apply_profile(tiny_pipe, profile)
    assert tiny_pipe.unet.dtype == torch.float32


def test_apply_verify_and_the_selection_refuse_another_pipeline_with_the_same_sentence(tiny_pipe, make_profile):
    profile = make_profile()
    profile = profile.model_copy(update={"model": profile.model.model_copy(update={"pipeline": "FluxPipeline"})})
    expected = ("the profile was tuned for FluxPipeline with a UNet2DConditionModel (builtin:tiny-sd-random); "
                "{} is StableDiffusionPipeline with a UNet2DConditionModel")
    with pytest.raises(IncompatibleProfile) as on_pipe:
        check_pipeline_fits(profile, tiny_pipe)
    with pytest.raises(IncompatibleProfile) as on_model:
        check_pipeline_fits(profile, "builtin:tiny-sd-random")  # verify's form: a model id, nothing loaded
    assert str(on_pipe.value) == expected.format("this pipeline") + ": tune it with autotune search"
    assert str(on_model.value) == expected.format("builtin:tiny-sd-random") + ": tune it with autotune search"
    selection = select_profile("builtin:tiny-sd-random", [profile], free_memory_bytes=2**40)
    assert selection.rejected[0].rejections[0] == expected.format("builtin:tiny-sd-random")
    check_pipeline_fits(make_profile(), tiny_pipe)  # the same classes fit


def test_load_pipeline_loads_in_the_profile_dtype(make_profile, assert_state, generate):
    pipe = load_pipeline("builtin:tiny-sd-random", make_profile(precision="bf16"))
    assert pipe.unet.dtype == torch.bfloat16
    assert_state(pipe, {"precision": "bf16"})
    generate(pipe)


def test_load_pipeline_builds_the_model_straight_in_the_profile_dtype(make_profile, monkeypatch):
    # Loading in the target dtype avoids holding a full-precision copy of the weights.
    asked = []
    real_load = pipelines.load

    def load(model, dtype=None, **options):
        asked.append((model, dtype))
        return real_load(model, dtype=dtype, **options)

    monkeypatch.setattr(pipelines, "load", load)
    load_pipeline(profile=make_profile(precision="fp16"))
    assert asked == [("builtin:tiny-sd-random", torch.float16)]


def test_load_pipeline_takes_the_model_from_a_profile_file(make_profile, assert_state, tmp_path):
    settings = {"precision": "fp16", "vae_slicing": True, "attention": "vanilla"}
    path = make_profile(**settings).save(tmp_path / "tuned.yaml")
    pipe = autotune.load_pipeline(profile=path)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert_state(pipe, settings)  # fp16 UNet, fp32 VAE


def test_load_pipeline_without_a_profile_is_the_plain_model():
    pipe = load_pipeline("builtin:tiny-sd-random")
    assert pipe.unet.dtype == torch.float32
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor2_0}


def test_load_pipeline_names_the_builtins_for_an_unknown_one():
    with pytest.raises(UnknownModel, match="unknown built-in model 'builtin:nope'; known: builtin:tiny-sd, "):
        load_pipeline("builtin:nope")


def test_a_pipeline_an_app_placed_on_a_second_gpu_stays_there(gpu_hardware, tiny_pipe, monkeypatch):
    # On a CPU machine the GPU is faked at its boundary: where the pipeline's weights say they are, and where `.to`
    # and the offload hooks are asked to put them.
    import torch

    from autotune.knobs.offload import target_device

    moved = []
    monkeypatch.setattr(type(tiny_pipe), "device", property(lambda pipe: torch.device("cuda", 1)))
    monkeypatch.setattr(tiny_pipe, "to", lambda *args, **kwargs: moved.append(args))
    monkeypatch.setattr(tiny_pipe, "enable_model_cpu_offload", lambda **kwargs: moved.append(kwargs["device"]))
    knobs.get("offload").apply(tiny_pipe, "none", {}, gpu_hardware)
    knobs.get("offload").apply(tiny_pipe, "model", {}, gpu_hardware)
    assert moved == [(torch.device("cuda", 1),), torch.device("cuda", 1)]
    # A pipeline still on the CPU goes to the current GPU, and a CPU search keeps it on the CPU.
    monkeypatch.setattr(type(tiny_pipe), "device", property(lambda pipe: torch.device("cpu")))
    assert target_device(tiny_pipe, "cuda") == torch.device("cuda")
    assert target_device(tiny_pipe, "cpu") == torch.device("cpu")
