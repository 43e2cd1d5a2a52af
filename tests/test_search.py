"""The tuner end to end on the tiny pipeline: faults in trials, NaN images, resuming, budgets that nothing fits."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import TINY_SEARCH
from faulty_pipelines import faulty_tiny_sd, nan_tiny_sd

from autotune import knobs, pipelines
from autotune.exceptions import NothingFits
from autotune.profile import load_profile
from autotune.tuner.run import run_search

pytestmark = pytest.mark.slow

# conftest's tiny search, with batches of 1 and 2.
FAST = dict(max_batch=2)


def params(**changes):
    """Full trial params over the CPU search space (compile pinned), defaults unless changed."""
    base = {"cpu_threads": None, "precision": "fp32", "attention": "sdpa", "vae_slicing": False,
            "channels_last": False}
    return base | changes


def enqueue(storage: str, name: str, *trials: dict) -> None:
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for trial in trials:
        study.enqueue_trial(trial)


class by_params:  # noqa: N801 (reads as the lookup it is)
    """The study's trials, looked up by the params a test enqueued (knobs it left out were sampled)."""

    def __init__(self, storage: str, name: str):
        self.trials = optuna.load_study(study_name=name, storage=storage).trials

    def __getitem__(self, params: dict) -> optuna.trial.FrozenTrial:
        (trial,) = [t for t in self.trials if params.items() <= t.params.items()]
        return trial


def test_faults_in_trials_are_recorded_and_the_search_completes(tmp_path, tiny_search):
    storage, name = f"sqlite:///{tmp_path / 'faults.db'}", "faults"
    oom, killed, hung, fine = (params(attention="vanilla"), params(attention="sliced", attention_slice_size="auto"),
                               params(attention="sdpa-math"), params(attention="sdpa"))
    enqueue(storage, name, oom, killed, hung, fine)

    # The hung trial costs its whole timeout: the shortest in which a tiny trial (and a fresh worker) surely ends.
    outcome = tiny_search(faulty_tiny_sd, budget="8GB", n_trials=4, storage=storage, study_name=name,
                          out=tmp_path / "faults.yaml", trial_timeout_s=25, **FAST)

    trials = by_params(storage, name)
    assert [trials[p].user_attrs.get("failure") for p in (oom, killed, hung, fine)] == [
        "oom", "crash", "timeout", None]
    assert "SIGKILL" in trials[killed].user_attrs["reason"]
    ours = [trials[p] for p in (oom, killed, hung, fine)]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in ours)
    assert [t.constraints["failure"] > 0 for t in ours] == [True, True, True, False]
    assert trials[fine].value > 0
    assert outcome.profile.settings.attention == "sdpa"
    assert load_profile(tmp_path / "faults.yaml").settings.attention == "sdpa"


def test_the_time_limit_stops_a_running_trial_and_queues_it_again_for_the_resume(tmp_path, tiny_search):
    storage, name = f"sqlite:///{tmp_path / 'limit.db'}", "limit"
    fine, hung = params(attention="sdpa"), params(attention="sdpa-math")
    enqueue(storage, name, fine, hung)
    started = time.monotonic()
    outcome = tiny_search(faulty_tiny_sd, budget="8GB", n_trials=4, storage=storage, study_name=name, timeout_s=25,
                          trial_timeout_s=600, warm_start_recipes=False, **FAST)
    assert time.monotonic() - started < 120, "the hung trial ran past the time limit"
    trials = optuna.load_study(study_name=name, storage=storage).trials
    states = [(t.state, t.params.get("attention")) for t in trials]
    done, waiting = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.WAITING
    assert states[0] == (done, "sdpa") and states[1] == (optuna.trial.TrialState.FAIL, "sdpa-math")
    assert (waiting, None) in states  # queued with the params of the stopped trial: the resume runs it first
    queued = next(t for t in trials if t.state == waiting)
    assert queued.system_attrs["fixed_params"] == trials[1].params
    assert outcome.profile.settings.attention == "sdpa"
    # The stopped trial's time is reported apart, not as overhead.
    assert outcome.time_split.stopped_s == pytest.approx(trials[1].user_attrs["seconds"]["trial"])
    assert outcome.time_split.stopped_s > 10 and "a trial the time limit stopped" in outcome.time_split.describe()


