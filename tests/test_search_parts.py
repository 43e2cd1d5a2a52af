"""The search's parts on their own: the space as data, rules that keep a configuration from running, the batch
policy, honest numbers when the default configuration fails, and which modules import Optuna."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import types

import optuna
import pytest

from autotune import knobs
from autotune.compare.candidates import Candidate
from autotune.compare.records import feasible
from autotune.exceptions import InvalidInput
from autotune.hardware import probe
from autotune.measure.figures import Stat
from autotune.tuner.outcome import SearchOutcome, metrics_of
from autotune.tuner.space import (
    REFERENCE_RECIPE,
    build_space,
    calibrated_part,
    fewer_steps,
    narrow,
    restrict,
    sample,
    suggest,
    validate_pinned,
)
from autotune.tuner.spec import StudySpec
from autotune.tuner.study import make_pruner
from autotune.tuner.trials import run_one
from autotune.worker.batching import BatchPolicy, doublings
from autotune.worker.process import Worker, WorkerConfig
from autotune.worker.protocol import BatchResult


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              timeout=300).stdout.split())


def test_verify_and_the_remeasurement_do_not_import_optuna():
    loaded = _modules_after("import autotune.compare.verify, autotune.compare.remeasure, "
                            "autotune.compare.candidates, autotune.tuner.space")
    assert "autotune.compare.remeasure" in loaded and "optuna" not in loaded


def test_distributed_does_not_import_the_search_back():
    loaded = _modules_after("import autotune.tuner.distributed")
    assert "autotune.tuner.trials" in loaded and "autotune.tuner.run" not in loaded


def _study() -> optuna.Study:
    return optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))


def typed(space: dict) -> dict[str, knobs.Domain]:
    """A space written as data (a list: categorical; {low, high}: integer) as the search holds it."""
    return {name: knobs.domain_from_dict(data) for name, data in space.items()}


def test_each_domain_becomes_its_optuna_distribution():
    space = {
        "attention": knobs.Categorical(("sdpa", "sliced")),
        "attention_slice_size": knobs.Categorical(("auto", 2)),
        "steps": knobs.IntRange(2, 8),
        "cpu_threads": knobs.IntRange(1, 8, log=True),
        "guidance": knobs.FloatRange(0.5, 8.0, log=True),
    }
    study = _study()
    study.enqueue_trial({"attention": "sliced"})
    trial = study.ask()
    real = {k: v for k, v in space.items() if k != "guidance"}
    settings = suggest(trial, real, fixed={"compile": "none"})
    distributions = trial.distributions
    assert isinstance(distributions["attention"], optuna.distributions.CategoricalDistribution)
    assert isinstance(distributions["attention_slice_size"], optuna.distributions.CategoricalDistribution)
    assert distributions["steps"] == optuna.distributions.IntDistribution(2, 8)
    assert distributions["cpu_threads"] == optuna.distributions.IntDistribution(1, 8, log=True)
    assert settings["compile"] == "none" and 2 <= settings["steps"] <= 8
    float_trial = study.ask()
    value = sample(float_trial, "guidance", space["guidance"])
    assert float_trial.distributions["guidance"] == optuna.distributions.FloatDistribution(0.5, 8.0, log=True)
    assert 0.5 <= value <= 8.0


def test_an_option_is_asked_only_under_its_parent():
    study = _study()
    study.enqueue_trial({"attention": "sdpa"})
    trial = study.ask()
    space = typed({"attention": ["sdpa", "sliced"], "attention_slice_size": ["auto", 2]})
    settings = suggest(trial, space, fixed={})
    assert "attention_slice_size" not in trial.params
    assert settings["attention_slice_size"] == knobs.get("attention_slice_size").default


def test_the_space_keeps_what_has_a_choice_and_leaves_image_changing_knobs_to_a_floor():
    domains = knobs.domains(probe().hardware)
    plain = build_space(domains)
    scored = build_space(domains, steps=knobs.IntRange(5, 50))
    assert "precision" in plain and "scheduler" not in plain and "steps" not in plain
    assert "scheduler" in scored and scored["steps"] == knobs.IntRange(5, 50)
    assert all(len(domain) > 1 for domain in plain.values())


def test_a_lossy_value_of_an_exact_knob_is_searched_only_when_quality_is_measured():
    # SageAttention's int8 attention, as a GPU with sageattention installed would offer it on a FLUX transformer.
    domains = {"attention": knobs.Categorical(("sdpa", "flash", "sage"))}
    assert build_space(domains)["attention"].values == ("sdpa", "flash")
    scored = build_space(domains, steps=knobs.IntRange(5, 50))
    assert scored["attention"].values == ("sdpa", "flash", "sage")
    assert build_space({"attention": knobs.Categorical(("sdpa", "sage"))}) == {}


def test_only_narrows_a_knob_to_the_values_given_typed_and_a_range_becomes_enumerable():
    space = {"quantization": knobs.Categorical(("none", "int8-weight-only", "int8-dynamic")),
             "steps": knobs.IntRange(2, 28), "cache_threshold": knobs.FloatRange(0.02, 0.3, log=True)}
    narrowed = narrow(space, {"quantization": ["int8-dynamic", "none"], "steps": ["4", 8, 8],
                              "cache_threshold": [0.05]})
    assert narrowed["quantization"] == knobs.Categorical(("int8-dynamic", "none"))
    assert narrowed["steps"] == knobs.Categorical((4, 8))  # typed as a profile types it, each once
    assert narrow(space, {}) == space
    # A threshold given values is sampled among them, not calibrated: taken out of the space, it would never be set.
    assert calibrated_part(dict(narrowed), floor=True) == {}
    assert calibrated_part(dict(space), floor=True) == {"cache_threshold": space["cache_threshold"]}


@pytest.mark.parametrize(("only", "message"), [
    ({"compile": ["none"]}, "only: compile is not searched here (searched: quantization, steps)"),
    ({"quantization": ["fp8-weight-only"]}, "only: quantization='fp8-weight-only' is not among its values here "
                                            "(none, int8-dynamic)"),
    ({"steps": [40]}, "only: steps=40 is not among its values here (2 to 28)"),
    ({"steps": ["many"]}, "only: steps: "),
])
def test_only_refuses_a_knob_not_searched_here_or_a_value_outside_its_domain(only, message):
    space = {"quantization": knobs.Categorical(("none", "int8-dynamic")), "steps": knobs.IntRange(2, 28)}
    with pytest.raises(InvalidInput) as refused:
        narrow(space, only)
    assert str(refused.value).startswith(message)


def ran(steps: int, met: bool, recipe: str | None = None, **others):
    """A complete trial as `fewer_steps` reads it: params, its label, its constraints (<= 0: met)."""
    return types.SimpleNamespace(number=0, params={"scheduler": "default", **others, "steps": steps},
                                 user_attrs={"recipe": recipe} if recipe else {},
                                 constraints={"quality": -1.0 if met else 1.0, "memory": -1.0})


def test_under_a_floor_the_steps_are_bisected_from_the_reference_down_to_the_fewest_that_meet_it():
    space = {"scheduler": knobs.Categorical(("default", "unipc")), "steps": knobs.Categorical((28, 5, 10, 7))}
    reference = ran(28, True, REFERENCE_RECIPE)
    assert fewer_steps([reference], space) == {"scheduler": "default", "steps": 7}  # the median of 5, 7, 10
    assert fewer_steps([reference, ran(7, True)], space)["steps"] == 5
    assert fewer_steps([reference, ran(7, False)], space)["steps"] == 10
    assert fewer_steps([reference, ran(7, False), ran(10, True)], space) is None  # 10 is the fewest: over
    assert fewer_steps([reference, ran(7, True), ran(5, False)], space) is None
    # Trials that change another knob say nothing of the reference's steps; another sampler's 7 steps count.
    assert fewer_steps([reference, ran(7, True, scheduler="unipc")], space)["steps"] == 7
    assert fewer_steps([reference, ran(7, True, recipe="recommended")], space)["steps"] == 5
    ranged = {"steps": knobs.IntRange(2, 28)}
    assert fewer_steps([ran(28, True, REFERENCE_RECIPE)], ranged)["steps"] == 15  # the median of 2..27
    assert fewer_steps([ran(28, True, REFERENCE_RECIPE), ran(15, False)], ranged)["steps"] == 22  # of 16..27


def test_steps_are_not_bisected_without_a_reference_that_met_the_floor_or_steps_to_search():
    space = {"steps": knobs.IntRange(2, 28)}
    assert fewer_steps([], space) is None
    assert fewer_steps([ran(28, False, REFERENCE_RECIPE)], space) is None  # the floor is above the reference
    assert fewer_steps([ran(28, True, REFERENCE_RECIPE)], {"scheduler": knobs.Categorical(("default",))}) is None
    assert fewer_steps([ran(2, True, REFERENCE_RECIPE)], space) is None  # nothing fewer to try


def test_a_recipe_with_a_value_outside_the_space_is_dropped_never_run():
    space = typed({"precision": ["fp32", "bf16"], "attention": ["sdpa", "sliced"]})
    assert restrict({"precision": "fp16", "attention": "sdpa"}, space) is None
    assert restrict({"attention": "sliced"}, space) == {"precision": "fp32", "attention": "sliced"}


def test_the_recommendation_runs_first_then_compiled_at_its_own_precision_where_compile_is_searched():
    from autotune.tuner.space import warm_start

    space = typed({"precision": ["fp32", "fp16"], "channels_last": [False, True], "compile": ["none", "default"]})
    study = optuna.create_study(direction="maximize")
    warm_start(study, space, "cpu", None, {}, recommended={})
    queued = [t.system_attrs["fixed_params"] for t in study.trials]  # enqueue_trial's params, not yet run
    assert queued[:2] == [{"precision": "fp32", "channels_last": False, "compile": "none"},
                          {"precision": "fp32", "channels_last": True, "compile": "default"}]
    assert {"precision": "fp16", "channels_last": True, "compile": "default"} in queued[2:]  # the guides' recipe
    uncompiled = optuna.create_study(direction="maximize")
    warm_start(uncompiled, typed({"precision": ["fp32", "fp16"], "channels_last": [False, True]}), "cpu", None, {},
               recommended={})
    assert [t.system_attrs["fixed_params"] for t in uncompiled.trials][:2] == [
        {"precision": "fp32", "channels_last": False}, {"precision": "fp16", "channels_last": False}]


def test_on_cuda_the_compiled_recommendation_compiles_the_repeated_blocks_in_default_mode():
    from autotune.tuner.space import warm_start

    # The guides' whole-UNet max-autotune would spend a short search's minutes autotuning on its second trial.
    space = typed({"precision": ["fp16", "bf16"], "channels_last": [False, True], "compile": [
        "none", "default", "max-autotune-no-cudagraphs"], "compile_scope": ["denoiser", "regional"]})
    study = optuna.create_study(direction="maximize")
    warm_start(study, space, "cuda", None, {}, recommended={"precision": "bf16"})
    queued = [t.system_attrs["fixed_params"] for t in study.trials]
    assert queued[1] == {"precision": "bf16", "channels_last": True, "compile": "default", "compile_scope": "regional"}
    assert {"precision": "fp16", "channels_last": True, "compile": "max-autotune-no-cudagraphs",
            "compile_scope": "denoiser"} in queued[2:]  # the guides' own recipe, later
    whole_only = {**space, "compile_scope": knobs.Categorical(("denoiser",))}  # a model without repeated blocks
    study = optuna.create_study(direction="maximize")
    warm_start(study, whole_only, "cuda", None, {}, recommended={"precision": "bf16"})
    assert [t.system_attrs["fixed_params"] for t in study.trials][1]["compile"] == "default"


def test_on_a_busy_cpu_the_recommendation_uses_the_free_cores():
    from autotune.recommendation import free_cores, recommend_settings

    two_cores = probe().hardware.model_copy(update={"device": "cpu", "cpu_cores": 2})
    domains = knobs.domains(two_cores)
    busy = recommend_settings(two_cores, domains, None, None, 64, 64, others_cpu_share=0.5)
    assert busy.settings["cpu_threads"] == 1 and "1 of 2 cores are free" in busy.reasons["cpu_threads"]
    assert "cpu_threads" not in recommend_settings(two_cores, domains, None, None, 64, 64).changed()
    assert free_cores(2, 0.2) == 2 and free_cores(8, 0.5) == 4 and free_cores(2, 0.99) == 1


@pytest.fixture
def offload_excludes_compile(monkeypatch):
    """A rule as a knob declares it: sequential offload excludes compile's default mode (not max-autotune)."""
    rule = knobs.Excludes("compile", "offload hooks break the compiled graph", values={"sequential"},
                          other_values={"default"})
    monkeypatch.setattr(type(knobs.get("offload")), "rules", (rule,))


