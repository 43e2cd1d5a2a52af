"""The knob contract, over the whole registry: every value available here applies through a profile, leaves the
pipeline in the state it promises, reads back, and still generates an image; every unavailable value says why.
A new knob is covered by registering it (and adding its state check to conftest.py).
"""

from __future__ import annotations

import importlib.util
import re
import warnings

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from autotune import knobs, pipelines
from autotune.apply import apply_profile
from autotune.exceptions import FallbackWarning
from autotune.hardware import probe
from autotune.profile import Settings, profile_from_text

HARDWARE = probe().hardware


def activating(knob: knobs.Knob) -> dict:
    """Settings under which `knob` means something: an option needs its parent at a value that activates it."""
    if knob.parent is None:
        return {}
    parent, active_values = knob.parent
    return {parent: next(v for v in knobs.get(parent).values(HARDWARE) if v in active_values)}


def read_as(name: str, value, pipe):
    """What `read` gives for `value`: the value itself, or the concrete form the pipeline keeps of it."""
    if name == "attention_slice_size" and value in ("auto", "max"):
        return next(iter(pipe.unet.attn_processors.values())).slice_size
    if name == "cpu_threads" and value is None:
        return torch.get_num_threads()
    if name == "scheduler" and value == "default":
        return "pndm"  # tiny-sd's own scheduler: SD 1.5's PNDM with skip_prk_steps
    return value


def _is_compiled(knob: knobs.Knob, value) -> bool:
    return knob.stage == "compile" and not (knob.name == "compile" and value == "none")


# Every available (knob, value) but the call-time ones and the compiled ones, which have tests of their own.
CASES = [(knob.name, value) for knob in knobs.in_order() for value in knob.values(HARDWARE)
         if not knob.call_time and not _is_compiled(knob, value)]
CALL_CASES = [(knob.name, value) for knob in knobs.in_order() if knob.call_time for value in knob.values(HARDWARE)]
UNAVAILABLE = [(knob.name, value) for knob in knobs.in_order() for value in knob.choices()
               if knob.unavailable(value, HARDWARE) is not None]


def _compile_cases() -> list[dict]:
    """Each compile mode once (whole denoiser, no fullgraph), then each non-default option once under `default`."""
    compile_knob = knobs.get("compile")
    cases = [{"compile": mode} for mode in compile_knob.values(HARDWARE) if mode != "none"]
    for option in knobs.in_order():
        if option.parent and option.parent[0] == "compile":
            cases += [{"compile": "default", option.name: value}
                      for value in option.values(HARDWARE) if value != option.default]
    return cases


def _case_id(settings: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in settings.items())


def test_every_knob_has_a_state_check(state_checks, call_checks):
    for knob in knobs.in_order():
        checks = call_checks if knob.call_time else state_checks
        assert knob.name in checks, f"add a state check for {knob.name!r} to tests/conftest.py"


def test_every_knob_has_a_value_to_test_here():
    covered = {name for name, _ in CASES + CALL_CASES} | {k for case in _compile_cases() for k in case}
    assert covered == set(knobs.KNOBS)


@pytest.mark.parametrize(("name", "value"), CASES, ids=[f"{n}={v}" for n, v in CASES])
def test_available_value_applies_reads_back_and_generates(name, value, tiny_pipe, make_profile, assert_state,
                                                          generate):
    knob = knobs.get(name)
    settings = {**activating(knob), name: value}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        apply_profile(tiny_pipe, make_profile(**settings))

    assert_state(tiny_pipe, settings)
    assert knob.read(tiny_pipe) == read_as(name, value, tiny_pipe)
    generate(tiny_pipe)


@pytest.fixture
def fresh_dynamo():
    """Compile from a clean dynamo state, count what it captured, and leave nothing compiled behind."""
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("settings", _compile_cases(), ids=_case_id)
def test_compile_applies_and_generates(settings, tiny_pipe, make_profile, assert_state, generate, fresh_dynamo):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        apply_profile(tiny_pipe, make_profile(**settings))
    assert_state(tiny_pipe, settings)
    for name, value in settings.items():
        assert knobs.get(name).read(tiny_pipe) == value

    generate(tiny_pipe)
    assert fresh_dynamo["stats"]["unique_graphs"] >= 1, "the call ran eagerly: nothing was compiled"
    if settings.get("compile_fullgraph"):
        assert not fresh_dynamo["graph_break"]


# call-time knob -> the pipeline call's argument it fills
CALL_ARGUMENTS = {"batch_size": "num_images_per_prompt", "steps": "num_inference_steps"}


