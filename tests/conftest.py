"""Shared fixtures: the tiny pipeline, profiles for it, a small generation, and checks on a pipeline's real state.

Process-wide settings are pinned here before autotune is imported: one inductor cache for the whole session (a warm
cache turns a ~40 s compile into a few seconds), kept in the temp folder so the next run starts warm too; reference
renderings cached in a fresh folder per session, deleted at its end (never the user's ~/.cache); and one torch thread
(a busy neighbour slows two threads ~100x on a 2-core machine).
"""

from __future__ import annotations

import atexit
import dataclasses
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# Before torch is imported: importing diffusers makes inductor fix its cache folder for the whole process.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir()) / "autotune-tests-torchinductor"))
os.environ["AUTOTUNE_CACHE"] = tempfile.mkdtemp(prefix="autotune-tests-cache-")
atexit.register(shutil.rmtree, os.environ["AUTOTUNE_CACHE"], ignore_errors=True)  # this session's renderings only
# A search's ablation re-measures the chosen configuration once per changed knob: minutes over the suite's ~70
# searches. Only tests/test_ablation.py asks for it (ablation=True); the rest test other things.
os.environ["AUTOTUNE_ABLATION"] = "0"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# Before autotune is imported too: `cpu_threads: null` restores the thread count torch had when autotune was imported.
torch.set_num_threads(1)

from diffusers import DiffusionPipeline  # noqa: E402
from diffusers.models.attention_processor import (  # noqa: E402
    AttnProcessor,
    AttnProcessor2_0,
    SlicedAttnProcessor,
)
from torch.nn.attention import SDPBackend  # noqa: E402
from typer.testing import CliRunner, Result  # noqa: E402

from autotune import knobs, pipelines  # noqa: E402
from autotune.hardware import Fingerprint, Hardware, probe  # noqa: E402
from autotune.knobs.attention import KernelRestrictedSDPA  # noqa: E402
from autotune.options import SearchOptions  # noqa: E402
from autotune.profile import ModelInfo, Profile, Workload  # noqa: E402
from autotune.tuner.outcome import SearchOutcome  # noqa: E402
from autotune.tuner.spec import StudySpec  # noqa: E402

PROMPT = "a lighthouse at dusk"
SIZE_PX = 64
TINY_SD = ModelInfo(id="builtin:tiny-sd-random", pipeline="StableDiffusionPipeline", denoiser="UNet2DConditionModel")


@pytest.fixture(autouse=True)
def restore_process_state():
    """Undo what a test (or a knob it applied) changed for the whole process."""
    threads = torch.get_num_threads()
    flags = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.fixture(scope="session")
def fingerprint() -> Fingerprint:
    return probe()


@pytest.fixture
def gpu_hardware() -> Hardware:
    """A fake RTX 3060: only the hardware boundary is faked, never a knob."""
    return Hardware(device="cuda", gpu="NVIDIA GeForce RTX 3060", memory_bytes=12 * 1024**3, capability="8.6",
                    driver="580.1", cuda="13.0", cpu="x", cpu_cores=2, ram_bytes=32 * 1024**3)


@pytest.fixture
def tiny_pipe() -> DiffusionPipeline:
    return pipelines.tiny_sd_random()


@pytest.fixture
def make_profile(fingerprint: Fingerprint) -> Callable[..., Profile]:
    """`make_profile(precision="fp16", ...)`: a profile for the tiny pipeline, measured on this machine."""

    def make(**settings: Any) -> Profile:
        return Profile(hardware=fingerprint.hardware, software=fingerprint.software, model=TINY_SD,
                       workload=Workload(height=SIZE_PX, width=SIZE_PX, prompts=[PROMPT]), settings=settings)

    return make


