"""The memory model: its arithmetic on the real pipeline's sizes, its online calibration, its predictions against
measured trials of real searches, and the configurations it refuses against what they need when run."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

import optuna
import pytest
import torch
import yaml

from autotune import knobs
from autotune.measure.memory_facts import ModelFacts, facts_of
from autotune.measure.memory_model import REFUSE_MARGIN, MemoryModel, Observation
from autotune.recommendation import recommend_settings
from autotune.report.tables import prediction_errors
from autotune.tuner.run import run_search


@pytest.fixture
def facts(tiny_pipe) -> ModelFacts:
    return facts_of(tiny_pipe)


def test_the_facts_are_read_from_the_real_modules(tiny_pipe, facts):
    unet = tiny_pipe.unet
    assert facts.denoiser == "unet"
    assert facts.components["unet"].elements == sum(p.numel() for p in unet.parameters())
    linear = sum(m.weight.numel() for m in unet.modules() if isinstance(m, torch.nn.Linear))
    assert facts.components["unet"].linear_elements == linear
    # tiny-sd's self-attention runs in its first level (full latent resolution, 32 channels over 8 heads: down and
    # up) and in its mid block at the bottom level (half the side, 64 channels).
    sites = sorted((s.heads, s.head_dim, s.pixels_per_token) for s in facts.attention)
    assert sites == [(8, 4, 1), (8, 4, 1), (8, 4, 1), (8, 8, 4)]
    assert facts.vae_channels == (16, 32, 32, 32) and facts.vae_scale_factor == 8 and facts.guidance_batch == 2
    assert ModelFacts.from_dict(facts.to_dict()) == facts


def test_precision_quantization_and_offload_change_the_weights_as_their_bytes_say(facts):
    model = MemoryModel(facts, 64, 64)
    fp32 = model.weight_bytes({"precision": "fp32"})
    assert model.weight_bytes({"precision": "bf16"}) == pytest.approx(fp32 / 2, rel=0.01)
    unet = facts.components["unet"]
    int8 = model.weight_bytes({"precision": "bf16", "quantization": "int8-weight-only"})
    assert int8 == pytest.approx(fp32 / 2 - unet.linear_elements, rel=0.01)  # 2 bytes -> 1 per Linear weight
    assert model.weight_bytes({"offload": "model"}) == max(s.elements * 4 + s.other_bytes
                                                            for s in facts.components.values())
    assert model.weight_bytes({"offload": "sequential"}) < model.weight_bytes({"offload": "group-block"}) < fp32


def test_full_attention_scores_grow_with_the_batch_and_the_square_of_the_tokens_and_slicing_bounds_them(facts):
    small, large = MemoryModel(facts, 128, 128), MemoryModel(facts, 256, 256)
    assert small.score_bytes({"attention": "sdpa"}, 4) == 0
    vanilla = small.score_bytes({"attention": "vanilla"}, 1)
    assert small.score_bytes({"attention": "vanilla"}, 4) == pytest.approx(4 * vanilla)
    assert large.score_bytes({"attention": "vanilla"}, 1) == pytest.approx(16 * vanilla)  # 4x the tokens
    # 16x16 latent = 256 tokens; 2 (guidance) x 8 heads; scores and probabilities in fp32.
    assert vanilla == 2 * 2 * 8 * 256**2 * 4
    sliced = small.score_bytes({"attention": "sliced", "attention_slice_size": 2}, 4)
    assert sliced == small.score_bytes({"attention": "sliced", "attention_slice_size": 2}, 1) == vanilla / 8


def test_calibration_recovers_a_scale_and_an_offset_it_was_not_given(facts):
    model = MemoryModel(facts, 128, 128)
    truth = {"other": 7.0, "eager": 600e6, "compiled": 900e6}

    def peak(settings, batch):
        parts = model.estimate(settings, batch)
        group = "eager" if settings.get("compile", "none") == "none" else "compiled"
        return int(parts.weights + parts.scores + truth["other"] * parts.other + truth[group])

    configurations = [{"attention": "sdpa"}, {"attention": "vanilla"}, {"compile": "default"}]
    observations = [Observation(s, tuple((b, peak(s, b)) for b in (1, 2, 4))) for s in configurations]
    fitted = model.calibrated(observations)
    assert fitted.calibration.other_scale == pytest.approx(7.0, rel=1e-3)
    probe = {"attention": "sliced", "compile": "default"}
    assert fitted.predict(probe, 8) == pytest.approx(peak(probe, 8), rel=1e-3)
    assert not model.calibrated(observations[:1]).calibration.ready  # one trial cannot refuse anything yet
    assert not model.refuses({"attention": "vanilla"}, 64, 1)


def test_the_recommendation_on_a_gpu_takes_bf16_sdpa_channels_last_and_savers_only_when_over_the_budget(
        tiny_pipe, facts, gpu_hardware):
    domains = knobs.domains(gpu_hardware, tiny_pipe)
    roomy = recommend_settings(gpu_hardware, domains, facts, 12 * 2**30, 64, 64)
    assert roomy.changed() == {"precision": "bf16", "channels_last": True}
    assert set(roomy.reasons) == {"precision", "channels_last"} and all(roomy.reasons.values())
    assert roomy.settings["compile"] == "none" and roomy.settings["attention"] == "sdpa"
    # A budget the weights alone exceed: offload, with the prediction in the reason.
    weights = MemoryModel(facts, 64, 64).weight_bytes(roomy.settings)
    tight = recommend_settings(gpu_hardware, domains, facts, int(weights / 2), 64, 64)
    assert tight.settings["offload"] in ("model", "sequential") and "over the budget" in tight.reasons["offload"]
    assert tight.predicted_peak_bytes <= weights / 2 or tight.notes


def test_the_recommendation_on_a_cpu_is_the_configuration_as_loaded(tiny_pipe, facts, fingerprint):
    hardware = fingerprint.hardware
    if hardware.device != "cpu":
        pytest.skip("this test is about the CPU rules")
    chosen = recommend_settings(hardware, knobs.domains(hardware, tiny_pipe), facts, 8 * 2**30, 64, 64)
    assert chosen.changed() == {} and chosen.settings["precision"] == "fp32" and chosen.settings["compile"] == "none"


# ---- against measurements: real searches on the built-in pipelines ----

# Small and fast: two steps, no compile, one re-measure round of the best trial.
FAST = dict(steps=2, top_k=1, rounds=1, trial_timeout_s=300)


def calibrated_errors(study: optuna.Study) -> list[float]:
    """The prediction error of each measured trial whose prediction was calibrated on earlier trials."""
    return prediction_errors([t for t in study.trials if t.user_attrs.get("prediction_trials", 0) >= 2])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["builtin:tiny-sd-random", "builtin:tiny-flux-random"])
def test_the_median_prediction_of_a_search_is_within_15_percent_of_the_measured_peak(tmp_path, model):
    storage = f"sqlite:///{tmp_path / 'memory.db'}"
    run_search(model, budget="8GB", n_trials=8, storage=storage, study_name="memory", max_batch=8,
               pinned={"compile": "none"}, **FAST)
    study = optuna.load_study(study_name="memory", storage=storage)
    errors = calibrated_errors(study)
    every = prediction_errors(study.trials)
    print(f"{model}: median {statistics.median(errors):.1%}, worst {max(errors):.1%} over {len(errors)} calibrated "
          f"trials; all {len(every)} trials: median {statistics.median(every):.1%}, worst {max(every):.1%}")
    assert len(errors) >= 4
    assert statistics.median(errors) <= 0.15


# At 256 px tiny-sd's full-resolution attention has 1024 tokens: vanilla attention's score matrices at batch 8
# (2 x 8 rows x 8 heads x 1024^2 x 4 bytes x 2) add about a GiB, which SDPA and sliced attention never hold.
# Everything but attention, VAE slicing and channels-last pinned, so both studies run the same configurations.
WIDE = dict(height=256, width=256, warm_start_recipes=False, **FAST,
            pinned={"compile": "none", "batch_size": 8, "precision": "fp32", "cpu_threads": None, "fuse_qkv": False})


def configuration(attention: str, channels_last: bool = False, vae_slicing: bool = False) -> dict:
    extra = {"attention_slice_size": "auto"} if attention == "sliced" else {}
    return {"attention": attention, **extra, "vae_slicing": vae_slicing, "channels_last": channels_last}


CONFIGURATIONS = [  # the fitting ones first: the model calibrates on them before it may refuse anything
    configuration("sdpa"), configuration("sliced", vae_slicing=True), configuration("vanilla"),
    configuration("sdpa-math", channels_last=True),
]


def search_configurations(storage: str, name: str, configurations: list[dict], budget: int) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for params in configurations:
        study.enqueue_trial(params)
    run_search("builtin:tiny-sd-random", budget=budget, n_trials=len(configurations), storage=storage, study_name=name,
               **WIDE)
    return optuna.load_study(study_name=name, storage=storage)


def attention_of(trial: optuna.trial.FrozenTrial) -> tuple:
    return tuple(trial.params.get(key) for key in ("attention", "channels_last", "vae_slicing"))


@pytest.mark.slow
def test_the_configurations_refused_under_a_tight_budget_are_ones_that_exceed_it(tmp_path):
    storage = f"sqlite:///{tmp_path / 'refuse.db'}"
    # What each configuration needs, measured with room to spare; then a budget between SDPA's peak and vanilla
    # attention's (the score matrices are about a GiB).
    roomy = search_configurations(storage, "roomy", CONFIGURATIONS, 64 * 2**30)
    peaks = {attention_of(t): t.user_attrs["peak_memory_bytes"] for t in roomy.trials}
    budget = int(1.2 * peaks[("sdpa", False, False)])
    tight = search_configurations(storage, "tight", CONFIGURATIONS, budget)
    refused = [t for t in tight.trials if t.user_attrs.get("failure") == "predicted-oom"]
    print(f"tiny-sd 256 px, batch 8, budget {budget}: measured {peaks}, refused {[attention_of(t) for t in refused]}")
    assert refused, "the memory model refused nothing"
    for trial in refused:
        assert "images_per_s" not in trial.user_attrs  # never run
        assert trial.user_attrs["predicted_peak_bytes"] > REFUSE_MARGIN * budget
        assert trial.constraints["memory"] > 0
        assert peaks[attention_of(trial)] > budget  # what it needs when it runs (same workload and batch)


# ---- autotune recommend, as a user runs it ----


def run_cli(*args: str) -> subprocess.CompletedProcess:
    program = ("import sys; sys.argv = ['autotune', *sys.argv[1:]]; from autotune.cli import main; main(); "
               "print('torch loaded' if 'torch' in sys.modules else '')")
    return subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})


def test_recommend_refuses_a_bad_budget_in_one_line_before_torch_loads():
    result = run_cli("recommend", "--budget", "6XB")
    assert result.returncode == 2
    assert result.stderr.strip() == ("autotune: error: size '6XB' is not understood; write it like 6GB, 6GiB, "
                                     "6000MB, 6.5G or 80%")
    bad_device = run_cli("recommend", "--device", "tpu")
    assert bad_device.returncode == 2 and "--device must be one of cpu, cuda" in bad_device.stderr


def test_recommend_prints_the_choice_with_the_predicted_peak_and_writes_it(tmp_path):
    out = tmp_path / "rec.yaml"
    result = run_cli("recommend", "--model", "builtin:tiny-sd-random", "--budget", "4GB", "--device", "cpu", "--out",
                     str(out))
    assert result.returncode == 0, result.stderr
    assert "predicted peak" in result.stdout and "at batch 1 of the budget" in result.stdout
    written = yaml.safe_load(out.read_text())
    assert written["measured"] is False and written["settings"]["compile"] == "none"
    assert written["memory_budget_bytes"] == 4 * 10**9 and written["predicted_peak_bytes"] > 0
