"""A model as the hub serves it, offline: a tiny pipeline saved in the Hugging Face cache's layout (a snapshot per
commit, `refs/main`, fp16 variant files) under a temporary HF_HOME with HF_HUB_OFFLINE=1, and the same pipeline as
one original-format checkpoint file. The commands run in processes of their own: huggingface_hub reads HF_HOME when
it is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ldm_checkpoint import all_weights, save_single_file

from autotune import pipelines
from autotune.profile import load_profile

pytestmark = pytest.mark.slow

REPO = "autotune-tests/tiny-sd"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def hub_home(tmp_path) -> dict[str, str]:
    """The environment of a machine whose hub cache holds REPO at COMMIT, in fp16 files only."""
    repo = tmp_path / "hf" / "hub" / f"models--{REPO.replace('/', '--')}"
    pipelines.tiny_sd_random().to(torch.float16).save_pretrained(repo / "snapshots" / COMMIT, variant="fp16")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "COLUMNS": "200",
            "PYTHONPATH": str(ROOT), "AUTOTUNE_CACHE": str(tmp_path / "cache")}


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def test_a_hub_model_is_searched_offline_at_its_variant_and_the_profile_records_its_commit(hub_home, tmp_path):
    out = tmp_path / "hub.yaml"
    searched = _run(["-m", "autotune.cli", "search", "--model", REPO, "--variant", "fp16", "--local-files-only",
                     "--budget", "4GB", "--trials", "1", "--steps", "2", "--max-batch", "1", "--top-k", "1",
                     "--rounds", "1", "--pin", "compile=none", "--out", str(out)], hub_home, tmp_path)
    assert searched.returncode == 0, searched.stdout[-2000:] + searched.stderr[-2000:]
    profile = load_profile(out)
    assert (profile.model.id, profile.model.revision, profile.model.variant) == (REPO, COMMIT, "fp16")
    # The app's side: the profile's own model, at its commit and variant, loaded and the profile applied.
    applied = _run(["-c", "import warnings\n"
                          "from autotune.exceptions import ProfileMismatchWarning\n"
                          "warnings.simplefilter('error', ProfileMismatchWarning)  # the tuned commit: no warning\n"
                          "from autotune import load_pipeline\n"
                          f"pipe = load_pipeline(None, {str(out)!r})\n"
                          "print(type(pipe).__name__, pipe('a cube', num_inference_steps=2).images[0].size)"],
                   hub_home, tmp_path)
    assert applied.returncode == 0, applied.stderr[-2000:]
    assert applied.stdout.strip().endswith("StableDiffusionPipeline (64, 64)")


def test_without_its_variant_the_model_is_refused_in_one_line(hub_home, tmp_path):
    # Only fp16 files are cached: the default weights do not exist here, and nothing may be downloaded.
    searched = _run(["-m", "autotune.cli", "search", "--model", REPO, "--local-files-only", "--trials", "1",
                     "--out", str(tmp_path / "p.yaml")], hub_home, tmp_path)
    assert searched.returncode == 2
    assert searched.stderr.strip().count("\n") == 0, searched.stderr  # the libraries' loading noise is in a log
    assert searched.stderr.startswith(f"autotune: error: cannot load {REPO}: ")


def test_another_revision_than_the_tuned_one_warns(hub_home, tmp_path, monkeypatch):
    import warnings

    from autotune.apply import load_pipeline
    from autotune.exceptions import ProfileMismatchWarning

    tuned = load_profile(ROOT / "profiles" / "tiny-sd-cpu.yaml")
    model = tuned.model.model_copy(update={"revision": COMMIT})
    profile = tuned.model_copy(update={"model": model, "settings": tuned.settings.model_copy(
        update={"compile": "none"})})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        load_pipeline(None, profile, revision="main")
    assert any(issubclass(w.category, ProfileMismatchWarning) and f"at commit {COMMIT}" in str(w.message)
               for w in seen)


# ---- a single-file checkpoint: one original-format .safetensors, its pipeline's configs in a folder beside it ----


@pytest.fixture
def checkpoint(tmp_path) -> tuple[Path, Path]:
    """tiny-sd as one original-format checkpoint, and its pipeline's layout: the configs, tokenizer and scheduler
    with no weight files, so every weight loaded must come from the checkpoint."""
    pipe = pipelines.tiny_sd_random()
    layout = tmp_path / "layout"
    pipe.save_pretrained(layout)
    for weights in layout.glob("*/*.safetensors"):
        weights.unlink()
    return save_single_file(pipe, tmp_path / "tiny-sd.safetensors"), layout


def test_a_single_file_checkpoint_loads_every_weight_through_from_single_file(checkpoint):
    path, layout = checkpoint
    pipe = pipelines.load(str(path), torch.float16, hub=pipelines.HubOptions(config=str(layout)))
    original, loaded = all_weights(pipelines.tiny_sd_random()), all_weights(pipe)
    assert set(loaded) == set(original)
    assert all(loaded[k].dtype == torch.float16 for k in loaded)  # loaded in the trial's dtype, not cast after
    assert all(torch.equal(loaded[k].float(), original[k].half().float()) for k in original)
    assert pipe.name_or_path == str(path)  # what "auto" matches profiles on
    assert pipelines.classes(str(path), pipelines.HubOptions(config=str(layout))) == (
        "StableDiffusionPipeline", "UNet2DConditionModel")


def test_a_single_file_checkpoint_is_searched_and_its_profile_applied(checkpoint, hub_home, tmp_path):
    path, layout = checkpoint
    out = tmp_path / "single.yaml"
    searched = _run(["-m", "autotune.cli", "search", "--model", str(path), "--config", str(layout), "--budget", "4GB",
                     "--trials", "1", "--steps", "2", "--max-batch", "1", "--top-k", "1", "--rounds", "1", "--pin",
                     "compile=none", "--out", str(out)], hub_home, tmp_path)
    assert searched.returncode == 0, searched.stdout[-2000:] + searched.stderr[-2000:]
    profile = load_profile(out)
    assert (profile.model.id, profile.model.config, profile.model.revision) == (str(path), str(layout), None)
    applied = _run(["-c", "from autotune import load_pipeline\n"
                          f"pipe = load_pipeline(None, {str(out)!r})\n"
                          "print(type(pipe).__name__, pipe('a cube', num_inference_steps=2).images[0].size)"],
                   hub_home, tmp_path)
    assert applied.returncode == 0, applied.stderr[-2000:]
    assert applied.stdout.strip().endswith("StableDiffusionPipeline (64, 64)")


@pytest.mark.parametrize(("model", "expected"), [
    ("builtin:tiny-sd-random", "autotune: error: --config describes a single-file checkpoint"),
    ("missing.safetensors", "autotune: error: cannot load checkpoint 'missing.safetensors': no such file"),
])
def test_a_config_without_a_checkpoint_or_a_missing_checkpoint_is_one_line(model, expected, hub_home, tmp_path):
    searched = _run(["-m", "autotune.cli", "search", "--model", model, "--config", str(tmp_path), "--trials", "1",
                     "--out", str(tmp_path / "p.yaml")], hub_home, tmp_path)
    assert searched.returncode == 2
    assert searched.stderr.strip().count("\n") == 0, searched.stderr
    assert searched.stderr.startswith(expected), searched.stderr