def test_the_time_limit_holds_for_the_whole_search_and_the_profile_is_written(tmp_path, tiny_search):
    # Rounds without end: the re-measurement can only stop at its share of the limit, with what it has.
    out, events = tmp_path / "limited.yaml", []
    started = time.monotonic()
    outcome = run_search("builtin:tiny-sd-random", dataclasses.replace(
        TINY_SEARCH, budget="8GB", n_trials=2, timeout_s=30, out=out, warm_start_recipes=False, rounds=10_000, **FAST),
        on_event=lambda kind, data: events.append(data.get("message", "")))
    assert time.monotonic() - started < 30
    assert any(message.startswith("warning: the time limit stopped the re-measurement") for message in events)
    profile = load_profile(out)
    assert profile.metrics.images_per_s is not None and profile.metrics.measured_in == "re-measurement"
    assert profile.metrics.others_cpu_share is not None
    assert outcome.best.measured


def test_nan_images_make_a_trial_infeasible_and_it_is_never_chosen(tmp_path, tiny_search):
    storage, name = f"sqlite:///{tmp_path / 'nan.db'}", "nan"
    poisoned, clean = params(channels_last=True), params()
    enqueue(storage, name, poisoned, clean)

    outcome = tiny_search(nan_tiny_sd, budget="8GB", n_trials=2, storage=storage, study_name=name, out=None, top_k=2,
                          **FAST)

    trial = by_params(storage, name)[poisoned]
    assert trial.user_attrs["failure"] == "image" and "NaN" in trial.user_attrs["reason"]
    assert trial.constraints["image"] > 0
    assert outcome.profile.settings.channels_last is False
    assert all(not c.settings["channels_last"] for c in outcome.candidates)


def test_a_budget_nothing_fits_says_so_and_writes_no_profile(tmp_path, tiny_search):
    out = tmp_path / "tiny.yaml"
    with pytest.raises(NothingFits, match="nothing fits in 1.0 MiB.*needed"):
        tiny_search(budget="1MiB", n_trials=2, out=out, **FAST)
    assert not out.exists()


def test_trials_are_held_to_the_budget_and_record_it(tmp_path, tiny_search):
    outcome = tiny_search(n_trials=2, **FAST)
    profile = outcome.profile
    assert profile.goal.memory_budget_bytes == 4 * 10**9
    assert 0 < profile.metrics.peak_memory_bytes <= 4 * 10**9
    assert profile.metrics.images_per_s.n >= 2 and profile.metrics.images_per_s.median > 0
    assert profile.provenance.sampler == "TPESampler" and profile.provenance.seed == 0
    assert profile.provenance.trials == 2
    assert outcome.baseline.settings["batch_size"] == 1 and outcome.baseline.images_per_s.median > 0
    assert (tmp_path / "tiny.db").exists()  # the study sits next to the profile


def test_the_image_seed_is_the_samplers_unless_given(tiny_search):
    assert tiny_search(seed=3, **FAST).profile.workload.seed == 3
    profile = tiny_search(seed=3, image_seed=0, study_name="images", **FAST).profile
    assert profile.workload.seed == 0 and profile.provenance.seed == 3


def test_a_search_narrowed_with_only_samples_and_seeds_nothing_else(tiny_search):
    import optuna

    from autotune.compare.records import TrialRecord

    outcome = tiny_search(n_trials=3, only={"precision": ["bf16"], "channels_last": [True, False]}, **FAST)
    study = optuna.load_study(study_name=outcome.study_name, storage=outcome.storage_url)
    ran = [TrialRecord.of(trial).settings for trial in study.trials if trial.state.is_finished()]
    assert len(ran) == 3 and all(settings["precision"] == "bf16" for settings in ran), ran
    assert outcome.profile.settings.precision == "bf16"