def test_pins_that_break_a_rule_are_refused_naming_both_knobs(offload_excludes_compile):
    with pytest.raises(InvalidInput, match="offload=sequential excludes compile=default"):
        validate_pinned({"offload": "sequential", "compile": "default"})
    assert validate_pinned({"offload": "sequential"}) == {"offload": "sequential"}


def test_a_suggestion_that_breaks_a_rule_is_recorded_infeasible_and_never_sent_to_a_worker(
        offload_excludes_compile, make_spec):
    spec = make_spec(model="tests:none", loadable=False,
                     space={"offload": knobs.Categorical(("none", "sequential")),
                            "compile": knobs.Categorical(("none", "default", "max-autotune"))})
    study = _study()
    study.enqueue_trial({"offload": "sequential", "compile": "default"})
    # A worker for a model that cannot load: sending it the trial would record an error, not the rule.
    worker = Worker(WorkerConfig(model="builtin:nope"))
    study.optimize(lambda trial: run_one(trial, study, worker, spec), n_trials=1)

    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and not feasible(trial)
    assert trial.user_attrs["failure"] == "rules" and "offload=sequential excludes compile" in trial.user_attrs[
        "reason"]
    assert not worker.alive


def test_a_knob_left_one_legal_value_takes_it_without_being_sampled():
    # fuse_qkv needs attention=sdpa: once attention is vanilla, only fuse_qkv=false is legal, so it is not asked.
    study = _study()
    space = typed({"attention": ["sdpa", "vanilla"], "fuse_qkv": [False, True]})
    study.enqueue_trial({"attention": "vanilla", "fuse_qkv": True})
    study.enqueue_trial({"attention": "sdpa", "fuse_qkv": True})
    first, second = study.ask(), study.ask()
    assert suggest(first, space, {})["fuse_qkv"] is False and "fuse_qkv" not in first.params
    assert suggest(second, space, {})["fuse_qkv"] is True


