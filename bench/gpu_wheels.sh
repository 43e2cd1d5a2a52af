#!/usr/bin/env bash
# Download the wheels the GPU machine lacks (bench/gpu_wheels.txt, exact pins) into bench/wheels/, for Python 3.12
# on manylinux x86_64, whatever Python and platform run this. --no-deps: the list is the whole closure beside the
# GPU machine's own packages, so nothing it already has (torch above all) is fetched. bench/wheels/ is git-ignored;
# it travels with the checkout (carry it), and bench/gpu_run.sh installs it.
#   bash bench/gpu_wheels.sh               # about 19 MB
#   WITH_PLOTLY=1 bash bench/gpu_wheels.sh # plus plotly and narwhals (10 MB), for `autotune report` on the GPU
set -euo pipefail
cd "$(dirname "$0")"
extra=()
if [[ -n "${WITH_PLOTLY:-}" ]]; then extra=(plotly==7.1.0 narwhals==2.29.0); fi
# Both platform tags: pip does not count a manylinux_2_17 wheel (pydantic-core's) as manylinux_2_28.
python -m pip download --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --only-binary=:all: --no-deps -d wheels -r gpu_wheels.txt "${extra[@]}"
du -sh wheels