@pytest.mark.parametrize(("name", "value"), CALL_CASES, ids=[f"{n}={v}" for n, v in CALL_CASES])
def test_call_time_value_goes_into_the_call(name, value, tiny_pipe, make_profile, call_checks):
    # Two steps keep the batch test fast; the steps test leaves the batch at one image.
    settings = {name: value} if name == "steps" else {name: value, "steps": 2}
    kwargs = make_profile(**settings).call_kwargs()
    assert kwargs.get(CALL_ARGUMENTS[name]) == value
    assert kwargs["height"] == kwargs["width"] == 64

    images = tiny_pipe("a lighthouse", output_type="np", **kwargs).images
    assert np.isfinite(images).all()
    call_checks[name](tiny_pipe, images, value)


def test_call_kwargs_of_a_profile(make_profile):
    assert make_profile(batch_size=4, steps=20).call_kwargs() == {
        "height": 64, "width": 64, "guidance_scale": 7.5, "num_images_per_prompt": 4, "num_inference_steps": 20,
    }
    assert "num_inference_steps" not in make_profile().call_kwargs()  # null: the pipeline's own default


def test_process_knobs_set_the_process_state_whatever_it_was(tiny_pipe, make_profile):
    # A worker runs trial after trial in one process: a process-wide setting must not leak into the next trial.
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.set_num_threads(2)
    apply_profile(tiny_pipe, make_profile(cpu_threads=1, cudnn_benchmark=False, precision="fp32"))
    assert torch.get_num_threads() == 1
    assert torch.backends.cudnn.benchmark is False
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert knobs.get("precision").read(tiny_pipe) == "fp32"


def test_fp16_keeps_the_sd_vae_in_fp32(tiny_pipe, make_profile, generate):
    assert tiny_pipe.vae.config.force_upcast
    apply_profile(tiny_pipe, make_profile(precision="fp16"))
    assert tiny_pipe.unet.dtype == torch.float16
    assert tiny_pipe.vae.dtype == torch.float32
    generate(tiny_pipe)  # fp16 latents reach the fp32 VAE without a dtype mismatch


# knob -> what its unavailability reason must mention
CAUSES = {
    "cpu_threads": r"cores|CPU",
    "cudnn_benchmark": r"CUDA",
    "precision": r"GPU|compute capability",
    "attention": r"CUDA|xformers is not installed|compute capability",
    "offload": r"accelerator",
    "compile": r"compiler|triton",
}


@pytest.mark.parametrize(("name", "value"), UNAVAILABLE, ids=[f"{n}={v}" for n, v in UNAVAILABLE])
def test_unavailable_value_says_why(name, value):
    assert name in CAUSES, f"{name}={value!r} is unavailable here: add its expected cause to CAUSES"
    reason = knobs.get(name).unavailable(value, HARDWARE)
    assert "\n" not in reason
    assert re.search(CAUSES[name], reason), reason


@pytest.mark.skipif(HARDWARE.device != "cpu", reason="checks what a CPU-only machine refuses")
def test_cpu_refuses_the_gpu_only_values():
    refused = {(name, value) for name, value in UNAVAILABLE}
    for offload in ("model", "sequential", "group-block", "group-leaf"):
        assert ("offload", offload) in refused
    for attention in ("xformers", "sdpa-efficient", "sdpa-cudnn"):
        assert ("attention", attention) in refused
    assert ("precision", "tf32") in refused
    assert ("cudnn_benchmark", True) in refused


def test_a_gpu_opens_the_gpu_values(gpu_hardware):
    available = {knob.name: knob.values(gpu_hardware) for knob in knobs.in_order()}
    assert available["offload"] == ["none", "model", "sequential", "group-block", "group-leaf"]
    assert "tf32" in available["precision"] and "bf16" in available["precision"]
    assert {"sdpa-flash", "sdpa-efficient", "sdpa-cudnn"} <= set(available["attention"])
    assert available["cudnn_benchmark"] == [False, True]
    # Thread count is a CPU knob: on a GPU only torch's default remains.
    assert available["cpu_threads"] == [None]
    assert "tuned only when the pipeline runs on the CPU" in knobs.get("cpu_threads").unavailable(1, gpu_hardware)
    # xformers runs on a GPU, if it is installed; without it the reason says how to install it.
    xformers = knobs.get("attention").unavailable("xformers", gpu_hardware)
    if importlib.util.find_spec("xformers") is None:
        assert "pip install" in xformers
    else:
        assert xformers is None


