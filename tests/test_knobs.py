"""The knob contract, derived from the registry alone: every value available here applies through a profile, reads
back from the pipeline's real state as the knob says it must (`reads_as`), still generates an image, and round-trips
through YAML; an exact value leaves the image as the default makes it; a reversible knob goes back to its default;
every unavailable value says why. A new knob gets its cases by registering it; `tests/conftest.py`'s STATE_CHECKS
are extra, independent checks for the knobs that have one.
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from autotune import knobs, pipelines
from autotune.apply import apply_profile, apply_settings
from autotune.exceptions import FallbackWarning
from autotune.hardware import probe
from autotune.profile import Settings, profile_from_text

HARDWARE = probe().hardware
TINY = pipelines.tiny_sd_random()
TINY_DIT = pipelines.load("builtin:tiny-flux-random")


def activating(knob: knobs.Knob, pipe=TINY, value=None) -> dict | None:
    """Settings under which `knob` (at `value`, when given) means something: an option needs its parent at a value
    that activates it, and a value may require others (`attention=sdpa-flash` needs fp16 or bf16). None when no
    available value of the parent activates it on `pipe` (a DiT-only cache's options on a UNet)."""
    needed: dict = {}
    if knob.parent is not None:
        parent, active_values = knob.parent
        values = [v for v in knobs.get(parent).values(HARDWARE, pipe) if v in active_values]
        if not values:
            return None
        needed = {parent: values[0]}
    if value is None:
        return needed
    filled = knobs.with_requirements({**needed, knob.name: value}, HARDWARE, pipe)
    return None if filled is None else {k: v for k, v in filled.items() if k != knob.name}


def expected_read(knob: knobs.Knob, value, pipe):
    """What `knob.read` must give once `value` is applied, as the knob declares it (`reads_as`)."""
    wanted = knob.reads_as(value, pipe)
    return knob.read(pipelines.tiny_sd_random()) if wanted == knobs.AS_LOADED else wanted


def _slow(knob: knobs.Knob, value) -> bool:
    # Compiling is slow: each mode and option has one case in test_compile_applies_and_generates.
    return not knob.reversible and value != knob.default and knob.stage == "compile"


def _compiled(settings: dict) -> bool:
    return any(_slow(knobs.get(name), value) for name, value in settings.items())


# Every available (knob, value) on the tiny pipeline, but the call-time ones, which fill the call instead.
AVAILABLE = [(knob.name, value) for knob in knobs.in_order() for value in knob.values(HARDWARE, TINY)
             if not knob.call_time and activating(knob, TINY, value) is not None]
CASES = [(n, v) for n, v in AVAILABLE if not _compiled({**activating(knobs.get(n), TINY, v), n: v})]
CALL_CASES = [(knob.name, value) for knob in knobs.in_order() if knob.call_time
              for value in knob.values(HARDWARE, TINY)]
UNAVAILABLE = [(knob.name, value) for knob in knobs.in_order() for value in knob.choices()
               if knob.unavailable(value, HARDWARE) is not None]
EXACT = [(n, v) for n, v in CASES if knobs.get(n).exact and v != knobs.get(n).default and v not in knobs.get(n).lossy]
REVERSIBLE = [(n, v) for n, v in CASES if knobs.get(n).reversible and knobs.get(n).parent is None
              and v != knobs.get(n).default]


def _compile_cases() -> list[dict]:
    """Each compile mode once, then each non-default option once under the first mode."""
    cases = [{**activating(knobs.get(n), TINY, v), n: v} for n, v in AVAILABLE
             if _compiled({**activating(knobs.get(n), TINY, v), n: v})]
    return [dict(t) for t in dict.fromkeys(tuple(c.items()) for c in cases)]


def _case_id(settings: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in settings.items())


def test_every_knob_has_a_value_to_test_here():
    covered = {name for name, _ in CASES + CALL_CASES + DIT_CASES} | {k for case in _compile_cases() for k in case}
    # An option of a value no built-in can take here (DeepCache's, without the package) has nothing to apply; the
    # parent's unavailable value says why in test_unavailable_value_says_why_in_one_line.
    inert = {k.name for k in knobs.in_order() if activating(k) is None and activating(k, TINY_DIT) is None}
    assert covered == set(knobs.KNOBS) - inert


@pytest.mark.parametrize(("name", "value"), CASES, ids=[f"{n}={v}" for n, v in CASES])
def test_available_value_applies_reads_back_and_generates(name, value, tiny_pipe, make_profile, state_checks,
                                                          generate):
    knob = knobs.get(name)
    settings = {**activating(knob, TINY, value), name: value}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        apply_profile(tiny_pipe, make_profile(**settings))

    for applied in settings:
        assert knobs.get(applied).read(tiny_pipe) == expected_read(knobs.get(applied), settings[applied], tiny_pipe)
        if applied in state_checks:
            state_checks[applied](tiny_pipe, {**knobs.defaults(), **settings})
    generate(tiny_pipe)


# The same contract on a DiT pipeline (FLUX: dispatch attention backends, a flow-matching scheduler), compile apart.
DIT_CASES = [(knob.name, value) for knob in knobs.in_order() for value in knob.values(HARDWARE, TINY_DIT)
             if not knob.call_time and activating(knob, TINY_DIT, value) is not None
             and not _compiled({**activating(knob, TINY_DIT, value), knob.name: value})]


@pytest.mark.parametrize(("name", "value"), DIT_CASES, ids=[f"{n}={v}" for n, v in DIT_CASES])
def test_available_value_applies_reads_back_and_generates_on_a_dit(name, value):
    knob = knobs.get(name)
    settings = {**activating(knob, TINY_DIT, value), name: value}
    pipe = pipelines.load("builtin:tiny-flux-random")
    apply_settings(pipe, settings, HARDWARE, fallback=False)
    for applied, applied_value in settings.items():
        wanted = knobs.get(applied).reads_as(applied_value, pipe)
        if wanted == knobs.AS_LOADED:
            wanted = knobs.get(applied).read(pipelines.load("builtin:tiny-flux-random"))
        assert knobs.get(applied).read(pipe) == wanted, applied
    images = pipe("a lighthouse", height=64, width=64, num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert np.isfinite(images).all() and images.std() > 0


def test_fp8_layerwise_casting_excludes_a_whole_graph_compile_as_dynamo_refuses_its_hooks():
    settings = {"layerwise_casting": "fp8-e4m3", "compile": "default", "compile_fullgraph": True}
    assert any("layerwise-casting hooks" in broken for broken in knobs.violations(settings))
    # The rule stands on diffusers' behaviour: when this stops raising, the rule can go.
    pipe = pipelines.load("builtin:tiny-flux-random")
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    pipe.transformer = torch.compile(pipe.transformer, fullgraph=True)
    with pytest.raises(Exception, match=r"nn\.Parameter\(\)"):
        pipe("a lighthouse", height=64, width=64, num_inference_steps=1, output_type="np")


def test_taylorseer_runs_from_the_fewest_warmup_steps_its_domain_offers():
    # A search samples the domain, not the contract test's choices. With no warmup step, diffusers' TaylorSeer
    # predicts at step 0 from nothing whenever the interval is over 1.
    fewest = knobs.get("cache_warmup_steps").domain(HARDWARE, TINY_DIT).low
    pipe = pipelines.load("builtin:tiny-flux-random")
    apply_settings(pipe, {"cache": "taylorseer", "cache_interval": 2, "cache_warmup_steps": fewest}, HARDWARE,
                   fallback=False)
    images = pipe("a lighthouse", height=64, width=64, num_inference_steps=4, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert np.isfinite(images).all()


@pytest.mark.parametrize(("name", "value"), EXACT, ids=[f"{n}={v}" for n, v in EXACT])
def test_an_exact_value_leaves_the_image_as_the_default_makes_it(name, value, make_profile, generate):
    default, changed = pipelines.tiny_sd_random(), pipelines.tiny_sd_random()
    # Against the default under what the value requires (sdpa-flash's fp16 against fp16 with torch's SDPA).
    knob = knobs.get(name)
    required = activating(knob, TINY, value)
    parent = knob.parent[0] if knob.parent else None
    apply_profile(default, make_profile(**{k: v for k, v in required.items() if k != parent}))
    apply_profile(changed, make_profile(**required, **{name: value}))
    np.testing.assert_allclose(generate(changed), generate(default), atol=2e-3)


@pytest.mark.parametrize(("name", "value"), REVERSIBLE, ids=[f"{n}={v}" for n, v in REVERSIBLE])
def test_a_reversible_knob_goes_back_to_its_default(name, value, tiny_pipe, make_profile):
    knob = knobs.get(name)
    apply_profile(tiny_pipe, make_profile(**activating(knob, TINY, value), **{name: value}))
    apply_profile(tiny_pipe, make_profile())
    assert knob.read(tiny_pipe) == expected_read(knob, knob.default, tiny_pipe)


@pytest.fixture
def fresh_dynamo():
    """Compile from a clean dynamo state, count what it captured, and leave nothing compiled behind."""
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("settings", _compile_cases(), ids=_case_id)
def test_compile_applies_and_generates(settings, tiny_pipe, make_profile, state_checks, generate, fresh_dynamo):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        apply_profile(tiny_pipe, make_profile(**settings))
    for name, value in settings.items():
        assert knobs.get(name).read(tiny_pipe) == expected_read(knobs.get(name), value, tiny_pipe)
        if name in state_checks:
            state_checks[name](tiny_pipe, {**knobs.defaults(), **settings})

    generate(tiny_pipe)
    assert fresh_dynamo["stats"]["unique_graphs"] >= 1, "the call ran eagerly: nothing was compiled"


@pytest.mark.parametrize(("name", "value"), CALL_CASES, ids=[f"{n}={v}" for n, v in CALL_CASES])
def test_call_time_value_goes_into_the_call(name, value, tiny_pipe, make_profile, call_checks):
    # Two steps keep the batch test fast, unless the value under test is the step count.
    settings = {name: value} if name == "steps" else {name: value, "steps": 2}
    kwargs = make_profile(**settings).call_kwargs(batch=True)
    assert knobs.get(name).call_kwargs(value).items() <= kwargs.items()
    assert kwargs["height"] == kwargs["width"] == 64

    images = tiny_pipe("a lighthouse", output_type="np", **kwargs).images
    assert np.isfinite(images).all()
    if name in call_checks:
        call_checks[name](tiny_pipe, images, value)


def test_call_kwargs_of_a_profile(make_profile):
    # An app serving one image per request gets one image; a batch job asks for the profile's batch.
    assert make_profile(batch_size=4, steps=20).call_kwargs() == {
        "height": 64, "width": 64, "num_inference_steps": 20,
    }
    assert make_profile(batch_size=4, steps=20).call_kwargs(batch=True) == {
        "height": 64, "width": 64, "num_images_per_prompt": 4, "num_inference_steps": 20,
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


@pytest.mark.parametrize("then", ["bf16", "fp32"])
def test_another_precision_after_fp16_removes_the_vae_guard(then, tiny_pipe, make_profile, generate):
    # An app may apply one profile after another to one pipeline: the fp16 guard must not feed an fp32 input to a
    # VAE cast to bf16 (conv2d refuses mixed dtypes).
    apply_profile(tiny_pipe, make_profile(precision="fp16"))
    apply_profile(tiny_pipe, make_profile(precision=then))
    assert getattr(tiny_pipe.vae, "_autotune_fp32_guard", None) is None
    assert tiny_pipe.vae.dtype == tiny_pipe.unet.dtype
    generate(tiny_pipe)
    apply_profile(tiny_pipe, make_profile(precision="fp16"))  # and back: the guard again
    assert tiny_pipe.vae.dtype == torch.float32
    generate(tiny_pipe)


def test_fp32_leaves_cudnn_tf32_at_torchs_default(tiny_pipe, make_profile):
    # torch allows TF32 in cuDNN convolutions by default: an fp32 "default configuration" that turned it off would be
    # slower than the pipeline as loaded, and inflate every ratio to it.
    default = torch.backends.cudnn.allow_tf32
    try:
        apply_profile(tiny_pipe, make_profile(precision="tf32" if HARDWARE.device == "cuda" else "fp32"))
        apply_profile(tiny_pipe, make_profile(precision="fp32"))
        assert torch.backends.cudnn.allow_tf32 is True
        assert torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cudnn.allow_tf32 = default


def test_process_state_is_put_back_for_one_configuration_among_several(tiny_pipe, make_profile):
    # Several configured pipelines in one process (a benchmark's table): torch's process-wide flags hold the last
    # one applied, so each is put back before its own timed calls.
    one = {"cpu_threads": 1, "precision": "fp32"}
    apply_profile(tiny_pipe, make_profile(**one))
    other = pipelines.tiny_sd_random()
    apply_profile(other, make_profile(cpu_threads=2))
    assert torch.get_num_threads() == 2
    knobs.apply_process_state(one, HARDWARE)
    assert torch.get_num_threads() == 1
    assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.benchmark is False
    knobs.apply_process_state({}, HARDWARE)
    assert knobs.get("cpu_threads").read(other) == knobs.get("cpu_threads").reads_as(None, other)


def test_requirements_are_filled_with_an_available_value(gpu_hardware, tiny_pipe):
    filled = knobs.with_requirements({"attention": "sdpa-flash"}, gpu_hardware, tiny_pipe)
    assert filled == {"attention": "sdpa-flash", "precision": "fp16"}
    assert knobs.violations(filled) == []
    # A requirement the settings already break is not overridden: they stay refused.
    assert knobs.with_requirements({"attention": "sdpa-flash", "precision": "fp32"}, gpu_hardware) is None
    assert knobs.with_requirements({"fuse_qkv": True}, gpu_hardware) == {"fuse_qkv": True}


@pytest.mark.parametrize(("name", "value"), UNAVAILABLE, ids=[f"{n}={v}" for n, v in UNAVAILABLE])
def test_unavailable_value_says_why_in_one_line(name, value):
    reason = knobs.get(name).unavailable(value, HARDWARE)
    assert reason.strip() and "\n" not in reason
    assert knobs.get(name).fallback(value, HARDWARE) in knobs.get(name).values(HARDWARE)


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
    orders = [knob.order for knob in knobs.in_order()]
    assert orders == sorted(orders)
    for knob in knobs.in_order():
        for earlier in knob.after:
            assert knobs.STAGE_ORDER[earlier] < knob.order, (knob.name, earlier)
        for later in knob.before:
            assert knob.order < knobs.STAGE_ORDER[later], (knob.name, later)
    names = [knob.name for knob in knobs.in_order()]
    for knob in knobs.in_order():
        if knob.parent:  # an option follows its parent, in the same stage
            assert names.index(knob.parent[0]) < names.index(knob.name)
            assert knobs.get(knob.parent[0]).stage == knob.stage


@pytest.mark.parametrize("name", [k.name for k in knobs.in_order() if not k.reversible])
def test_an_irreversible_knob_says_so_because_it_cannot_be_undone(name, tiny_pipe, make_profile):
    # The flag is what a tuner trusts to recycle its worker: prove it on the pipeline, not on a hand-kept list.
    knob = knobs.get(name)
    value = next((v for v in knob.values(HARDWARE, TINY) if v != knob.default), None)
    if value is None:
        pytest.skip(f"{name} has no non-default value here")
    if knob.stage == "compile":
        pytest.skip("compiling is slow; compile's state is checked in test_compile_applies_and_generates")
    apply_profile(tiny_pipe, make_profile(**{name: value}))
    apply_profile(tiny_pipe, make_profile())
    assert knob.read(tiny_pipe) != expected_read(knob, knob.default, tiny_pipe)


def test_unknown_knob_names_the_known_ones():
    with pytest.raises(LookupError, match=r"^unknown knob 'turbo'; known: .*precision"):
        knobs.get("turbo")


def test_a_knob_registers_once():
    with pytest.raises(ValueError, match="registered twice"):
        knobs.register(type(knobs.get("precision")))


@pytest.mark.parametrize("name", list(knobs.KNOBS))
def test_every_choice_round_trips_through_yaml(name, make_profile):
    for value in knobs.get(name).choices():
        settings = {**(activating(knobs.get(name), None) or {}), name: value}
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
    pipe = pipelines.tiny_sd_random()
    for knob in knobs.in_order():
        # Call-time knobs leave no state; an option means nothing until its parent activates it.
        if knob.call_time or knob.parent:
            continue
        assert knob.read(pipe) == expected_read(knob, knob.default, pipe), knob.name


def test_a_cpu_profile_stays_on_the_cpu_of_a_gpu_host(tiny_pipe, monkeypatch):
    # A `--device cpu` search on a GPU host must time the CPU: placement follows the hardware the profile names.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    apply_settings(tiny_pipe, {}, HARDWARE.model_copy(update={"device": "cpu"}), fallback=False)
    assert {p.device.type for p in tiny_pipe.unet.parameters()} == {"cpu"}


@pytest.mark.slow
def test_fullgraph_reaches_torch_on_a_model_with_a_graph_break(make_profile, fresh_dynamo):
    # A dropped `fullgraph=True` would run the break eagerly and pass; torch must refuse the break instead.
    def broken(pipe):
        block = next(m for m in pipe.unet.modules() if type(m).__name__ == "BasicTransformerBlock")
        block.register_forward_pre_hook(lambda module, args: torch._dynamo.graph_break())
        return pipe

    lenient, strict = broken(pipelines.tiny_sd_random()), broken(pipelines.tiny_sd_random())
    apply_profile(lenient, make_profile(compile="default", compile_fullgraph=False))
    apply_profile(strict, make_profile(compile="default", compile_fullgraph=True))
    assert knobs.get("compile_fullgraph").read(strict) is True
    with pytest.raises(torch._dynamo.exc.Unsupported):
        strict("a", num_inference_steps=1, height=64, width=64, output_type="np")
    torch._dynamo.reset()  # dynamo's cache is per code object: the lenient run must not reuse what strict left
    lenient("a", num_inference_steps=1, height=64, width=64, output_type="np")
    assert fresh_dynamo["graph_break"], "the hook did not break the graph"


def test_a_value_a_pipeline_cannot_take_says_why_on_that_pipeline(tiny_pipe):
    # Availability against a pipeline comes from the knob itself: every refusal here is one line that names the model.
    for knob in knobs.in_order():
        for value in knob.values(HARDWARE):
            reason = knob.unavailable(value, HARDWARE, tiny_pipe)
            if reason is not None:
                assert "\n" not in reason and ("UNet" in reason or "Pipeline" in reason), (knob.name, value, reason)


def test_dispatch_backends_reach_only_dispatch_transformers_and_a_known_bad_one_says_where(gpu_hardware, tiny_pipe):
    attention = knobs.get("attention")
    assert attention.unavailable("flex", HARDWARE, TINY_DIT) is None
    assert "dispatcher" in attention.unavailable("flex", HARDWARE, tiny_pipe)
    # SageAttention blackens SD images: said on a UNet whatever the GPU or packages, before anything else.
    assert "black" in attention.unavailable("sage", gpu_hardware, tiny_pipe)
    if importlib.util.find_spec("flash_attn") is None:
        assert "flash_attn" in attention.unavailable("flash", gpu_hardware, TINY_DIT)
    assert "sage" in attention.lossy and attention.exact