def study_spec(hardware: Hardware, **fields: Any) -> StudySpec:
    """A study's spec as a search records it, for the tiny random pipeline on `hardware`, with `fields` changed."""
    spec = {"model": "builtin:tiny-sd-random", "loadable": True, "pipeline": "StableDiffusionPipeline",
            "denoiser": "UNet2DConditionModel", "workload": Workload(height=64, width=64, prompts=["a cube"]),
            "objective": "throughput", "fixed": {"steps": 2}, "hardware": hardware, "space": {},
            "memory_budget_bytes": 2**30, "n_trials": 1, "max_batch": 1, "trial_timeout_s": 5, "sampler": "random",
            "seed": 0}
    return StudySpec(**{**spec, **fields})


@pytest.fixture
def make_spec(fingerprint: Fingerprint) -> Callable[..., StudySpec]:
    """`make_spec(objective="latency", ...)`: a study's spec for the tiny random pipeline on this machine."""
    return lambda **fields: study_spec(fingerprint.hardware, **fields)


# A search as fast as a real one gets: the tiny random pipeline, one trial of two steps at batch 1, no compile, the
# best re-measured once beside the default.
TINY_SEARCH = SearchOptions(budget="4GB", n_trials=1, steps=2, max_batch=1, top_k=1, rounds=1, height=SIZE_PX,
                            width=SIZE_PX, pinned={"compile": "none"})


def tiny_search_in(folder: Path, model: Any = "builtin:tiny-sd-random", **changes: Any) -> SearchOutcome:
    """`TINY_SEARCH` with `changes`, its profile written to `folder`/tiny.yaml (unless `out` is changed)."""
    from autotune.tuner.run import run_search

    return run_search(model, dataclasses.replace(TINY_SEARCH, **{"out": folder / "tiny.yaml", **changes}))


@pytest.fixture
def tiny_search(tmp_path: Path) -> Callable[..., SearchOutcome]:
    """`tiny_search(n_trials=2, budget="1MiB", ...)`: a search of `TINY_SEARCH` with those options changed."""
    return lambda model="builtin:tiny-sd-random", **changes: tiny_search_in(tmp_path, model, **changes)


def autotune_cli(*args: Any, **env: str) -> Result:
    """`autotune ARGS` run in this process by typer's runner, on a terminal wide enough that no line wraps."""
    from autotune.cli import app

    return CliRunner().invoke(app, [str(arg) for arg in args], env={"COLUMNS": "300", **env})


