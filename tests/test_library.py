"""The profile library: lookup order, `select_profile`'s choice and its reasons, the refusal when nothing fits, and the
`autotune profiles` commands.

The profiles are the tuner's own (`tuned_profile`), copied with other hardware fingerprints: only the hardware
boundary (the fingerprint, the free memory, NVML) is faked, never the selection.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from diffusers.models.attention_processor import AttnProcessor2_0
from typer.testing import CliRunner

from autotune import hardware, knobs, pipelines
from autotune.apply import apply_profile, load_pipeline, resolve_profile
from autotune.cli import app
from autotune.exceptions import NoProfileFits, ProfileError
from autotune.hardware import Hardware
from autotune.measure.figures import Stat
from autotune.profile import Goal, Profile, load_profile
from autotune.profile.library import ENV_VAR, find_profile, list_profiles, select_profile, shipped_profiles_dir
from autotune.profile.yaml_form import file_text

GiB = 1024**3


def gpu(name: str, capability: str, memory_gib: int) -> Hardware:
    return Hardware(device="cuda", gpu=name, memory_bytes=memory_gib * GiB, capability=capability, driver="580.1",
                    cuda="13.0", cpu="x", cpu_cores=16, ram_bytes=64 * GiB)


H100 = gpu("NVIDIA H100 80GB HBM3", "9.0", 80)
H200 = gpu("NVIDIA H200", "9.0", 141)
RTX4090 = gpu("NVIDIA GeForce RTX 4090", "8.9", 24)


def made_on(profile: Profile, hw: Hardware, images_per_s: float, budget_gib: float, peak_gib: float) -> Profile:
    """The tuner's profile as if measured on `hw`, with that machine's numbers."""
    metrics = profile.metrics.model_copy(update={"images_per_s": Stat(median=images_per_s, cv=0.02, n=6),
                                                 "peak_memory_bytes": int(peak_gib * GiB)})
    # A GPU's search tunes no CPU threads (the tuned profile, made on a busy CPU, may have chosen fewer).
    settings = profile.settings.model_copy(update={"cpu_threads": None}) if hw.device == "cuda" else profile.settings
    return profile.model_copy(update={"hardware": hw, "metrics": metrics, "settings": settings,
                                      "goal": Goal(memory_budget_bytes=int(budget_gib * GiB))})


def for_model(profile: Profile, model_id: str) -> Profile:
    return profile.model_copy(update={"model": profile.model.model_copy(update={"id": model_id})})


@pytest.fixture
def app_profile(tuned_profile, tiny_folder) -> Profile:
    """The tuner's profile of the tiny pipeline, for the app's copy of it in a folder (its model id is the folder)."""
    return for_model(tuned_profile, str(tiny_folder))


@pytest.fixture
def gpu_profiles(app_profile, tmp_path) -> dict[str, Profile]:
    """A library for an H100 machine: same card, same generation, another generation, a CPU, another pipeline."""
    other_pipeline = app_profile.model_copy(update={"model": app_profile.model.model_copy(
        update={"id": "stabilityai/sdxl", "pipeline": "StableDiffusionXLPipeline"})})
    profiles = {
        "h100-slow": made_on(app_profile, H100, 3.0, budget_gib=40, peak_gib=30),
        "h200-fast": made_on(app_profile, H200, 5.0, budget_gib=40, peak_gib=35),
        "h200-faster-but-big": made_on(app_profile, H200, 7.0, budget_gib=100, peak_gib=35),
        "rtx4090": made_on(app_profile, RTX4090, 9.0, budget_gib=20, peak_gib=10),
        "cpu": app_profile,
        "sdxl-h100": made_on(other_pipeline, H100, 8.0, budget_gib=40, peak_gib=30),
    }
    for name, profile in profiles.items():
        profile.save(tmp_path / "gpu-profiles" / f"{name}.yaml")
    return profiles


@pytest.fixture
def app_pipe(tiny_folder):
    return pipelines.load(str(tiny_folder))


def select_on_h100(model, folder, free_gib: float = 60):
    return select_profile(str(model), search_path=folder, fingerprint=H100, free_memory_bytes=int(free_gib * GiB))


def labels(items) -> list[str]:
    return [item.label.split(" ")[0] for item in items]


def reasons(selection) -> dict[str, str]:
    return {item.label.split(" ")[0]: "; ".join(item.rejections) for item in selection.rejected}


def test_the_same_gpu_comes_first_then_the_same_generation_by_images_per_s(gpu_profiles, tmp_path, tiny_folder):
    selection = select_on_h100(tiny_folder, tmp_path / "gpu-profiles")

    assert selection.profile == gpu_profiles["h100-slow"]  # the same card beats a faster profile from another card
    assert labels(selection.ranking) == ["h100-slow", "h200-fast"]
    chosen, second = selection.ranking
    assert "same GPU (NVIDIA H100 80GB HBM3 (sm 9.0))" in chosen.notes
    assert any("measured peak of 30.0 GiB fits the 60.0 GiB free" in note for note in chosen.notes)
    assert any("made on NVIDIA H200 (sm 9.0), the same generation" in note for note in second.notes)
    assert any("memory budget of 40.0 GiB fits" in note for note in second.notes)


def test_each_rejection_says_why(gpu_profiles, tmp_path, tiny_folder):
    why = reasons(select_on_h100(tiny_folder, tmp_path / "gpu-profiles"))

    assert set(why) == {"h200-faster-but-big", "rtx4090", "cpu", "sdxl-h100", "tiny-sd-cpu"}
    assert "memory budget of 100.0 GiB is more than the 60.0 GiB free here" in why["h200-faster-but-big"]
    assert "made on NVIDIA GeForce RTX 4090 (sm 8.9), another generation than this NVIDIA H100" in why["rtx4090"]
    assert "made on cpu" in why["cpu"] and "runs on cuda" in why["cpu"]
    assert "tuned for StableDiffusionXLPipeline" in why["sdxl-h100"]
    assert "tuned on builtin:tiny-sd" in why["tiny-sd-cpu"]  # the shipped one: for the built-in only


def test_without_the_same_gpu_the_fastest_of_the_generation_that_fits_wins(gpu_profiles, tmp_path, tiny_folder):
    (tmp_path / "gpu-profiles" / "h100-slow.yaml").unlink()
    selection = select_on_h100(tiny_folder, tmp_path / "gpu-profiles", free_gib=200)

    assert labels(selection.ranking) == ["h200-faster-but-big", "h200-fast"]
    assert selection.profile == gpu_profiles["h200-faster-but-big"]


def test_on_the_same_gpu_the_measured_peak_must_fit_and_elsewhere_the_budget(gpu_profiles, tmp_path, tiny_folder):
    # 36 GiB free: the H100 profile's 30 GiB peak fits; the H200 profiles' 40 GiB budgets do not.
    selection = select_on_h100(tiny_folder, tmp_path / "gpu-profiles", free_gib=36)
    assert labels(selection.ranking) == ["h100-slow"]
    assert "memory budget of 40.0 GiB is more than the 36.0 GiB free" in reasons(selection)["h200-fast"]

    selection = select_on_h100(tiny_folder, tmp_path / "gpu-profiles", free_gib=20)
    assert selection.profile is None
    assert "measured peak of 30.0 GiB is more than the 20.0 GiB free" in reasons(selection)["h100-slow"]


def test_when_nothing_fits_it_says_so_and_applies_nothing(gpu_profiles, tmp_path, app_pipe):
    # This machine (a CPU, probed for real) against a folder of GPU profiles.
    folder = tmp_path / "gpu-profiles"
    (folder / "cpu.yaml").unlink()
    with pytest.raises(NoProfileFits, match=r"no profile fits, nothing applied.*rejected: h100-slow.*made on cuda"):
        apply_profile(app_pipe, "auto", search_path=folder)
    assert app_pipe.unet.dtype == torch.float32
    assert {type(p) for p in app_pipe.unet.attn_processors.values()} == {AttnProcessor2_0}
    assert issubclass(NoProfileFits, LookupError)

    explained = select_profile(app_pipe, search_path=folder).explain()
    assert "tune this pipeline here with autotune search" in explained


def test_auto_applies_the_profile_made_on_this_machine(app_profile, tmp_path, app_pipe, assert_state):
    here = app_profile.hardware
    other_cpu = here.model_copy(update={"cpu": "Another CPU", "cpu_cores": 64})
    elsewhere = app_profile.model_copy(update={
        "hardware": other_cpu, "settings": app_profile.settings.model_copy(update={"attention": "vanilla"}),
        "metrics": app_profile.metrics.model_copy(update={"images_per_s": Stat(median=1e6, cv=0, n=1)})})
    app_profile.save(tmp_path / "app" / "here.yaml")
    elsewhere.save(tmp_path / "app" / "elsewhere.yaml")

    selection = select_profile(app_pipe, search_path=tmp_path / "app")
    assert labels(selection.ranking) == ["here", "elsewhere"]  # the same CPU first, however fast the other one
    assert any(f"Another CPU (64 cores), {here.cpu_capability}, the same generation" in note
               for note in selection.ranking[1].notes)

    apply_profile(app_pipe, "auto", search_path=tmp_path / "app")
    settings = app_profile.settings_dict()
    assert_state(app_pipe, {name: value for name, value in settings.items()
                            if not knobs.get(name).call_time and knobs.get(name).active(settings)})


def test_load_pipeline_auto_chooses_before_loading(app_profile, tmp_path, tiny_folder):
    for_model(app_profile, str(tiny_folder)).model_copy(update={"settings": app_profile.settings.model_copy(
        update={"precision": "bf16"})}).save(tmp_path / "app" / "bf16.yaml")
    pipe = load_pipeline(str(tiny_folder), "auto", search_path=tmp_path / "app")
    assert pipe.unet.dtype == torch.bfloat16
    with pytest.raises(ProfileError, match='"auto" picks a profile for a model: give the model'):
        load_pipeline(profile="auto")


def test_a_builtin_profile_fits_only_that_builtin(tuned_profile, tmp_path):
    tuned_profile.save(tmp_path / "app" / "tiny.yaml")
    selection = select_profile("builtin:sd15-arch", search_path=tmp_path / "app")
    assert selection.profile is None
    assert "a built-in's profile fits only that built-in" in reasons(selection)["tiny"]


def hub_pipeline(model_id: str):
    """The tiny pipeline as `from_pretrained(model_id)` would label it (diffusers records the id in its config)."""
    from autotune import pipelines

    pipe = pipelines.tiny_sd_random()
    pipe.register_to_config(_name_or_path=model_id)
    return pipe


def test_a_profile_of_another_model_of_the_same_classes_ranks_after_the_same_model(tuned_profile):
    def for_model(model_id: str, images_per_s: float) -> Profile:
        return tuned_profile.model_copy(update={
            "model": tuned_profile.model.model_copy(update={"id": model_id}),
            "metrics": tuned_profile.metrics.model_copy(update={"images_per_s": Stat(median=images_per_s, cv=0, n=1)})})

    own, finetune = for_model("org/sd15", 1.0), for_model("org/sd15-finetune", 1000.0)
    here = dict(fingerprint=tuned_profile.hardware, free_memory_bytes=64 * GiB)

    selection = select_profile(hub_pipeline("org/sd15"), [finetune, own, tuned_profile], **here)
    assert [item.profile for item in selection.ranking] == [own, finetune]
    assert "tuned on org/sd15-finetune, another model of the same classes" in selection.ranking[1].notes
    # The built-in's profile says nothing about a real model, even of the same classes.
    assert "a built-in's profile fits only that built-in" in selection.rejected[0].rejections[0]

    selection = select_profile(hub_pipeline("org/other-sd15"), [own, finetune], **here)
    assert [item.profile for item in selection.ranking] == [finetune, own]  # neither is its own: images/s decides


# ---- lookup ----


@pytest.fixture
def three_folders(tuned_profile, tmp_path, monkeypatch):
    """The same name in a user folder, an app folder: which one a name finds."""
    user = tuned_profile.model_copy(update={"hardware": tuned_profile.hardware.model_copy(update={"cpu": "user's"})})
    app_ = tuned_profile.model_copy(update={"hardware": tuned_profile.hardware.model_copy(update={"cpu": "app's"})})
    user.save(tmp_path / "user" / "tiny-sd-cpu.yaml")
    app_.save(tmp_path / "app" / "tiny-sd-cpu.yaml")
    app_.save(tmp_path / "app" / "only-in-app.yaml")
    monkeypatch.setenv(ENV_VAR, f"{tmp_path / 'missing'}:{tmp_path / 'user'}")
    return tmp_path


def test_a_name_is_found_in_the_user_folders_then_the_app_folders_then_the_shipped_ones(three_folders, monkeypatch):
    app_folder = three_folders / "app"
    assert find_profile("tiny-sd-cpu", app_folder) == three_folders / "user" / "tiny-sd-cpu.yaml"
    assert resolve_profile("only-in-app", app_folder).hardware.cpu == "app's"
    monkeypatch.delenv(ENV_VAR)
    assert resolve_profile("tiny-sd-cpu", app_folder).hardware.cpu == "app's"
    assert find_profile("tiny-sd-cpu") == shipped_profiles_dir() / "tiny-sd-cpu.yaml"


def test_a_hidden_profile_is_listed_as_hidden_and_never_selected(three_folders):
    entries = {(e.origin, e.name): e for e in list_profiles(three_folders / "app")}
    assert entries[("app", "tiny-sd-cpu")].shadowed_by == three_folders / "user" / "tiny-sd-cpu.yaml"
    assert entries[("shipped", "tiny-sd-cpu")].shadowed_by == three_folders / "user" / "tiny-sd-cpu.yaml"
    assert entries[("user", "tiny-sd-cpu")].shadowed_by is None

    selection = select_profile("builtin:tiny-sd-random", search_path=three_folders / "app")
    hidden = [item for item in selection.rejected if "hidden by" in item.rejections[0]]
    assert len(hidden) == 2


@pytest.mark.parametrize("name", ["../user/tiny-sd-cpu", "..", "a/b", ".hidden"])
def test_a_name_never_leaves_the_library_folders(name, three_folders):
    with pytest.raises(ProfileError, match="not a plain name"):
        find_profile(name, three_folders / "app")


def test_an_unknown_name_lists_the_folders_and_the_known_names(three_folders):
    with pytest.raises(ProfileError, match=r"no profile named 'nope' in .*user \(user\).*app \(app\).*\(shipped\); "
                                           r"known: only-in-app, tiny-sd-cpu"):
        resolve_profile("nope", three_folders / "app")


def test_free_memory_on_a_gpu_comes_from_nvml(monkeypatch):
    class Memory:
        free = 5 * GiB

    fake = types.SimpleNamespace(nvmlInit=lambda: None, nvmlShutdown=lambda: None,
                                 nvmlDeviceGetHandleByIndex=lambda index: index,
                                 nvmlDeviceGetMemoryInfo=lambda handle: Memory)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert hardware.available_memory_bytes("cuda") == 5 * GiB


def test_free_memory_on_a_cpu_is_available_ram_plus_what_this_process_holds():
    import psutil

    free = hardware.available_memory_bytes("cpu")
    held = psutil.Process().memory_info().rss
    assert held < free <= psutil.virtual_memory().total + held


# ---- the shipped profiles ----


def test_the_shipped_profiles_are_in_the_tuner_s_own_form_and_consistent():
    # Nothing in a file proves who wrote it; what can fail is the tuner's signature: its exact YAML form (key order,
    # float spelling, layout), a study it names, and metrics that agree with each other and with the goal.
    shipped = sorted(shipped_profiles_dir().glob("*.yaml"))
    assert [path.stem for path in shipped] == ["tiny-sd-cpu"]
    for path in shipped:
        profile = load_profile(path)
        written = file_text(profile.to_data(), path)
        assert path.read_text(encoding="utf-8") == written, f"{path.name} is not in the form Profile.save writes"
        provenance, metrics = profile.provenance, profile.metrics
        assert provenance is not None and provenance.trials >= 1 and provenance.study and provenance.storage
        assert metrics is not None and metrics.images_per_s is not None and metrics.latency_s is not None
        assert metrics.images_per_s.n == metrics.latency_s.n >= 2
        batch = profile.settings.batch_size
        assert metrics.images_per_s.median == pytest.approx(batch / metrics.latency_s.median, rel=0.1)
        assert profile.goal.memory_budget_bytes is not None and profile.contradictions() == []
    tiny = load_profile(shipped_profiles_dir() / "tiny-sd-cpu.yaml")
    assert (tiny.hardware.device, tiny.model.id, tiny.workload.height) == ("cpu", "builtin:tiny-sd", 32)


def test_the_shipped_cpu_profile_is_chosen_for_the_tiny_pipeline_on_its_cpu(monkeypatch):
    # The machine it was measured on is faked (the hardware boundary): CI's processor model changes between runs.
    monkeypatch.delenv(ENV_VAR, raising=False)
    shipped = load_profile(Path(__file__).resolve().parent.parent / "profiles" / "tiny-sd-cpu.yaml")
    selection = select_profile("builtin:tiny-sd", fingerprint=shipped.hardware, free_memory_bytes=8 * 1024**3)
    assert selection.chosen is not None and selection.chosen.label.startswith("tiny-sd-cpu (shipped")


def test_the_example_app_ships_valid_profiles_of_its_own():
    folder = Path(__file__).resolve().parent.parent / "examples" / "tiny_app" / "profiles"
    shipped = sorted(folder.glob("*.yaml"))
    assert shipped
    for path in shipped:
        assert load_profile(path).contradictions() == []
    names = {entry.name for entry in list_profiles(folder) if entry.origin == "app"}
    assert names == {path.stem for path in shipped}


# ---- the command line ----


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(app, list(args), env=env or {})


def test_profiles_list_shows_each_profile_with_its_hardware_model_and_metrics(gpu_profiles, tmp_path):
    (tmp_path / "gpu-profiles" / "broken.yaml").write_text("schema: 1\nhardware: {device: tpu}\n")
    result = run("profiles", "list", "--search-path", str(tmp_path / "gpu-profiles"), env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 5}
    assert {"h100-slow", "rtx4090", "tiny-sd-cpu", "broken"} <= set(rows)
    assert "NVIDIA H100 80GB HBM3 (sm 9.0)" in rows["h100-slow"] and "3" in rows["h100-slow"].split("│")[7]
    assert "tiny-sd" in rows["h100-slow"] and "64x64, 2 steps, batch 1" in rows["h100-slow"]
    assert "throughput, budget 40.0 GiB" in rows["h100-slow"]
    assert "shipped" in rows["tiny-sd-cpu"]
    assert "hardware.device" in rows["broken"]


def test_profiles_show_prints_the_file_found(three_folders):
    result = run("profiles", "show", "only-in-app", "--search-path", str(three_folders / "app"))
    assert result.exit_code == 0, result.output
    assert "only-in-app.yaml" in result.output
    assert yaml.safe_load(result.output.split("\n", 1)[1])["hardware"]["cpu"] == "app's"


def test_profiles_validate_passes_good_files_and_names_the_problem_in_bad_ones(tuned_profile, tmp_path):
    good = tuned_profile.save(tmp_path / "good.yaml")
    bad_value = tmp_path / "bad-value.yaml"
    bad_value.write_text(good.read_text().replace("attention: ", "attention: warp-", 1))
    over_budget = tuned_profile.model_copy(update={"goal": Goal(memory_budget_bytes=1000)}).save(tmp_path / "o.yaml")
    not_yaml = tmp_path / "not-yaml.yaml"
    not_yaml.write_text("schema: [1\n")

    assert run("profiles", "validate", str(good)).exit_code == 0
    result = run("profiles", "validate", str(good), str(bad_value), str(over_budget), str(not_yaml),
                 str(tmp_path / "gone.yaml"), env={"COLUMNS": "300"})
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert f"ok {good}" in lines
    assert any(line.startswith(f"invalid {bad_value}: settings.attention: Input should be") for line in lines)
    assert any(f"invalid {over_budget}: metrics.peak_memory_bytes" in line and "over goal.memory_budget_bytes"
               in line for line in lines)
    assert any(f"invalid {not_yaml}: not valid YAML at line" in line for line in lines)
    assert any(f"invalid {tmp_path / 'gone.yaml'}: cannot read the profile" in line for line in lines)
    assert "4 of 5 profiles have problems" in result.output


def test_profiles_select_prints_the_ranking_and_each_rejection(gpu_profiles, tmp_path, tiny_folder):
    select = ["profiles", "select", "--model", str(tiny_folder), "--search-path", str(tmp_path / "gpu-profiles")]
    result = run(*select, env={"COLUMNS": "400"})
    # This machine is a CPU: the tuner's own profile fits, every GPU one is rejected with its reason.
    assert result.exit_code == 0, result.output
    assert "chosen" in result.output and "cpu (app:" in result.output
    assert result.output.count("rejected") == 6
    assert "made on cuda (NVIDIA H100 80GB HBM3 (sm 9.0)); this machine runs on cpu" in result.output

    (tmp_path / "gpu-profiles" / "cpu.yaml").unlink()
    result = run(*select, env={"COLUMNS": "400"})
    assert result.exit_code == 1
    assert "no profile fits" in result.output and "chosen" not in result.output


def test_the_shipped_profiles_are_found_in_a_checkout_that_is_not_installed(monkeypatch):
    # A GPU machine without a package index runs the checkout from PYTHONPATH: there `autotune.profiles` (mapped to
    # the checkout's profiles/ by the installed package's metadata) does not exist as a module.
    from autotune.profile import library

    def not_installed(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(library.resources, "files", not_installed)
    assert shipped_profiles_dir() == Path(library.__file__).resolve().parents[2] / "profiles"
    assert "tiny-sd-cpu" in {entry.name for entry in list_profiles()}
