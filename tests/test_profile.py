"""The profile file: stable bytes, one clear error per bad file naming its field, and its JSON Schema."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import yaml
from typer.testing import CliRunner

from autotune import knobs
from autotune.apply import resolve_profile, shipped_profile_path
from autotune.cli import app
from autotune.exceptions import ProfileError
from autotune.measure.figures import SpeedRatio, Stat
from autotune.profile import (
    SCHEMA_VERSION,
    Goal,
    Metrics,
    Profile,
    Provenance,
    QualityFloor,
    load_profile,
    profile_from_text,
)


@pytest.fixture
def full_profile(make_profile) -> Profile:
    """A profile with every section filled, as `autotune search` writes one."""
    profile = make_profile(precision="fp16", attention="sliced", attention_slice_size=2, vae_slicing=True,
                           channels_last=True, compile="max-autotune-no-cudagraphs", scheduler="dpm++2m-karras",
                           steps=20, batch_size=6)
    return profile.model_copy(update={
        "goal": Goal(memory_budget_bytes=6 * 1024**3, quality_floor=QualityFloor(metric="ssim", min=0.9)),
        "metrics": Metrics(images_per_s=Stat(median=3.1, cv=0.02, n=7), peak_memory_bytes=5905580032,
                           quality={"ssim": 0.93}, warmup_s=61.2),
        "provenance": Provenance(sampler="TPESampler", seed=0, trials=40, study="sd15-3060",
                                 created=datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc)),
    })


def test_written_read_and_written_again_gives_identical_bytes(full_profile, tmp_path):
    first = full_profile.save(tmp_path / "first" / "p.yaml")
    loaded = load_profile(first)
    second = loaded.save(tmp_path / "second" / "p.yaml")

    assert first.read_bytes() == second.read_bytes()
    header, body = first.read_text().split("\nschema:", 1)
    assert "schema:" + body == full_profile.to_yaml()
    assert loaded == full_profile


def test_a_written_profile_says_how_it_was_made_and_names_no_absolute_path(full_profile, tmp_path):
    made_beside = full_profile.model_copy(update={"provenance": full_profile.provenance.model_copy(
        update={"storage": f"sqlite:///{tmp_path.resolve()}/studies/sd15-3060.db"})})
    text = made_beside.save(tmp_path / "p.yaml").read_text()
    assert text.startswith("# autotune profile: builtin:tiny-sd-random on ")
    assert "made 2026-11-25 by autotune" in text and 'apply_profile(pipe, "p.yaml")' in text
    assert "autotune verify p.yaml" in text
    assert str(tmp_path) not in text and "storage: sqlite:///studies/sd15-3060.db" in text
    assert load_profile(tmp_path / "p.yaml") == made_beside  # read back as a path of this machine


def test_figures_are_rounded_to_what_their_spread_supports():
    assert Stat(median=21.36352656097651, cv=0.10659882070270525, n=10) == Stat(median=21.4, cv=0.107, n=10)
    assert Stat(median=21.36352656, cv=0.004, n=10).median == 21.36  # a spread under 1%: one digit more
    assert SpeedRatio(median=4.80123, low=4.5234, high=5.4211, confidence=0.95).model_dump()["low"] == 4.52


def test_an_older_schema_loads_and_a_newer_one_names_both_versions(full_profile, tmp_path):
    data = yaml.safe_load(full_profile.to_yaml())
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({**data, "schema": 1}))
    assert load_profile(tmp_path / "old.yaml").schema_version == SCHEMA_VERSION
    (tmp_path / "new.yaml").write_text(yaml.safe_dump({**data, "schema": SCHEMA_VERSION + 1, "colour": "red"}))
    with pytest.raises(ProfileError, match=rf"new.yaml: written by a newer autotune \(profile schema "
                                           rf"{SCHEMA_VERSION + 1}; autotune .* reads schemas 1 to {SCHEMA_VERSION}\)"):
        load_profile(tmp_path / "new.yaml")


def test_yaml_form_is_readable_and_ordered(full_profile):
    text = full_profile.to_yaml()
    data = yaml.safe_load(text)
    assert list(data) == ["schema", "hardware", "software", "model", "workload", "goal", "settings", "metrics",
                          "provenance"]
    assert data["schema"] == SCHEMA_VERSION == 3
    # Settings in application order, every knob present, so a reader sees the whole configuration.
    assert list(data["settings"]) == [knob.name for knob in knobs.in_order()]
    assert data["provenance"]["created"] == "2026-11-25T10:00:00Z"


def test_save_leaves_no_temporary_file_behind(full_profile, tmp_path):
    full_profile.save(tmp_path / "profiles" / "tuned.yaml")
    assert [p.name for p in (tmp_path / "profiles").iterdir()] == ["tuned.yaml"]


def test_a_knob_left_out_takes_its_default(make_profile):
    text = make_profile().to_yaml()
    data = yaml.safe_load(text)
    data["settings"] = {"precision": "bf16"}
    profile = profile_from_text(yaml.safe_dump(data))
    assert profile.settings.precision == "bf16"
    assert profile.settings.attention == knobs.get("attention").default


def _without(mapping: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        mapping = mapping[part]
    del mapping[last]


def _set(mapping: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        mapping = mapping[part]
    mapping[last] = value


# (case, change to a good profile's YAML data, text the single error must hold)
BAD_FIELDS = [
    ("unknown knob", ("set", "settings.turbo", True), ["settings.turbo", "unknown knob 'turbo'", "known: "]),
    ("bad enum value", ("set", "settings.attention", "flash9"), ["settings.attention", "'flash9'", "sdpa"]),
    ("bad option value", ("set", "settings.compile_scope", "everything"), ["settings.compile_scope", "regional"]),
    ("negative height", ("set", "workload.height", -64), ["workload.height", "greater than 0", "-64"]),
    ("word as a batch size", ("set", "settings.batch_size", "many"), ["settings.batch_size", "'many'"]),
    ("missing required field", ("del", "model.pipeline"), ["model.pipeline", "required field is missing"]),
    ("missing section", ("del", "hardware"), ["hardware", "required field is missing"]),
    ("wrong schema version", ("set", "schema", 0), ["schema", "(got 0)"]),
    ("unknown top-level field", ("set", "extras", {}), ["extras", "unknown field"]),
    ("bad capability", ("set", "hardware.capability", "eight"), ["hardware.capability", "'eight'"]),
]


@pytest.mark.parametrize(("change", "expected"), [case[1:] for case in BAD_FIELDS], ids=[c[0] for c in BAD_FIELDS])
def test_a_bad_field_gives_one_error_naming_it(change, expected, make_profile, tmp_path):
    data = yaml.safe_load(make_profile().to_yaml())
    if change[0] == "set":
        _set(data, change[1], change[2])
    else:
        _without(data, change[1])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))

    with pytest.raises(ProfileError) as raised:
        load_profile(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    for text in expected:
        assert text in message
    assert message.count(f"{change[1]}:") == 1, "one error for one bad field"


@pytest.mark.parametrize(("text", "expected"), [
    ("- precision: fp16\n- attention: sdpa\n", "a profile is a mapping of fields, got list"),
    ("just a sentence\n", "a profile is a mapping of fields, got str"),
    ("", "a profile is a mapping of fields, got NoneType"),
    ("settings: {attention: [sdpa\nmodel: x\n", "not valid YAML at line"),
    ("schema: 1\n  hardware: cpu\n bad indent: [\n", "not valid YAML"),
], ids=["list", "scalar", "empty", "unclosed bracket", "bad indentation"])
def test_a_file_that_is_not_a_profile_is_one_clear_error(text, expected, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=expected):
        load_profile(path)


def test_a_missing_file_is_a_profile_error(tmp_path):
    with pytest.raises(ProfileError, match="cannot read the profile"):
        load_profile(tmp_path / "nowhere.yaml")


def test_profile_errors_are_value_errors():
    assert issubclass(ProfileError, ValueError)


@pytest.mark.parametrize("name", ["../etc/passwd", "..", "sub/profile", "..\\windows", "/etc/passwd", ".hidden", ""])
def test_a_shipped_profile_name_cannot_leave_the_shipped_folder(name):
    with pytest.raises(ProfileError, match="not a plain name"):
        shipped_profile_path(name)


@pytest.mark.parametrize("name", ["../secrets", "..", "a/../../b.yaml"])
def test_resolving_a_name_with_dots_or_slashes_is_refused(name):
    with pytest.raises(ProfileError, match="not a plain name|no such profile file"):
        resolve_profile(name)


def test_a_missing_profile_path_is_not_taken_for_a_name(tmp_path):
    with pytest.raises(ProfileError, match="gone.yaml: no such profile file"):
        resolve_profile(str(tmp_path / "gone.yaml"))
    with pytest.raises(ProfileError, match="no such profile file"):
        resolve_profile("gone.yaml")


def test_an_unknown_shipped_name_lists_the_shipped_ones(monkeypatch):
    monkeypatch.delenv("AUTOTUNE_PROFILE_PATH", raising=False)
    with pytest.raises(ProfileError, match=r"no profile named 'nope' in .*profiles \(shipped\); known: tiny-sd-cpu"):
        resolve_profile("nope")
    with pytest.raises(ProfileError, match=r"no shipped profile named 'nope'; shipped: tiny-sd-cpu"):
        shipped_profile_path("nope")


def test_resolve_profile_reads_a_path(full_profile, tmp_path):
    path = full_profile.save(tmp_path / "tuned.yaml")
    assert resolve_profile(path) == full_profile
    assert resolve_profile(str(path)) == full_profile
    assert resolve_profile(full_profile) is full_profile


def test_profiles_schema_prints_a_json_schema():
    result = CliRunner().invoke(app, ["profiles", "schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)

    assert schema["title"] == "Profile"
    assert {"schema", "hardware", "software", "model", "workload", "settings"} <= set(schema["properties"])
    assert set(schema["required"]) == {"hardware", "software", "model", "workload"}
    settings = schema["$defs"]["Settings"]
    assert list(settings["properties"]) == [knob.name for knob in knobs.in_order()]
    assert settings["additionalProperties"] is False
    assert settings["properties"]["attention"]["enum"] == knobs.get("attention").choices()
    assert settings["properties"]["attention"]["description"] == knobs.get("attention").help


def test_every_field_of_the_profile_schema_says_what_it_holds():
    schema = json.loads(CliRunner().invoke(app, ["profiles", "schema"]).output)
    definitions = schema["$defs"]

    def described(prop: dict) -> bool:  # a field of a model type may leave it to the model's own description
        ref = prop.get("$ref") or next((p["$ref"] for p in prop.get("anyOf", []) if "$ref" in p), None)
        return bool(prop.get("description")) or bool(ref and definitions[ref.split("/")[-1]].get("description"))

    undescribed = [f"{name}.{field}" for name, model in [("Profile", schema), *definitions.items()]
                   for field, prop in model.get("properties", {}).items() if not described(prop)]
    assert undescribed == []


def test_a_saved_profile_can_be_read_by_others(full_profile, tmp_path):
    # Profiles are shipped in apps and shared folders: not private like the temporary file they are written through.
    path = full_profile.save(tmp_path / "shared.yaml")
    assert path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o640)
    full_profile.save(path)
    assert path.stat().st_mode & 0o777 == 0o640