def _batch(size: int, rate: float, peak: int) -> BatchResult:
    return BatchResult(batch_size=size, images_per_s=Stat(median=rate, cv=0, n=2), peak_memory_bytes=peak)


def test_the_batch_policy_doubles_while_it_pays_and_the_memory_guess_fits():
    policy = BatchPolicy(doublings(8), memory_budget_bytes=1000)
    assert policy.sizes == (1, 2, 4, 8)
    assert policy.worth_next([_batch(1, 1.0, 100)])
    assert policy.worth_next([_batch(1, 1.0, 100), _batch(2, 1.5, 200)])
    assert not policy.worth_next([_batch(1, 1.0, 100), _batch(2, 1.02, 200)])  # gained less than min_gain
    assert not policy.worth_next([_batch(1, 1.0, 300), _batch(2, 1.5, 600)])  # 4 would need ~1200 > 1000
    assert not policy.worth_next([_batch(1, 1.0, 1100)])  # over the budget already


def test_the_studys_pruner_stops_a_trial_in_the_bottom_quarter_at_its_batch_and_the_trial_still_completes():
    from autotune.tuner.trials import pruned

    study = optuna.create_study(direction="maximize", pruner=make_pruner())
    for rate in (8.0, 9.0, 10.0, 11.0, 12.0):  # the study's trials so far, each reported at batch 1
        trial = study.ask()
        assert not pruned(trial, _batch(1, rate, 100))  # too few trials yet to judge (n_startup_trials)
        study.tell(trial, rate)
    slow, fast = study.ask(), study.ask()
    assert pruned(slow, _batch(1, 7.0, 100)) and slow.user_attrs["pruned_at_batch"] == 1
    assert not pruned(fast, _batch(1, 9.5, 100)) and "pruned_at_batch" not in fast.user_attrs
    study.tell(slow, 7.0)  # what the trial measured: a complete trial, not a PRUNED one
    assert study.trials[slow.number].state == optuna.trial.TrialState.COMPLETE
    assert study.trials[slow.number].intermediate_values == {1: 7.0}
    # Past the last size, or with nothing timed, nothing is asked.
    assert not BatchPolicy(doublings(2)).worth_next([_batch(1, 1.0, 100), _batch(2, 3.0, 200)])
    assert not pruned(study.ask(), BatchResult(batch_size=1, oom="out of memory"))


