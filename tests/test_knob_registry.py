"""The registry's mechanics: stage order resolved from what knobs declare, domains as data, rules between knobs held
by `apply_profile`, and knobs found through the `autotune.knobs` entry point group."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from autotune import knobs
from autotune.apply import apply_settings
from autotune.exceptions import KnobConflict
from autotune.hardware import probe
from autotune.knobs._stages import resolve_stages

HARDWARE = probe().hardware


def test_stages_resolve_from_after_and_before_in_declaration_order():
    declared = [("precision", [], []), ("compile", ["precision"], []), ("cache", ["precision"], ["compile"])]
    order = resolve_stages(declared)
    assert list(order) == ["precision", "cache", "compile"]


def test_a_stage_cycle_is_an_error_naming_its_stages():
    with pytest.raises(ValueError, match="cycle among: a, b"):
        resolve_stages([("a", ["b"], []), ("b", ["a"], [])])


@pytest.mark.parametrize("domain", [knobs.Categorical(("fp32", 2, None, True)), knobs.IntRange(2, 50),
                                    knobs.FloatRange(0.01, 0.3, log=True), knobs.FloatRange(0.0, 1.0)])
def test_a_domain_round_trips_through_its_dict(domain):
    assert knobs.domain_from_dict(domain.to_dict()) == domain


def test_a_study_made_before_domains_still_reads():
    assert knobs.domain_from_dict(["sdpa", "vanilla"]) == knobs.Categorical(("sdpa", "vanilla"))
    assert knobs.domain_from_dict({"low": 5, "high": 50}) == knobs.IntRange(5, 50)


def test_domains_tell_values_apart_by_type():
    assert True not in knobs.Categorical((1, 2))
    assert 1.5 in knobs.FloatRange(1.0, 2.0) and 3 not in knobs.FloatRange(1.0, 2.0)
    assert 7 in knobs.IntRange(5, 50) and 7.5 not in knobs.IntRange(5, 50) and True not in knobs.IntRange(0, 2)
    with pytest.raises(ValueError):
        knobs.FloatRange(0.0, 1.0, log=True)


def test_every_knob_domain_holds_its_available_values():
    for name, domain in knobs.domains(HARDWARE).items():
        for value in knobs.get(name).values(HARDWARE):
            assert value in domain, (name, value)


def breaking(knob: knobs.Knob, rule: knobs.Rule) -> dict:
    """Settings that break `rule` of `knob`, taken from the knobs' own choices."""
    other = knobs.get(rule.other)
    mine = next(v for v in knob.choices() if (v in rule.values if rule.values is not None else v != knob.default))
    if rule.must_hold:
        wanted = rule.other_values if rule.other_values is not None else {other.default}
        candidates = [v for v in other.choices() if (v not in wanted if rule.other_values is not None else v in wanted)]
    else:
        candidates = [v for v in other.choices() if (v in rule.other_values if rule.other_values is not None
                                                     else v != other.default)]
    parents = {p: next(iter(vals)) for k in (knob, other) if k.parent for p, vals in [k.parent]}
    tried = [{**parents, knob.name: mine, rule.other: theirs} for theirs in candidates]
    # Preferably a value that breaks this rule alone (fuse_qkv's sdpa-flash would also break attention's own rule).
    return next((settings for settings in tried if len(knobs.violations(settings)) == 1), tried[0])


RULES = [(knob.name, index) for knob in knobs.in_order() for index, _ in enumerate(knob.rules)]


@pytest.mark.parametrize(("name", "index"), RULES, ids=[f"{n}-{i}" for n, i in RULES])
def test_apply_refuses_settings_that_break_a_rule_naming_both_knobs(name, index, tiny_pipe):
    knob = knobs.get(name)
    rule = knob.rules[index]
    settings = breaking(knob, rule)
    broken = knobs.violations(settings)
    # The value chosen to break this rule may break another's too (fuse_qkv's sdpa-flash also needs fp16).
    assert any(name in line and rule.other in line and rule.reason in line for line in broken), broken
    with pytest.raises(KnobConflict, match=f"{name}.*{rule.other}"):
        apply_settings(tiny_pipe, settings, HARDWARE, fallback=False)


def test_rules_hold_both_ways():
    rule = knobs.Excludes("offload", "a reason", values={"x"}, other_values={"model"})
    assert rule.broken("x", "d", "model", "none") and not rule.broken("x", "d", "none", "none")
    assert not rule.broken("d", "d", "model", "none")
    need = knobs.Requires("attention", "a reason", values={True}, other_values={"sdpa"})
    assert need.broken(True, False, "vanilla", "sdpa") and not need.broken(True, False, "sdpa", "sdpa")
    assert "needs attention = sdpa: a reason" in need.describe("fuse", True, "vanilla")


def test_the_defaults_break_no_rule():
    assert knobs.violations({}) == []


def test_a_knob_from_another_package_is_found_by_its_entry_point(tmp_path):
    (tmp_path / "extra_knob.py").write_text(textwrap.dedent('''
        from autotune.knobs import Knob, register

        @register
        class Sharpen(Knob):
            name = "sharpen"
            help = "a knob from another package"
            annotation = bool
            default = False
            stage = "sharpen"
            after = ("vae",)
            before = ("compile",)

            def choices(self):
                return [False, True]

            def read(self, pipe):
                return False
    '''))
    dist = tmp_path / "extra_knob-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-knob\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[autotune.knobs]\nsharpen = extra_knob\n")
    script = ("from autotune import knobs; from autotune.profile import Settings; "
              "names = [k.name for k in knobs.in_order()]; "
              "print(names.index('vae_tiling') < names.index('sharpen') < names.index('compile'), "
              "'sharpen' in Settings.model_fields)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{sys.path[0]}"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "True"]


def test_show_changed_names_only_the_settings_away_from_their_defaults_as_yaml_writes_them():
    settings = {**knobs.defaults(), "precision": "bf16", "channels_last": True, "batch_size": 8}
    assert knobs.show_changed(settings) == "precision=bf16, channels_last=true, batch_size=8"
    assert knobs.show_changed(knobs.defaults()) == "defaults"
