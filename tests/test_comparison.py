"""Comparisons with their uncertainty: a ratio of medians comes with its bootstrap interval, and the verdict follows
the interval; the final re-measurement runs more rounds (within a bound) while the interval cannot tell."""

from __future__ import annotations

import numpy as np
import pytest

from autotune.compare.candidates import Candidate
from autotune.measure.comparison import Ratio, ratio_of_medians
from autotune.tuner.outcome import SearchOutcome, metrics_of


def test_a_clear_speed_up_is_claimed_with_an_interval_above_one():
    rng = np.random.default_rng(1)
    ratio = ratio_of_medians(2.0 + 0.05 * rng.standard_normal(8), 1.0 + 0.03 * rng.standard_normal(8))
    assert ratio.verdict == "faster" and 1 < ratio.low < ratio.median < ratio.high < 2.3
    assert ratio.show() == f"{ratio.median:.2f}x ({ratio.low:.2f}-{ratio.high:.2f}x)"


def test_runs_spread_by_a_busy_machine_cannot_tell_and_say_so():
    # Both sides' runs as a storm leaves them: half near their quiet rate, half slowed 15-20x.
    ratio = ratio_of_medians([1.4, 0.1, 1.5, 0.07], [1.0, 0.05, 1.1, 0.06])
    assert ratio.verdict == "cannot tell" and ratio.low < 1 < ratio.high
    assert ratio.show().startswith("cannot tell (") and "x" not in ratio.show().split("(")[0]


def test_a_ratio_measured_while_other_work_took_the_machine_claims_nothing():
    clear = ratio_of_medians([2.0, 2.1, 1.9, 2.0], [1.0, 1.0, 1.1, 0.9])
    quiet, busy = (Ratio(clear.median, clear.low, clear.high, others_cpu_share=share) for share in (0.05, 0.6))
    assert quiet.verdict == "faster" and not quiet.busy
    assert busy.verdict == "cannot tell" and busy.busy  # its interval covers the runs' noise, not the load
    assert busy.show().startswith("cannot tell, machine busy (") and busy.record()["others_cpu_share"] == 0.6
    assert "others_cpu_share" not in clear.record()  # not measured: not recorded as zero


def test_a_candidate_ratio_carries_the_busier_sides_share():
    fast = Candidate("fast", {}, latency_s=[0.5, 0.5, 0.52], others_cpu_share=0.4)
    slow = Candidate("slow", {}, latency_s=[1.0, 1.0, 1.02], others_cpu_share=0.1)
    assert fast.vs(slow).others_cpu_share == 0.4 and fast.vs(slow).verdict == "cannot tell"


def test_a_slower_configuration_is_called_slower():
    assert ratio_of_medians([0.5, 0.52, 0.49, 0.5], [1.0, 1.02, 0.98, 1.0]).verdict == "slower"


def test_no_ratio_without_runs_on_both_sides_or_with_a_zero_default():
    assert ratio_of_medians([], [1.0]) is None and ratio_of_medians([1.0], []) is None
    assert ratio_of_medians([1.0], [0.0, 0.0]) is None


def test_the_interval_is_reproducible():
    samples = ([1.2, 1.5, 1.1, 1.9, 1.4], [1.0, 0.7, 1.3, 1.1, 0.9])
    assert ratio_of_medians(*samples) == ratio_of_medians(*samples)


def test_the_outcome_and_the_profile_carry_the_interval_not_only_the_median():
    baseline = Candidate("default", {}, latency_s=[1.0, 1.05, 0.95, 1.0])
    best = Candidate("trial 3", {"batch_size": 2}, latency_s=[1.0, 1.02, 0.98, 1.0])  # 2 images a call
    outcome = SearchOutcome(None, baseline, best, [best], "s", "sqlite://", 4)
    assert outcome.speedup == pytest.approx(2.0) and outcome.speedup_ratio.verdict == "faster"
    recorded = metrics_of(best, baseline).vs_default
    assert recorded.median == pytest.approx(2.0) and recorded.confidence == 0.95
    assert recorded.low <= recorded.median <= recorded.high
    assert metrics_of(best).vs_default is None  # nothing to compare with: no ratio recorded


def test_a_ratio_record_round_trips():
    ratio = Ratio(2.0, 1.5, 2.5)
    assert ratio.record() == {"median": 2.0, "low": 1.5, "high": 2.5, "confidence": 0.95}