def test_a_search_records_where_each_trial_spent_its_time_and_splits_its_own(tiny_search):
    import optuna

    outcome = tiny_search(n_trials=2, **FAST)
    study = optuna.load_study(study_name=outcome.study_name, storage=outcome.storage_url)
    ran = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(ran) == 2
    for trial in ran:
        seconds = trial.user_attrs["seconds"]
        assert set(seconds) == {"model", "knobs", "warmup", "timed", "scoring", "worker", "trial"}, seconds
        assert 0 < seconds["timed"] and 0 < seconds["warmup"]
        inside = seconds["model"] + seconds["knobs"] + seconds["warmup"] + seconds["timed"] + seconds["scoring"]
        assert inside <= seconds["worker"] <= seconds["trial"]
        # The timed calls are the batches' latencies: at least one call per batch at its measured rate.
        one_call_each = sum(b["batch_size"] / b["images_per_s"]["median"] for b in trial.user_attrs["batches"])
        assert seconds["timed"] >= one_call_each / 2
    split = outcome.time_split
    assert split.trials == 2 and split.compile_s == 0  # compile pinned off
    trial_timed = sum(t.user_attrs["seconds"]["timed"] for t in ran)
    remeasured = sum(sum(c.latency_s) for c in {id(c): c for c in [outcome.baseline, *outcome.candidates]}.values())
    assert split.timed_s == pytest.approx(trial_timed + remeasured)
    assert split.timed_s + split.other_s == pytest.approx(split.search_s)
    assert split.search_s > sum(t.user_attrs["seconds"]["trial"] for t in ran)
    assert split.describe().startswith(f"time: {split.search_s:.0f} s in all (2 trials): timed calls ")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "autotune.cli", *args]


def test_a_killed_search_resumes_from_its_completed_trials(tmp_path):
    command = _cli("search", "--budget", "4GB", "--trials", "4", "--steps", "2", "--max-batch", "2",
                   "--pin", "compile=none", "--out", str(tmp_path / "resume.yaml"), "--study", "resume")
    storage = f"sqlite:///{tmp_path / 'resume.db'}"
    first = subprocess.Popen(command, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        completed: list = []
        while time.monotonic() < deadline and len(completed) < 2:
            time.sleep(1)
            try:
                study = optuna.load_study(study_name="resume", storage=storage)
                completed = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
            except (KeyError, Exception):
                continue
        assert len(completed) >= 2, "the first search never completed two trials"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the search and its worker, mid-way
        first.wait()
    before = {t.number: (t.params, t.value, t.datetime_complete) for t in completed}

    second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]

    study = optuna.load_study(study_name="resume", storage=storage)
    after = {t.number: (t.params, t.value, t.datetime_complete)
             for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    assert len(after) == 4
    assert all(after[number] == kept for number, kept in before.items())
    assert load_profile(tmp_path / "resume.yaml").provenance.trials == 4


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--budget", "6XB"], "size '6XB' is not understood"),
        (["--objective", "fastest"], "--objective must be one of"),
        (["--trials", "0"], "--trials must be at least 1"),
        (["--pin", "warp=9"], "unknown knob 'warp'"),
        (["--pin", "precision=fp8"], "pinned settings: precision"),
        (["--model", "builtin:nope"], "unknown built-in model"),
    ],
)
def test_bad_search_flags_give_one_line_and_exit_2(tmp_path, flags, message):
    result = subprocess.run(_cli("search", "--trials", "1", *flags) if "--trials" not in flags
                            else _cli("search", *flags), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_the_profile_written_by_a_search_applies_to_a_fresh_pipeline(tmp_path, tiny_search):
    from autotune import load_pipeline

    tiny_search(out=tmp_path / "p.yaml", **FAST)
    profile = load_profile(tmp_path / "p.yaml")
    pipe = load_pipeline(None, profile)
    images = pipe("a red cube", output_type="np", **profile.call_kwargs(batch=True)).images
    assert images.shape == (profile.settings.batch_size, 64, 64, 3)
    for knob in knobs.in_order():
        if not knob.call_time and knob.active(profile.settings_dict()):
            wanted = knob.reads_as(getattr(profile.settings, knob.name), pipe)
            if wanted == knobs.AS_LOADED:
                wanted = knob.read(pipelines.load(profile.model.id))
            assert knob.read(pipe) == wanted, knob.name
    assert yaml.safe_load(Path(tmp_path / "p.yaml").read_text())["settings"]["compile"] == "none"
