"""Many workers on one study: worker processes against a real PostgreSQL server, a killed worker, a foreign machine.

The PostgreSQL tests need a server: `.ci/run` starts one on loopback and sets AUTOTUNE_TEST_POSTGRES_URL (locally:
`. .ci/postgres.sh && postgres_start`, then `postgres_stop`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from conftest import study_spec
from fake_hardware import SIMULATED_CPU
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from autotune import knobs
from autotune.hardware import probe
from autotune.profile import Workload, load_profile
from autotune.tuner.run import run_search
from autotune.tuner.study import StorageError, open_storage, surplus, wait_for_slot

POSTGRES_URL = os.environ.get("AUTOTUNE_TEST_POSTGRES_URL")
needs_postgres = pytest.mark.skipif(
    not POSTGRES_URL, reason="no PostgreSQL server: AUTOTUNE_TEST_POSTGRES_URL is not set (.ci/run starts one; "
                             "locally: . .ci/postgres.sh && postgres_start)")
TESTS = Path(__file__).resolve().parent
# Small and fast: two steps, batches of 1 and 2, one re-measure round of the best trial, a small CPU space.
FAST_FLAGS = ["--budget", "4GB", "--steps", "2", "--max-batch", "2", "--pin", "compile=none", "--pin",
              "precision=fp32", "--top-k", "1", "--rounds", "1"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "autotune.cli", *args]


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"  # the server outlives a test run: never reuse a study


def _trials(url: str, name: str, *states: TrialState) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials(states=states or None)


# ---- a fleet: three workers on one PostgreSQL study, one killed mid-trial, then exported by another process ----


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> SimpleNamespace:
    """`autotune search --workers 3` on PostgreSQL with one worker SIGKILLed mid-trial, then `autotune export`."""
    folder = tmp_path_factory.mktemp("fleet")
    name = _unique("fleet")
    search = subprocess.Popen(_cli("search", "--storage", POSTGRES_URL, "--study", name, "--workers", "3", "--trials",
                                   "4", "--out", str(folder / "search.yaml"), *FAST_FLAGS),
                              cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = _running_trial_of_a_worker(name, search.pid, timeout_s=240)
        os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
        stdout, stderr = search.communicate(timeout=600)
    finally:
        search.kill()
    export = subprocess.run(_cli("export", "--storage", POSTGRES_URL, "--study", name, "-o",
                                 str(folder / "exported.yaml"), "--top-k", "1", "--rounds", "1"),
                            cwd=folder, capture_output=True, text=True, timeout=600)
    return SimpleNamespace(name=name, folder=folder, victim=victim, export=export,
                           search=SimpleNamespace(returncode=search.returncode, stdout=stdout, stderr=stderr))


def _running_trial_of_a_worker(name: str, search_pid: int, timeout_s: float) -> optuna.trial.FrozenTrial:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            running = _trials(POSTGRES_URL, name, TrialState.RUNNING)
        except KeyError:  # the study is not created yet
            continue
        for trial in running:
            if "worker" in trial.user_attrs and not trial.user_attrs["worker"].endswith(f":{search_pid}"):
                return trial
    raise AssertionError("no worker started a trial")


@pytest.mark.slow
@needs_postgres
def test_three_workers_complete_exactly_the_requested_trials(fleet):
    assert fleet.search.returncode == 0, fleet.search.stderr[-3000:]
    complete = _trials(POSTGRES_URL, fleet.name, TrialState.COMPLETE)
    assert len(complete) == 4
    assert not _trials(POSTGRES_URL, fleet.name, TrialState.RUNNING)
    assert [t.number for t in _trials(POSTGRES_URL, fleet.name, TrialState.FAIL)] == [fleet.victim.number]
    assert len({t.user_attrs["worker"] for t in complete} | {fleet.victim.user_attrs["worker"]}) == 3
    lineages = [t.system_attrs.get("failed_trial", t.number) for t in complete]
    assert len(set(lineages)) == 4  # a retried trial counts once
    assert load_profile(fleet.folder / "search.yaml").provenance.trials == 4

    # Optuna's own command line reads the study.
    optuna_cli = Path(sys.executable).parent / "optuna"
    listed = subprocess.run([str(optuna_cli), "trials", "--storage", POSTGRES_URL, "--study-name", fleet.name, "-f",
                             "json"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert [row["state"] for row in json.loads(listed.stdout)].count("COMPLETE") == 4


@pytest.mark.slow
@needs_postgres
def test_a_worker_killed_mid_trial_has_its_trial_retried_by_another(fleet):
    assert "worker" in fleet.search.stdout and "exited with status -9" in fleet.search.stdout
    trials = _trials(POSTGRES_URL, fleet.name)
    killed = trials[fleet.victim.number]
    assert killed.state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == fleet.victim.number]
    # Queued once its heartbeat stops; the other workers may fill the study's trial count before one takes it (the
    # dead trial is found only after the grace period), and then it waits, the study complete without it, or a
    # worker takes it as the study fills and records it pruned (surplus to the trial count), as it does any trial.
    assert [t.state for t in retries] in ([TrialState.COMPLETE], [TrialState.WAITING], [TrialState.PRUNED])
    # The retry keeps every value the killed trial had sampled; a kill during its sampling leaves the rest to it.
    assert killed.params.items() <= (retries[0].params or retries[0].system_attrs.get("fixed_params", {})).items()
    if retries[0].state == TrialState.COMPLETE:
        assert retries[0].user_attrs["worker"] != fleet.victim.user_attrs["worker"]


@pytest.mark.slow
@needs_postgres
def test_export_writes_the_profile_of_a_study_that_workers_filled(fleet):
    assert fleet.export.returncode == 0, fleet.export.stderr[-3000:]
    profile = load_profile(fleet.folder / "exported.yaml")
    assert profile.model.id == "builtin:tiny-sd" and profile.provenance.study == fleet.name
    assert profile.provenance.trials == 4
    assert profile.hardware.same_model(probe().hardware)
    complete = _trials(POSTGRES_URL, fleet.name, TrialState.COMPLETE)
    # A trial that failed (a rule, an error) completes too, as infeasible, with its reason and no settings.
    unmeasured = [(t.number, t.user_attrs.get("failure"), t.user_attrs.get("reason")) for t in complete
                  if "settings" not in t.user_attrs]
    assert all(failure for _, failure, _ in unmeasured), unmeasured
    measured = [{**t.user_attrs["settings"], "batch_size": t.user_attrs["batch_size"]}
                for t in complete if "settings" in t.user_attrs]
    assert profile.settings_dict() in measured, (profile.settings_dict(), unmeasured)  # re-measured here


@pytest.mark.slow
@needs_postgres
def test_the_storage_password_is_nowhere_the_search_wrote(fleet):
    password = make_url(POSTGRES_URL).password
    assert password and len(password) >= 8
    files = [path for path in fleet.folder.rglob("*") if path.is_file()]
    written = {path.name: path.read_text(errors="replace") for path in files}
    assert {"search.yaml", "search.log", "exported.yaml", "exported.log"} <= set(written)
    written["search output"] = fleet.search.stdout + fleet.search.stderr
    written["export output"] = fleet.export.stdout + fleet.export.stderr
    study = optuna.load_study(study_name=fleet.name, storage=POSTGRES_URL)
    written["study attrs"] = json.dumps(study.user_attrs, default=str)
    written["trial attrs"] = json.dumps([[t.user_attrs, t.system_attrs] for t in study.trials], default=str)
    assert [where for where, text in written.items() if password in text] == []
    assert "127.0.0.1" in written["search.yaml"] and "***" in written["search.yaml"]  # the redacted URL is there


# ---- a machine that is not the study's hardware ----


def _study_for_this_machine(url: str, name: str, pruner: str | None = None) -> None:
    """A study as `autotune search` records it, for the tiny pipeline on this machine (no trial run)."""
    fingerprint = probe()
    study = optuna.create_study(study_name=name, storage=open_storage(url), direction="maximize")
    study_spec(fingerprint.hardware, workload=Workload(height=64, width=64, prompts=["a red cube"]),
               fixed={"steps": 2, "compile": "none"}, space={"attention": knobs.Categorical(("sdpa", "vanilla"))},
               memory_budget_bytes=4 * 10**9, n_trials=2, max_batch=2, trial_timeout_s=60, sampler="tpe",
               pruner=pruner).record(study)


@pytest.mark.parametrize(("recorded", "pruner"), [("none", optuna.pruners.NopPruner),
                                                  (None, optuna.pruners.PercentilePruner)])
def test_a_joining_worker_prunes_as_the_search_that_started_the_study_chose(tmp_path, recorded, pruner):
    from autotune.tuner.distributed import join

    url, name = f"sqlite:///{tmp_path / 'study.db'}", "pruner"
    _study_for_this_machine(url, name, recorded)
    study, spec, _ = join(url, name)
    assert spec.pruner == recorded and isinstance(study.pruner, pruner)


@pytest.mark.slow
def test_a_worker_on_other_hardware_is_refused_with_a_clear_message(tmp_path):
    url, name = f"sqlite:///{tmp_path / 'study.db'}", "refuse"
    _study_for_this_machine(url, name)

    result = subprocess.run([sys.executable, str(TESTS / "fake_hardware.py"), "worker", "--storage", url, "--study",
                             name], cwd=tmp_path, capture_output=True, text=True, timeout=300)

    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"this machine (CPU {SIMULATED_CPU}" in lines[0]
    assert f"is not the hardware of study 'refuse' (CPU {probe().hardware.cpu}" in lines[0]
    assert "timings would poison the study" in lines[0]
    assert not _trials(url, name)  # it never asked for a trial


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["worker", "--study", "x"], "--storage is required (or AUTOTUNE_STORAGE)"),
        (["worker", "--storage", "sqlite:///study.db", "--study", "nope"], "no study 'nope' in sqlite:///study.db"),
        (["export", "--storage", "typo.journal", "--study", "x"], "no study 'x' in typo.journal: no such file"),
        (["export", "--storage", "postgresql://tuner:hunter2@127.0.0.1:1/db", "--study", "x"],
         "cannot open the storage postgresql://tuner:***@127.0.0.1:1/db: "),
    ],
)
def test_bad_worker_and_export_flags_give_one_line_and_exit_2(tmp_path, args, message):
    result = subprocess.run(_cli(*args), cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in os.environ.items() if k != "AUTOTUNE_STORAGE"})
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "hunter2" not in result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []  # a mistyped storage leaves no empty database behind


# ---- when a trial may start: the rules, on a local study ----


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_two_workers_asking_for_the_last_trial_at_once_run_it_once(tmp_path):
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'race.db'}"))
    study.tell(study.ask(), 1.0)
    first, second = study.ask(), study.ask()  # both checked "1 of 2 done" before either asked

    assert not surplus(study, first, n_trials=2)
    assert surplus(study, second, n_trials=2)
    assert not surplus(study, second, n_trials=3)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_worker_waits_for_others_running_trials_only_where_a_heartbeat_tells_the_dead(tmp_path):
    said = []
    for url, waits in ((f"sqlite:///{tmp_path / 'rdb.db'}", True), (str(tmp_path / "journal.log"), False)):
        study = optuna.create_study(storage=open_storage(url))
        study.tell(study.ask(), 1.0)
        assert wait_for_slot(study, n_trials=2, deadline=None, emit=lambda *event: said.append(event))
        study.ask()  # another worker's trial, running
        if waits:  # it waits while the trial runs (until the deadline here)
            assert not wait_for_slot(study, 2, deadline=time.time() + 0.3, emit=lambda *e: said.append(e), poll_s=0.1)
            assert "waiting in case one dies" in str(said)
        else:
            assert not wait_for_slot(study, 2, deadline=None, emit=lambda *event: said.append(event))
    assert not wait_for_slot(study, 1, deadline=None, emit=lambda *event: None)  # the study has its trial


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_waiting_worker_takes_the_last_slot_back_from_a_trial_that_never_beat(tmp_path, monkeypatch):
    # A search that met a lost server between asking for its trial and recording its worker: no heartbeat fails it.
    monkeypatch.setattr("autotune.tuner.study.GRACE_PERIOD_S", 0.5)
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'rdb.db'}"))
    study.tell(study.ask(), 1.0)
    cut = study.ask()
    assert wait_for_slot(study, 2, deadline=time.time() + 30, emit=lambda *event: None, poll_s=0.1)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]  # queued again, to run next
    assert study.trials[2].params == cut.params and study.trials[2].user_attrs["retry_of"] == cut.number
    # One that recorded its worker is left to the heartbeat (and Optuna's retry callback), whatever its age.
    live = study.ask()
    live.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    time.sleep(0.6)
    assert not wait_for_slot(study, 2, deadline=time.time() + 0.5, emit=lambda *event: None, poll_s=0.1)
    assert study.trials[live.number].state == TrialState.RUNNING


def test_a_journal_file_holds_a_search(tmp_path):
    journal = tmp_path / "study.journal"
    run_search("builtin:tiny-sd-random", budget="4GB", n_trials=2, storage=str(journal), study_name="journal", out=None,
               steps=2, max_batch=2, top_k=1, rounds=1, pinned={"compile": "none", "precision": "fp32"})
    study = optuna.load_study(study_name="journal", storage=open_storage(str(journal)))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2


def test_a_storage_that_cannot_be_opened_never_shows_its_password():
    with pytest.raises(StorageError) as error:
        open_storage("postgresql://tuner:hunter2@127.0.0.1:1/autotune")
    assert "hunter2" not in str(error.value) and "postgresql://tuner:***@127.0.0.1:1/autotune" in str(error.value)
