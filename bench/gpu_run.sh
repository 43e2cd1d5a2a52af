#!/usr/bin/env bash
# The GPU acceptance run as one prepared command, on a GPU machine without network that has its own CUDA torch:
# install the carried wheels (bench/wheels/, from bench/gpu_wheels.sh) beside it, precompile bytecode, then run
# bench/gpu_check.py from PYTHONPATH (autotune is not pip-installed) within a wall-clock limit.
#
#   OUT=/some/folder bash bench/gpu_run.sh    # writes $OUT/gpu-check/: gpu_check.json, gpu_check.md,
#                                             # <gpu>-sd15-arch.yaml, evidence.tar.gz
#
# bench/wheels/ is git-ignored: a remote runner must carry it with the checkout. Extra arguments go to gpu_check.py
# (--dry-run, --only NAME, ...). The whole command takes at most ~9.5 minutes: ~20 s to install and compile, then
# gpu_check.py's own 480 s budget, and GPU_CHECK_LIMIT_S (540 s) as the hard stop, at which gpu_check.py is told
# to stop (SIGTERM) and still writes its files.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="${OUT:-$PWD/autotune-out}"
DEPS="${AUTOTUNE_DEPS:-/tmp/autotune-deps}"
LIMIT_S="${GPU_CHECK_LIMIT_S:-540}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

shopt -s nullglob
wheels=(bench/wheels/*.whl)
if (( ${#wheels[@]} == 0 )); then
    echo "bench/wheels/ holds no wheel: run bench/gpu_wheels.sh where PyPI is reachable, and carry bench/wheels" >&2
    exit 2
fi
started=$SECONDS
# --no-compile: compileall below does it on every core, where pip compiles one file at a time. --upgrade: a
# second run on the same machine replaces the first one's files.
"$PYTHON" -m pip install -q --upgrade --no-index --no-deps --no-compile --target "$DEPS" "${wheels[@]}"
# Bytecode now, so that no check spends its time box compiling diffusers' thousand modules on first import.
# A file that does not compile (a package's template, a SyntaxWarning) is compiled, or not, on import as usual.
"$PYTHON" -m compileall -q -j 0 "$DEPS" autotune bench > /dev/null 2>&1 || echo "compileall: some files did not compile"
echo "installed ${#wheels[@]} wheels into $DEPS and compiled bytecode in $((SECONDS - started)) s"

mkdir -p "$OUT"
status=0
PYTHONPATH="$DEPS:$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout --signal=TERM --kill-after=20 "$LIMIT_S" \
    "$PYTHON" bench/gpu_check.py --out "$OUT/gpu-check" "$@" || status=$?
echo "gpu_check.py exited with $status after $((SECONDS - started)) s; $OUT/gpu-check holds:"
ls -l "$OUT/gpu-check"
exit "$status"
