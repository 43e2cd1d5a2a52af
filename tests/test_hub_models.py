"""A model as the hub serves it, offline: a tiny pipeline saved in the Hugging Face cache's layout (a snapshot per
commit, `refs/main`, fp16 variant files) under a temporary HF_HOME with HF_HUB_OFFLINE=1. The commands run in
processes of their own: huggingface_hub reads HF_HOME when it is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
    pipelines.tiny_sd().to(torch.float16).save_pretrained(repo / "snapshots" / COMMIT, variant="fp16")
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
