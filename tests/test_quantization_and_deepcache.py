"""What the contract test cannot see of the quantization knob and of DeepCache: which hardware gets which kind,
what an uninstalled package says, that QKV fusion's projection is quantized too, that DeepCache really skips the
UNet's deep blocks, and that a CLI process stays quiet about torchao's import messages."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys

import pytest
import torch

from autotune import knobs, pipelines
from autotune.apply import apply_settings
from autotune.hardware import probe
from autotune.knobs.quantization import quantized_kind
from autotune.quiet import quiet_library_noise

HARDWARE = probe().hardware
needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed")
needs_deepcache = pytest.mark.skipif(importlib.util.find_spec("DeepCache") is None, reason="DeepCache is not installed")


def test_without_torchao_quantization_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    knob = knobs.get("quantization")
    assert knob.values(HARDWARE) == ["none"]
    assert "pip install 'autotune[torchao]'" in knob.unavailable("int8-dynamic", HARDWARE)


@needs_torchao
def test_fp8_needs_compute_capability_8_9(gpu_hardware):
    knob = knobs.get("quantization")
    ampere = gpu_hardware  # sm 8.6
    hopper = gpu_hardware.model_copy(update={"gpu": "NVIDIA H100", "capability": "9.0"})
    assert knob.values(ampere) == ["none", "int8-weight-only", "int8-dynamic"]
    assert "8.9" in knob.unavailable("fp8-dynamic", ampere) and "8.9" in knob.unavailable("fp8-weight-only", ampere)
    assert knob.values(hopper) == knob.choices()


@needs_torchao
@pytest.mark.skipif(HARDWARE.device != "cpu", reason="checks what a CPU runs")
def test_the_cpu_runs_int8_and_fp8_weights_but_not_fp8_dynamic():
    knob = knobs.get("quantization")
    assert knob.values(HARDWARE) == ["none", "int8-weight-only", "int8-dynamic", "fp8-weight-only"]
    assert "8.9" in knob.unavailable("fp8-dynamic", HARDWARE)


@needs_torchao
def test_the_fused_qkv_projection_is_quantized_too(tiny_pipe, generate):
    # Quantizing before fusing would leave the fused projection in full precision (or fail to concatenate).
    apply_settings(tiny_pipe, {"fuse_qkv": True, "quantization": "int8-dynamic"}, HARDWARE, fallback=False)
    fused = [m.to_qkv.weight for m in tiny_pipe.unet.modules() if hasattr(m, "to_qkv")]
    assert fused and all(quantized_kind(weight) == "int8-dynamic" for weight in fused)
    assert quantized_kind(torch.nn.Linear(2, 2).weight) is None
    generate(tiny_pipe)


def _calls_of_the_middle_block(pipe, steps: int) -> int:
    calls = []
    handle = pipe.unet.mid_block.resnets[0].register_forward_pre_hook(lambda module, args: calls.append(1))
    pipe("a lighthouse", height=64, width=64, num_inference_steps=steps, output_type="np",
         generator=torch.Generator().manual_seed(0))
    handle.remove()
    return len(calls)


@needs_deepcache
def test_deepcache_runs_the_deep_blocks_only_every_interval_steps(tiny_pipe):
    # DDIM calls the UNet once a step (the tiny pipeline's PNDM calls it once more).
    apply_settings(tiny_pipe, {"scheduler": "ddim"}, HARDWARE, fallback=False)
    assert _calls_of_the_middle_block(tiny_pipe, 6) == 6
    apply_settings(tiny_pipe, {"scheduler": "ddim", "cache": "deepcache", "cache_interval": 3}, HARDWARE,
                   fallback=False)
    assert _calls_of_the_middle_block(tiny_pipe, 6) == 2  # steps 0 and 3
    apply_settings(tiny_pipe, {"scheduler": "ddim"}, HARDWARE, fallback=False)
    assert _calls_of_the_middle_block(tiny_pipe, 6) == 6


@needs_deepcache
def test_deepcache_is_for_unets_and_the_dit_caches_for_dits():
    cache = knobs.get("cache")
    flux = pipelines.load("builtin:tiny-flux-random")
    assert "no UNet" in cache.unavailable("deepcache", HARDWARE, flux)
    assert "enable_cache" in cache.unavailable("first-block", HARDWARE, pipelines.tiny_sd_random())


def test_a_cli_process_prints_nothing_while_importing_the_libraries():
    # With torchao installed, importing diffusers prints kernel-loading, pytree and checkpoint-class messages.
    code = "import autotune.cli, diffusers, autotune.knobs, autotune.apply; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr
    assert result.stderr == "", result.stderr


def test_only_the_known_messages_are_dropped(caplog):
    quiet_library_noise()
    torchao_logger = logging.getLogger("torchao")
    with caplog.at_level(logging.WARNING, logger="torchao"):
        torchao_logger.warning("Failed to load /site/torchao/_C_mxfp8.so: Could not load this library")
        torchao_logger.warning("a real torchao warning")
    assert [record.getMessage() for record in caplog.records] == ["a real torchao warning"]
