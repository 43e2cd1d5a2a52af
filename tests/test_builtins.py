"""How the random-weight built-ins are made: real-shape ones built once and then loaded from autotune's cache, FLUX's
real shape created in bf16 (an fp32 copy would take most of an 80 GB card)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autotune import pipelines
from autotune.pipelines.flux import built_in_bf16, tiny_flux_random


def _render(pipe) -> np.ndarray:
    return pipe("a red cube", height=64, width=64, num_inference_steps=2, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


def test_a_saved_builtin_is_built_once_then_loaded_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_CACHE", str(tmp_path))
    made = []

    def make():
        made.append(True)
        return pipelines.tiny_sd_random()

    monkeypatch.setitem(pipelines.BUILTINS, "tiny-sd-random", pipelines.Builtin(
        make, "StableDiffusionPipeline", "UNet2DConditionModel", 64, 20, saved=True))
    built = pipelines.load("builtin:tiny-sd-random")
    loaded = pipelines.load("builtin:tiny-sd-random")
    assert len(made) == 1
    assert len(list((tmp_path / "builtins").iterdir())) == 1  # the saved folder, no staging left behind
    assert type(loaded) is type(built) and loaded.config._name_or_path == "builtin:tiny-sd-random"
    for name in ("unet", "vae", "text_encoder"):
        for (key, ours), theirs in zip(getattr(built, name).state_dict().items(),
                                       getattr(loaded, name).state_dict().values(), strict=True):
            assert torch.equal(ours, theirs), f"{name}.{key}"
    np.testing.assert_array_equal(_render(loaded), _render(built))


def test_a_cache_that_cannot_be_written_costs_only_the_build(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("AUTOTUNE_CACHE", str(blocked))
    monkeypatch.setitem(pipelines.BUILTINS, "tiny-sd-random", pipelines.Builtin(
        pipelines.tiny_sd_random, "StableDiffusionPipeline", "UNet2DConditionModel", 64, 20, saved=True))
    assert type(pipelines.load("builtin:tiny-sd-random")).__name__ == "StableDiffusionPipeline"


def test_only_the_real_shape_sd_builtin_is_saved():
    # sd15-arch's random init takes 10-15 s on a CPU in every process; flux-arch is built on the GPU in seconds.
    assert [name for name, builtin in pipelines.BUILTINS.items() if builtin.saved] == ["sd15-arch"]


def test_modules_made_in_bf16_never_exist_in_fp32():
    pipe = built_in_bf16(tiny_flux_random, "cpu")
    assert {pipe.transformer.dtype, pipe.vae.dtype, pipe.text_encoder.dtype, pipe.text_encoder_2.dtype} == {
        torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32
    assert np.isfinite(_render(pipe)).all()


def test_the_default_dtype_is_put_back_when_the_build_fails():
    def failing():
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        built_in_bf16(failing, "cpu")
    assert torch.get_default_dtype() == torch.float32


# ---- a model read without its weights: what recommend, probe --model and the memory model need ----


def _no_weights(pipe) -> bool:
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    return bool(modules) and all(t.is_meta for m in modules for t in [*m.parameters(), *m.buffers()])


@pytest.mark.parametrize("model", ["builtin:tiny-sd-random", "folder"])
def test_a_model_read_without_its_weights_has_the_loaded_ones_sizes(model, tiny_folder):
    from autotune.measure.memory_facts import facts_of

    name = str(tiny_folder) if model == "folder" else model
    empty = pipelines.load_empty(name)
    assert _no_weights(empty) and type(empty).__name__ == "StableDiffusionPipeline"
    assert facts_of(empty) == facts_of(pipelines.load(name))


def test_recommend_and_probe_read_a_real_shape_model_without_loading_its_weights():
    import time

    import psutil
    from typer.testing import CliRunner

    from autotune.cli import app
    from autotune.recommendation import recommend

    # sd15-arch's weights are 4.3 GB in fp32: read without them, the memory model still has its sizes.
    held, started = psutil.Process().memory_info().rss, time.monotonic()
    chosen = recommend("builtin:sd15-arch", budget="2GB")
    assert psutil.Process().memory_info().rss - held < 300 * 2**20 and time.monotonic() - started < 20
    assert chosen.predicted_peak_bytes > 3 * 10**9  # the fp32 UNet alone is 3.4 GB
    flux = pipelines.load_empty("builtin:flux-arch")
    assert _no_weights(flux) and flux.transformer.dtype == torch.bfloat16
    probed = CliRunner().invoke(app, ["probe", "--json", "--model", "builtin:sd15-arch"])
    assert probed.exit_code == 0 and '"knob": "attention"' in probed.output


def test_a_dry_run_says_what_a_search_would_run_without_loading_a_weight(tmp_path, monkeypatch):
    import psutil
    from typer.testing import CliRunner

    from autotune.cli import app
    from autotune.tuner.dry_run import dry_run

    held = psutil.Process().memory_info().rss
    told = dry_run("builtin:sd15-arch", budget="6GB")
    assert psutil.Process().memory_info().rss - held < 300 * 2**20  # its fp32 weights alone are 4.3 GB
    assert (told.pipeline, told.denoiser, told.size) == ("StableDiffusionPipeline", "UNet2DConditionModel", (512, 512))
    # SD 1.5's UNet at 512x512 is about 0.8 TFLOP a step per latent; guidance doubles it; 50 steps.
    assert 70e12 < told.image_flops < 90e12 and told.seconds_per_image() > 0
    assert told.configurations > 1 and "precision" in told.space
    narrowed = dry_run("builtin:sd15-arch", budget="6GB", only={"precision": ["fp32"]})
    assert narrowed.space["precision"].values == ("fp32",) and narrowed.configurations < told.configurations
    monkeypatch.chdir(tmp_path)
    shown = CliRunner().invoke(app, ["search", "--dry-run", "--model", "builtin:tiny-flux-random", "--pin",
                                     "compile=none"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert ("model builtin:tiny-flux-random: FluxPipeline, denoiser FluxTransformer2DModel (read without its "
            "weights)") in shown.output
    assert "first trial (the recommendation):" in shown.output and "estimate:" in shown.output
    assert "compile" not in shown.output.split("space:")[1].split("\n")[0]  # a pinned knob is not searched
    assert list(tmp_path.iterdir()) == []  # no study, no profile, no log