def test_with_pruner_none_every_trial_grows_its_batch_as_a_plain_optuna_search_would():
    from autotune.tuner.trials import pruned

    assert isinstance(make_pruner(None), optuna.pruners.PercentilePruner)  # a study recorded before the choice
    study = optuna.create_study(direction="maximize", pruner=make_pruner("none"))
    for rate in (8.0, 9.0, 10.0, 11.0, 12.0):
        trial = study.ask()
        pruned(trial, _batch(1, rate, 100))
        study.tell(trial, rate)
    assert not pruned(study.ask(), _batch(1, 1.0, 100))  # the slowest by far, and it goes on


def test_there_is_no_speedup_over_a_default_configuration_that_failed():
    best = Candidate("trial 0", {"batch_size": 1}, latency_s=[0.5, 0.5], peak_memory_bytes=10)
    for failed in (Candidate("default", {}, failure="oom: out of memory"),
                   Candidate("default", {}, latency_s=[1.0], failure="image: all-black images")):
        outcome = SearchOutcome(profile=None, baseline=failed, best=best, candidates=[best], study_name="s",
                                storage="sqlite://", trials=1)
        assert outcome.speedup is None
    timed = Candidate("default", {"batch_size": 1}, latency_s=[1.0, 1.0], peak_memory_bytes=10)
    assert SearchOutcome(None, timed, best, [best], "s", "sqlite://", 1).speedup == pytest.approx(2.0)


