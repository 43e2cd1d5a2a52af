"""The ablation: the chosen configuration re-measured beside itself without each knob it changes."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from autotune import knobs
from autotune.cli import app
from autotune.compare.ablation import ablations, wanted
from autotune.profile import load_profile
from autotune.tuner.run import run_search


def test_each_changed_knob_goes_back_alone_with_its_options():
    chosen = {**knobs.defaults(), "precision": "bf16", "cache": "first-block", "cache_threshold": 0.2,
              "batch_size": 4, "steps": 20}
    default = {**knobs.defaults(), "steps": 50, "batch_size": 1}

    found = {a.knob: a for a in ablations(chosen, default)}

    assert set(found) == {"precision", "cache", "batch_size", "steps"}  # the threshold is the cache's option
    assert found["cache"].candidate.settings == {**chosen, "cache": "none", "cache_threshold": 0.05}
    assert found["steps"].candidate.settings == {**chosen, "steps": 50}
    assert found["batch_size"].candidate.settings["batch_size"] == 1
    assert all(a.note is None and a.value == chosen[a.knob] and a.default == default[a.knob]
               for a in found.values())


def test_a_knob_another_chosen_knob_needs_is_not_measured_and_says_why():
    chosen = {**knobs.defaults(), "attention": "sdpa-flash", "precision": "fp16"}

    found = {a.knob: a for a in ablations(chosen, knobs.defaults())}

    assert found["precision"].candidate is None
    assert found["precision"].note.startswith("cannot go back alone: attention=sdpa-flash needs precision")
    assert found["attention"].candidate.settings == {**chosen, "attention": "sdpa"}


@pytest.mark.parametrize(("value", "expected"), [(None, False), (True, True), (False, False)])
def test_the_environment_turns_it_off_unless_asked(monkeypatch, value, expected):
    monkeypatch.setenv("AUTOTUNE_ABLATION", "0")
    assert wanted(value) is expected
    monkeypatch.delenv("AUTOTUNE_ABLATION")
    assert wanted(None) is True


@pytest.mark.slow
def test_a_search_measures_what_each_chosen_knob_is_worth_and_records_it(tmp_path):
    out = tmp_path / "ablated.yaml"
    pinned = {"compile": "none", "precision": "bf16", "channels_last": True}

    outcome = run_search("builtin:tiny-sd-random", budget="8GB", n_trials=2, steps=2, max_batch=2, top_k=1,
                         rounds=2, height=64, width=64, pinned=pinned, out=out, ablation=True)

    changed = [name for name, value in outcome.best.settings.items()
               if name in knobs.KNOBS and knobs.get(name).parent is None and value != outcome.baseline.settings[name]]
    effects = outcome.profile.metrics.ablation
    assert [e.knob for e in effects] == [k.name for k in knobs.in_order() if k.name in changed]
    assert {"precision", "channels_last"} <= {e.knob for e in effects}
    for effect in effects:  # each measured here, beside the chosen configuration: a ratio with its interval
        assert effect.note is None, effect.note
        assert effect.speedup.low <= effect.speedup.median <= effect.speedup.high
        assert effect.peak_memory_bytes > 0
        assert effect.default == outcome.baseline.settings[effect.knob]
    saved = yaml.safe_load(out.read_text())["metrics"]["ablation"]
    assert [e["knob"] for e in saved] == [e.knob for e in effects]
    assert load_profile(out).metrics.ablation == effects


@pytest.mark.slow
def test_the_search_command_prints_the_ablation_table(tmp_path):
    result = CliRunner().invoke(app, [
        "search", "--model", "builtin:tiny-sd-random", "--trials", "1", "--steps", "2", "--max-batch", "1",
        "--height", "64", "--width", "64", "--top-k", "1", "--rounds", "1", "--pin", "compile=none",
        "--pin", "channels_last=true", "--out", str(tmp_path / "p.yaml"), "--ablation"])

    assert result.exit_code == 0, result.output
    assert "What each chosen knob is worth" in result.output
    assert "channels_last" in result.output.split("What each chosen knob is worth")[1]
