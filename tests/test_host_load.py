"""The busy warning counts other processes' CPU, not the search's own workers."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from autotune.measure.host_load import OthersCpu, others_share

SPIN = "import time\nend = time.time() + float(__import__('sys').argv[1])\nwhile time.time() < end: pass\n"


def test_a_process_of_our_own_is_not_counted_and_a_strangers_is():
    own = subprocess.Popen([sys.executable, "-c", SPIN, "3"])
    time.sleep(0.3)
    with OthersCpu() as quiet:
        time.sleep(2)
    own.wait(timeout=30)
    stranger = subprocess.Popen(["sh", "-c", f"{sys.executable} -c \"$0\" 3 & exit 0", SPIN])
    stranger.wait(timeout=30)  # the shell exits: the spinner is reparented away from this process
    time.sleep(0.3)
    busy = others_share(2)
    cores = psutil.cpu_count() or 1
    assert busy > quiet.share + 0.5 / cores, (busy, quiet.share)