def test_a_peak_memory_that_was_never_measured_is_recorded_as_none():
    assert metrics_of(Candidate("trial 0", {"batch_size": 1}, latency_s=[1.0])).peak_memory_bytes is None
    assert metrics_of(Candidate("trial 0", {"batch_size": 1}, latency_s=[1.0],
                                peak_memory_bytes=2048)).peak_memory_bytes == 2048


def test_a_pinned_batch_is_the_only_size_a_trial_times(make_spec):
    # --pin batch_size=4 must ship batch 4: the doubling policy would keep batch 1 wherever 2 did not pay.
    from autotune.tuner.trials import batch_policy

    spec = make_spec(fixed={"steps": 2, "batch_size": 4}, space={"precision": knobs.Categorical(("fp32", "bf16"))},
                     max_batch=16)
    assert batch_policy(spec, {**knobs.defaults(), "steps": 2, "batch_size": 4}).sizes == (4,)
    unpinned = dataclasses.replace(spec, fixed={"steps": 2})
    assert batch_policy(unpinned, {**knobs.defaults(), "steps": 2}).sizes == (1, 2, 4, 8, 16)


def test_only_trials_within_half_the_best_speed_are_re_measured_unless_fallbacks_are_needed():
    from autotune.compare.candidates import top_candidates

    def ran(value: float, precision: str) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(value=value, user_attrs={
            "settings": {"precision": precision}, "batch_size": 8, "peak_memory_bytes": 100})

    trials = [ran(10.0, "fp32"), ran(6.0, "bf16"), ran(2.0, "fp16")]
    assert [c.settings["precision"] for c in top_candidates(trials, 3, "throughput", fallbacks=False)] == [
        "fp32", "bf16"]
    assert len(top_candidates(trials, 3, "throughput", fallbacks=True)) == 3
    # Latency: seconds per image, lower is better; 0.25 is more than twice the best's 0.1.
    latency = [ran(0.1, "fp32"), ran(0.15, "bf16"), ran(0.25, "fp16")]
    assert [c.settings["precision"] for c in top_candidates(latency, 3, "latency", fallbacks=False)] == [
        "fp32", "bf16"]