def autotune_process(*args: Any, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`autotune ARGS` as a user runs it: the installed console script, in a process of its own."""
    script = Path(sys.executable).with_name("autotune")
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.fixture
def cli() -> Callable[..., Result]:
    """`cli("search", "--trials", 1)`: the `autotune` command in this process; its `Result`."""
    return autotune_cli


@pytest.fixture(scope="session")
def tuned_profile(tmp_path_factory: pytest.TempPathFactory) -> Profile:
    """A profile written by the tuner on this machine: one small trial of the tiny pipeline, re-measured once.

    Tests give copies of it other hardware fingerprints (`profile.model_copy(update={"hardware": ...})`).
    """
    folder = tmp_path_factory.mktemp("tuned")
    return tiny_search_in(folder, out=folder / "tuned.yaml").profile


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline saved to a folder: a model as an app loads its own (`from_pretrained(folder)`)."""
    folder = tmp_path_factory.mktemp("models") / "tiny-sd"
    pipelines.tiny_sd_random().save_pretrained(folder)
    return folder


def generate(pipe: DiffusionPipeline, **call: Any) -> np.ndarray:
    """A small, seeded generation; its images, checked to be finite and not blank."""
    call = {"height": SIZE_PX, "width": SIZE_PX, "num_inference_steps": 2, **call}
    images = pipe(PROMPT, output_type="np", generator=torch.Generator().manual_seed(0), **call).images
    assert np.isfinite(images).all(), "the image has NaN or inf pixels"
    assert images.std() > 0, "the image is one flat colour"
    return images


@pytest.fixture(name="generate")
def generate_fixture() -> Callable[..., np.ndarray]:
    return generate


# Extra, independent checks of what some knobs' values leave on the pipeline, read from the pipeline itself (not
# through the knob's `read`, which the contract test holds every knob to). Each takes the pipeline and the full
# settings that were applied. A new knob needs none to be tested.

def _check_cpu_threads(pipe, settings):
    if settings["cpu_threads"] is not None:
        assert torch.get_num_threads() == settings["cpu_threads"]


def _check_cudnn_benchmark(pipe, settings):
    assert torch.backends.cudnn.benchmark is settings["cudnn_benchmark"]


_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _check_precision(pipe, settings):
    value = settings["precision"]
    assert pipe.unet.dtype == _DTYPES[value]
    assert pipe.text_encoder.dtype == _DTYPES[value]
    # SD 1.x's VAE overflows in fp16; its config says force_upcast, so it stays in fp32 under an fp16 UNet.
    upcast = value == "fp16" and pipe.vae.config.force_upcast
    assert pipe.vae.dtype == (torch.float32 if upcast else _DTYPES[value])
    assert torch.backends.cuda.matmul.allow_tf32 is (value == "tf32")


# scheduler value -> (class, config entries it must have)
_SCHEDULERS = {
    "default": ("PNDMScheduler", {"skip_prk_steps": True}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {"use_karras_sigmas": False}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
}


def _check_scheduler(pipe, settings):
    class_name, config = _SCHEDULERS[settings["scheduler"]]
    assert type(pipe.scheduler).__name__ == class_name
    for key, wanted in config.items():
        assert pipe.scheduler.config[key] == wanted, key
    # from_config keeps the model's noise schedule.
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.scheduler.config.beta_start == pytest.approx(0.00085)


# attention value -> (UNet processor class, VAE processor class, SDPA kernel the UNet's processors restrict to). A
# kernel restriction reaches the UNet only: SD's VAE attention (one 512-dim head) is beyond the flash and cuDNN
# kernels on CUDA, so the VAE keeps torch's own SDPA choice.
_ATTENTION = {
    "sdpa": (AttnProcessor2_0, AttnProcessor2_0, None),
    "sdpa-flash": (KernelRestrictedSDPA, AttnProcessor2_0, SDPBackend.FLASH_ATTENTION),
    "sdpa-efficient": (KernelRestrictedSDPA, AttnProcessor2_0, SDPBackend.EFFICIENT_ATTENTION),
    "sdpa-math": (KernelRestrictedSDPA, AttnProcessor2_0, SDPBackend.MATH),
    "sdpa-cudnn": (KernelRestrictedSDPA, AttnProcessor2_0, SDPBackend.CUDNN_ATTENTION),
    "vanilla": (AttnProcessor, AttnProcessor, None),
    # AutoencoderKL has no set_attention_slice: slicing reaches the UNet only.
    "sliced": (SlicedAttnProcessor, AttnProcessor2_0, None),
}


def _check_attention(pipe, settings):
    if settings["attention"] == "xformers":
        from diffusers.models.attention_processor import XFormersAttnProcessor

        unet_class, vae_class, kernel = XFormersAttnProcessor, XFormersAttnProcessor, None
    else:
        unet_class, vae_class, kernel = _ATTENTION[settings["attention"]]
    for model, wanted in ((pipe.unet, unet_class), (pipe.vae, vae_class)):
        processors = list(model.attn_processors.values())
        assert processors, f"{type(model).__name__} has no attention"
        assert {type(p) for p in processors} == {wanted}, type(model).__name__
        if kernel is not None and model is pipe.unet:
            assert {p.kernel for p in processors} == {kernel}


def _check_attention_slice_size(pipe, settings):
    value = settings["attention_slice_size"]
    heads = min(m.sliceable_head_dim for m in pipe.unet.modules() if hasattr(m, "sliceable_head_dim"))
    wanted = {"auto": heads // 2, "max": 1}.get(value, value)
    assert {p.slice_size for p in pipe.unet.attn_processors.values()} == {wanted}


def _check_vae_slicing(pipe, settings):
    assert pipe.vae.use_slicing is settings["vae_slicing"]


def _check_vae_tiling(pipe, settings):
    assert pipe.vae.use_tiling is settings["vae_tiling"]


def spatial_conv_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """Conv weights whose layout tells NCHW from NHWC (a 1x1 or single-channel kernel is both at once)."""
    return [m.weight for m in model.modules()
            if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1 and m.kernel_size != (1, 1)]


def _check_channels_last(pipe, settings):
    for model in (pipe.unet, pipe.vae):
        weights = spatial_conv_weights(model)
        assert weights
        if settings["channels_last"]:
            assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
            assert not any(w.is_contiguous() for w in weights)
        else:
            assert all(w.is_contiguous() for w in weights)


def _check_offload(pipe, settings):
    value = settings["offload"]
    if value == "none":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        for name in ("unet", "vae", "text_encoder"):
            model = getattr(pipe, name)
            assert getattr(model, "_hf_hook", None) is None, f"{name} has an offload hook"
            assert {p.device.type for p in model.parameters()} == {device}, name
    elif value == "model":  # accelerate's whole-model hook, weights resting on the CPU
        assert type(getattr(pipe.unet, "_hf_hook", None)).__name__ == "CpuOffload"
    elif value == "sequential":  # accelerate's per-module hooks that offload after each use
        assert any(getattr(getattr(m, "_hf_hook", None), "offload", False) for m in pipe.unet.modules())
    else:
        from diffusers.hooks.group_offloading import _get_top_level_group_offload_hook

        hook = _get_top_level_group_offload_hook(pipe.unet)
        assert hook is not None
        assert str(getattr(hook.config.offload_type, "value", hook.config.offload_type)) == {
            "group-block": "block_level", "group-leaf": "leaf_level"}[value]


def compiled_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None]


def _check_compile(pipe, settings):
    compiled = compiled_modules(pipe.unet)
    if settings["compile"] == "none":
        assert not compiled
        return
    if settings.get("compile_scope", "denoiser") == "regional":
        blocks = [m for m in pipe.unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
        assert blocks and compiled == blocks, "regional compile compiles exactly the repeated blocks"
    else:
        assert compiled == [pipe.unet]
    assert not compiled_modules(pipe.vae) and not compiled_modules(pipe.text_encoder)


def _check_compile_option(pipe, settings):
    _check_compile(pipe, settings)
    assert settings["compile"] != "none", "a compile option is tested under an active compile mode"


STATE_CHECKS: dict[str, Callable[[DiffusionPipeline, Mapping[str, Any]], None]] = {
    "cpu_threads": _check_cpu_threads,
    "cudnn_benchmark": _check_cudnn_benchmark,
    "precision": _check_precision,
    "scheduler": _check_scheduler,
    "attention": _check_attention,
    "attention_slice_size": _check_attention_slice_size,
    "vae_slicing": _check_vae_slicing,
    "vae_tiling": _check_vae_tiling,
    "channels_last": _check_channels_last,
    "offload": _check_offload,
    "compile": _check_compile,
    "compile_fullgraph": _check_compile_option,
    "compile_scope": _check_compile_option,
}


def _check_batch_size(pipe, images, value):
    assert images.shape == (value, SIZE_PX, SIZE_PX, 3)


def _check_steps(pipe, images, value):
    default = inspect.signature(type(pipe).__call__).parameters["num_inference_steps"].default
    assert pipe.scheduler.num_inference_steps == (value or default)


# Call-time knobs: checked on the images and the scheduler after a real call.
CALL_CHECKS: dict[str, Callable[[DiffusionPipeline, np.ndarray, Any], None]] = {
    "batch_size": _check_batch_size,
    "steps": _check_steps,
}


@pytest.fixture
def assert_state() -> Callable[[DiffusionPipeline, Mapping[str, Any]], None]:
    """`assert_state(pipe, settings)`: the pipeline's real state matches every knob named in `settings`."""

    def check(pipe: DiffusionPipeline, settings: Mapping[str, Any]) -> None:
        for name in settings:
            if name in STATE_CHECKS:
                STATE_CHECKS[name](pipe, {**knobs.defaults(), **settings})

    return check


@pytest.fixture
def state_checks() -> dict[str, Callable]:
    return STATE_CHECKS


@pytest.fixture
def call_checks() -> dict[str, Callable]:
    return CALL_CHECKS