def test_a_gpu_before_ampere_refuses_tf32_bf16_and_flash(gpu_hardware):
    turing = gpu_hardware.model_copy(update={"gpu": "NVIDIA GeForce RTX 2080", "capability": "7.5"})
    for name, value in (("precision", "tf32"), ("precision", "bf16"), ("attention", "sdpa-flash"),
                        ("attention", "sdpa-cudnn")):
        reason = knobs.get(name).unavailable(value, turing)
        assert reason and "8.0" in reason, (name, value, reason)
    assert knobs.get("precision").unavailable("fp16", turing) is None
    assert knobs.get("attention").unavailable("sdpa-efficient", turing) is None


def test_gpu_values_checked_against_the_pipeline(gpu_hardware, tiny_pipe):
    assert knobs.get("offload").values(gpu_hardware, tiny_pipe) == knobs.get("offload").choices()
    assert knobs.get("compile_scope").values(gpu_hardware, tiny_pipe) == ["denoiser", "regional"]


def test_slice_size_larger_than_the_heads_is_refused(tiny_pipe):
    heads = min(m.sliceable_head_dim for m in tiny_pipe.unet.modules() if hasattr(m, "sliceable_head_dim"))
    knob = knobs.get("attention_slice_size")
    assert knob.unavailable(heads, HARDWARE, tiny_pipe) is None
    assert f"{heads} heads" in knob.unavailable(heads * 2, HARDWARE, tiny_pipe)


def test_every_scheduler_is_compatible_with_the_tiny_pipeline(tiny_pipe):
    knob = knobs.get("scheduler")
    assert knob.values(HARDWARE, tiny_pipe) == knob.values(HARDWARE)


@pytest.mark.parametrize("hw", [HARDWARE, "gpu"], ids=["here", "fake-gpu"])
def test_every_default_is_available_everywhere(hw, gpu_hardware):
    # The loader falls back to the default, so the default must run on any hardware.
    hw = gpu_hardware if hw == "gpu" else hw
    for knob in knobs.in_order():
        assert knob.unavailable(knob.default, hw) is None, knob.name
        assert knob.default in knob.choices(), knob.name


def test_registry_is_in_application_order():
    stages = [knob.stage for knob in knobs.in_order()]
    assert list(dict.fromkeys(stages)) == ["process", "precision", "scheduler", "attention", "vae", "memory_format",
                                           "placement", "compile", "call"]
    orders = [knob.order for knob in knobs.in_order()]
    assert orders == sorted(orders)
    names = [knob.name for knob in knobs.in_order()]
    for knob in knobs.in_order():
        if knob.parent:  # an option follows its parent, in the same stage
            assert names.index(knob.parent[0]) < names.index(knob.name)
            assert knobs.get(knob.parent[0]).stage == knob.stage


def test_exact_and_reversible_flags():
    assert {k.name for k in knobs.in_order() if not k.exact} == {"precision", "scheduler", "vae_tiling", "steps"}
    assert {k.name for k in knobs.in_order() if not k.reversible} == {"compile", "offload"}


def test_unknown_knob_names_the_known_ones():
    with pytest.raises(KeyError, match=r"unknown knob 'turbo'; known: .*precision"):
        knobs.get("turbo")


def test_a_knob_registers_once():
    with pytest.raises(ValueError, match="registered twice"):
        knobs.register(type(knobs.get("precision")))


@pytest.mark.parametrize("name", list(knobs.KNOBS))
def test_every_choice_round_trips_through_yaml(name, make_profile):
    for value in knobs.get(name).choices():
        settings = {**activating(knobs.get(name)), name: value}
        loaded = profile_from_text(make_profile(**settings).to_yaml())
        assert getattr(loaded.settings, name) == value
        assert type(getattr(loaded.settings, name)) is type(value)


def test_availability_lists_every_choice_with_a_reason_or_none(gpu_hardware):
    for hw in (HARDWARE, gpu_hardware):
        rows = knobs.availability(hw)
        assert [(r["knob"], r["value"]) for r in rows] == [
            (k.name, v) for k in knobs.in_order() for v in k.choices()]
        for row in rows:
            assert row["available"] is (row["reason"] is None)


def test_settings_default_is_every_knobs_default():
    assert Settings().model_dump() == {knob.name: knob.default for knob in knobs.in_order()}


def test_a_fresh_pipeline_reads_as_the_defaults():
    pipe = pipelines.tiny_sd()
    for knob in knobs.in_order():
        # Call-time knobs leave no state; an option means nothing until its parent activates it.
        if knob.call_time or knob.parent:
            continue
        assert knob.read(pipe) == read_as(knob.name, knob.default, pipe), knob.name
