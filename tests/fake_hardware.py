"""The autotune command line on a simulated machine: another CPU model. Only the hardware boundary is faked.

    python tests/fake_hardware.py worker --storage URL --study NAME

Importing this module fakes nothing (tests import the name below); running it does.
"""

from __future__ import annotations

SIMULATED_CPU = "Simulated CPU 9000 (test)"

if __name__ == "__main__":
    import autotune.hardware

    autotune.hardware._cpu_name = lambda: SIMULATED_CPU  # what /proc/cpuinfo would say on another machine
    from autotune.cli import main

    main()