def test_the_budget_is_part_of_a_studys_identity(fingerprint, make_spec, tmp_path):
    from autotune.exceptions import AutotuneError
    from autotune.profile import Workload
    from autotune.tuner.study import default_study_name, open_study

    def spec(budget: int, hub: dict | None = None) -> StudySpec:
        return make_spec(memory_budget_bytes=budget, hub=hub)

    storage = f"sqlite:///{tmp_path / 's.db'}"
    open_study("s", storage, spec(4 * 2**30))
    open_study("s", storage, spec(4 * 2**30))  # the same options resume it
    with pytest.raises(AutotuneError, match=r"^study 's' in .* was made for another memory budget; give a new "):
        open_study("s", storage, spec(8 * 2**30))
    # The files a hub model loads are its identity too; whether they came from the cache alone is not.
    open_study("h", storage, spec(4 * 2**30, {"variant": "fp16", "local_files_only": True}))
    open_study("h", storage, spec(4 * 2**30, {"variant": "fp16"}))
    with pytest.raises(AutotuneError, match="was made for another revision, variant or config of the model"):
        open_study("h", storage, spec(4 * 2**30, {"variant": "bf16"}))
    # Without --study, another budget names another study: the same command with --budget 8GB starts afresh.
    workload = Workload(height=64, width=64, prompts=["a cube"])
    names = {default_study_name("builtin:tiny-sd-random", fingerprint, workload, "throughput", None, budget)
             for budget in (4 * 2**30, 8 * 2**30)}
    assert len(names) == 2 and all(name.endswith("gib") for name in names)


# ---- the two storage boundaries ----


def test_a_study_recorded_by_the_last_release_reads_typed_and_resumes(fingerprint, make_spec, tmp_path):
    from autotune.measure.memory_facts import ModelFacts
    from autotune.options import FloorSpec
    from autotune.tuner.study import open_study

    spec = make_spec(space={"attention": knobs.Categorical(("sdpa", "vanilla")), "steps": knobs.IntRange(5, 50)},
                     quality_floor=FloorSpec("psnr", 30.0), reference_steps=50,
                     calibrated={"cache_threshold": knobs.FloatRange(0.02, 0.3, log=True)},
                     memory_facts=ModelFacts(components={}, denoiser="unet"))
    storage = f"sqlite:///{tmp_path / 'old.db'}"
    old = optuna.create_study(study_name="old", storage=storage)
    # Older attrs: the space's older forms (a list, {low, high}), a workload without a field added since, the floor
    # as text, the memory facts in an attr of their own (which the spec now holds).
    workload = {key: value for key, value in spec.workload.model_dump(mode="json").items() if key != "other_sizes"}
    attrs = {**spec.as_recorded(), "space": {"attention": ["sdpa", "vanilla"], "steps": {"low": 5, "high": 50}},
             "workload": workload}
    for key, value in attrs.items():
        old.set_user_attr(key, value)

    read = StudySpec.read(optuna.load_study(study_name="old", storage=storage))
    assert read.space == spec.space and read.workload == spec.workload and read.quality_floor == spec.quality_floor
    assert read.calibrated == spec.calibrated and read.memory_facts == spec.memory_facts
    assert read.hardware == fingerprint.hardware
    open_study("old", storage, spec)  # the same search resumes it


def test_a_trial_record_refuses_a_field_it_does_not_have_and_reads_back_what_was_written():
    from autotune.compare.records import TrialRecord

    study = optuna.create_study()
    trial = study.ask({"precision": optuna.distributions.CategoricalDistribution(["fp32", "bf16"])})
    TrialRecord.write(trial, settings={"precision": "bf16"}, batch_size=4, images_per_s=2.5, peak_memory_bytes=10)
    with pytest.raises(TypeError, match="peak_memory"):
        TrialRecord.write(trial, peak_memory=10)
    with pytest.raises(TypeError, match="number"):
        TrialRecord.write(trial, number=3)
    study.tell(trial, 2.5)
    record = TrialRecord.of(study.trials[0])
    assert record.measured and record.ran_with == {"precision": "bf16", "batch_size": 4}
    assert record.failure_line is None and record.quality == {} and record.number == 0