@pytest.mark.slow
def test_the_re_measurement_adds_rounds_only_while_the_comparison_is_undecided():
    from autotune.compare.remeasure import remeasure
    from autotune.profile import Workload
    from autotune.worker.process import WorkerConfig

    workload = Workload(height=64, width=64, prompts=["a cat"])
    asked = []

    def undecided() -> bool:
        asked.append(True)
        return False

    candidates = [Candidate("default", {"steps": 2}), Candidate("same", {"steps": 2})]
    remeasure(candidates, WorkerConfig("builtin:tiny-sd-random"), workload, rounds=1, timeout_s=300, runs_per_round=1,
              extra_rounds=2, settled=undecided)
    assert [len(c.latency_s) for c in candidates] == [3, 3] and len(asked) == 2  # 1 planned + 2 extra rounds
    decided = [Candidate("default", {"steps": 2}), Candidate("same", {"steps": 2})]
    remeasure(decided, WorkerConfig("builtin:tiny-sd-random"), workload, rounds=1, timeout_s=300, runs_per_round=1,
              extra_rounds=2, settled=lambda: True)
    assert [len(c.latency_s) for c in decided] == [1, 1]


@pytest.mark.slow
def test_the_re_measurement_stops_at_its_deadline_with_what_it_has():
    import time

    from autotune.compare.remeasure import TIME_UP, remeasure
    from autotune.profile import Workload
    from autotune.worker.process import WorkerConfig

    workload = Workload(height=64, width=64, prompts=["a cat"])
    candidates = [Candidate("default", {"steps": 2}), Candidate("same", {"steps": 2})]
    started = time.monotonic()
    complete = remeasure(candidates, WorkerConfig("builtin:tiny-sd-random"), workload, rounds=10_000, timeout_s=300,
                         runs_per_round=1, deadline=started + 20)
    assert not complete and time.monotonic() - started < 25  # past the deadline only by closing the workers
    assert all(c.measured for c in candidates) and 0 < len(candidates[0].latency_s) < 10_000
    late = [Candidate("default", {"steps": 2})]
    assert not remeasure(late, WorkerConfig("builtin:tiny-sd-random"), workload, rounds=1, timeout_s=300,
                         deadline=time.monotonic())
    assert late[0].failure == TIME_UP and not late[0].latency_s


def test_a_configuration_never_re_measured_keeps_its_trials_figures_marked_as_such():
    from autotune.measure.figures import Stat

    leader = Candidate("trial 3", {"batch_size": 4}, trial_peak_bytes=2**30, trial=3,
                       trial_images_per_s=Stat(median=12.5, cv=0.04, n=3), trial_quality={"psnr": 31.0})
    recorded = metrics_of(leader, Candidate("default", {}), others_cpu_share=0.5)
    assert recorded.measured_in == "trial" and recorded.images_per_s.median == 12.5
    assert recorded.vs_default is None and recorded.peak_memory_bytes == 2**30 and recorded.quality == {"psnr": 31.0}
    assert recorded.others_cpu_share == 0.5


# ---- on a busy machine, for real: a CPU-heavy process started by the test ----


def _burn_every_core() -> list[int]:
    import os
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    from load import start_burners

    return start_burners(os.cpu_count() or 1)


def _quiet_ratio(settings: dict, baseline: dict, workload) -> Ratio:
    from autotune.compare.remeasure import remeasure
    from autotune.worker.process import WorkerConfig

    again = [Candidate("claimed", settings), Candidate("default", baseline)]
    remeasure(again, WorkerConfig("builtin:tiny-sd-random"), workload, rounds=3, timeout_s=300)
    return again[0].vs(again[1])


@pytest.mark.slow
def test_a_search_on_a_busy_machine_claims_only_what_a_quiet_re_measurement_holds(tmp_path):
    from autotune.compare.remeasure import remeasure
    from autotune.tuner.run import run_search
    from autotune.worker.process import WorkerConfig

    burners = _burn_every_core()
    try:
        # A real speed-up (batch 8 against the default's batch 1), searched while every core is taken.
        outcome = run_search("builtin:tiny-sd-random", budget="4GB", n_trials=1, out=tmp_path / "busy.yaml", steps=2,
                             height=64, width=64, top_k=1, rounds=2,
                             pinned={"compile": "none", "batch_size": 8, "precision": "fp32"})
        # No speed-up at all: the default configuration against itself, re-measured while every core is taken.
        same = [Candidate("default", dict(outcome.baseline.settings)),
                Candidate("same", dict(outcome.baseline.settings))]
        workload = outcome.profile.workload
        remeasure(same, WorkerConfig("builtin:tiny-sd-random"), workload, rounds=2, timeout_s=300)
    finally:
        from load import stop_burners

        stop_burners(burners)
    claimed, none = outcome.speedup_ratio, same[1].vs(same[0])
    quiet = _quiet_ratio(outcome.best.settings, outcome.baseline.settings, workload)
    print(f"busy: {claimed.show()} for batch 8, {none.show()} for the same configuration; quiet: {quiet.show()}")
    # Each busy comparison either says it cannot tell, or claims an interval the quiet re-measurement falls in.
    assert claimed.verdict == "cannot tell" or claimed.low <= quiet.median <= claimed.high, (claimed, quiet)
    assert none.verdict == "cannot tell", none  # the truth is 1x: any claim either way is a false one
    assert claimed.busy and none.busy, (claimed, none)  # the spinning processes are not the search's own work
