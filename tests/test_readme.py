"""The README's quickstart is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quickstart_commands() -> list[str]:
    section = ROOT.joinpath("README.md").read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.+?)\n```", section)


def test_the_quickstart_has_two_commands_and_ci_runs_the_test_one():
    run_main, run_tests = quickstart_commands()
    assert "autotune search" in run_main and "pytest" in run_tests
    ci_lines = [line for line in ROOT.joinpath(".ci/run").read_text().splitlines() if not line.startswith("#")]
    assert run_tests in ci_lines


def test_the_first_snippet_renders_one_image_with_a_throughput_profile(tmp_path, monkeypatch):
    # The snippet as written, against the shipped throughput profile (tuned at batch 16) under the snippet's name: an
    # app serving one image must not render 16 to keep one.
    from autotune import load_profile, pipelines

    shipped = load_profile(ROOT / "profiles" / "tiny-sd-cpu.yaml")
    assert shipped.goal.objective == "throughput" and shipped.settings.batch_size > 1
    untimed = shipped.settings.model_copy(update={"compile": "none", "steps": 2})  # the same call, without compiling
    shipped.model_copy(update={"settings": untimed}).save(tmp_path / "rtx3060.yaml")
    snippet = re.findall(r"```python\n(.+?)\n```", ROOT.joinpath("README.md").read_text(), re.S)[0]
    pipe = pipelines.load("builtin:tiny-sd")
    calls = []
    pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    monkeypatch.chdir(tmp_path)
    namespace = {"pipe": pipe}
    exec(snippet, namespace)
    assert namespace["image"].size == (32, 32)  # the profile's workload size
    assert set(calls) == {2}  # one image, with classifier-free guidance's unconditional half
