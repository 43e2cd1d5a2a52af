"""A search completes on each pipeline family users run, and its profile applies to a freshly built pipeline.

Each family is a tiny random-weight pipeline (tests/families.py, the built-ins); a search of two trials (the pipeline
as loaded, then the first documentation recipe) is enough to show that every stage runs on the family: the worker
loads it by name, the knobs' availability is checked against it, trials time it, the winner is re-measured, the
profile is written, and `apply_profile` puts it on a new instance that renders.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from autotune import knobs, pipelines
from autotune.apply import apply_profile
from autotune.cli import app
from autotune.hardware import probe
from autotune.profile import load_profile
from autotune.tuner.run import run_search
from tests import families

FAMILIES = {
    "sd15": "builtin:tiny-sd-random",
    "sdxl": families.tiny_sdxl_ancestral,
    "sd3": families.tiny_sd3,
    "flux": "builtin:tiny-flux-random",
    "lcm": families.tiny_lcm,
    "pixart-sigma": families.tiny_pixart_sigma,
}
# Call arguments a family needs at the toy size (PixArt's resolution bins start at 256 px); Wan 2.1 text-to-video,
# with its `num_frames`, is searched in test_workload.
CALLS = {"pixart-sigma": {"use_resolution_binning": False, "clean_caption": False}}


def build(model):
    return pipelines.load(model) if isinstance(model, str) else model()


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_a_search_completes_and_its_profile_applies_to_a_fresh_pipeline(family, tmp_path):
    model = FAMILIES[family]
    outcome = run_search(model, n_trials=2, steps=2, max_batch=2, top_k=1, rounds=1, out=tmp_path / "p.yaml",
                         storage=f"sqlite:///{tmp_path}/s.db", pinned={"compile": "none"}, call=CALLS.get(family))
    profile = load_profile(outcome.profile_path)
    assert outcome.best.measured and profile.metrics.images_per_s.median > 0
    assert profile.model.pipeline == type(build(model)).__name__
    pipe = apply_profile(build(model), profile)
    assert knobs.get("precision").read(pipe) == profile.settings.precision
    images = pipe(profile.workload.prompts[0], output_type="np", **profile.call_kwargs(seed=0)).images
    assert np.isfinite(images).all() and images.shape[-3:] == (profile.workload.height, profile.workload.width, 3)


def test_probe_names_what_a_family_cannot_take_and_why(tmp_path):
    families.tiny_pixart_sigma().save_pretrained(tmp_path / "pixart")
    result = CliRunner().invoke(app, ["probe", "--json", "--model", str(tmp_path / "pixart")])
    assert result.exit_code == 0, result.output
    rows = {(row["knob"], row["value"]): row for row in json.loads(result.stdout)["knobs"]}
    assert "no enable_cache" in rows["cache", "first-block"]["reason"]
    assert "attention slicing" in rows["attention", "sliced"]["reason"]
    assert rows["layerwise_casting", "fp8-e4m3"]["available"]


CHANGES_THE_IMAGE = {
    "cache-and-fp8-storage": {"cache": "first-block", "cache_threshold": 0.2, "layerwise_casting": "fp8-e4m3"},
    "int8-quantization": {"quantization": "int8-weight-only"},
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CHANGES_THE_IMAGE)
def test_a_profile_that_changes_the_image_round_trips_applies_and_verifies(case, tmp_path):
    from autotune.compare.verify import verify_profile

    if knobs.get("quantization").unavailable("int8-weight-only", probe().hardware) and "quantization" in case:
        pytest.skip(knobs.get("quantization").unavailable("int8-weight-only", probe().hardware))
    pinned = {"compile": "none", **CHANGES_THE_IMAGE[case]}
    outcome = run_search("builtin:tiny-flux-random", n_trials=1, steps=4, reference_steps=4, max_batch=1, top_k=1,
                         rounds=1, quality_floor="psnr=5", out=tmp_path / "p.yaml", storage=f"sqlite:///{tmp_path}/s.db",
                         pinned=pinned)
    profile = load_profile(outcome.profile_path)
    assert {name: profile.settings_dict()[name] for name in pinned} == pinned
    assert profile.metrics.quality["psnr"] >= 5
    pipe = apply_profile(pipelines.load("builtin:tiny-flux-random"), profile)
    assert {name: knobs.get(name).read(pipe) for name in CHANGES_THE_IMAGE[case]} == CHANGES_THE_IMAGE[case]
    result = verify_profile(outcome.profile_path, tolerance=0.9, workers=1, rounds=1)
    checks = {check.metric: check for check in result.checks}
    assert checks["quality"].status == "pass", checks["quality"]
    assert result.images_per_s.median > 0 and result.peak_memory_bytes > 0
