"""The GPU acceptance run: every CUDA path of autotune checked in one command, each check in its own time box.

    python bench/gpu_check.py --out gpu-check              # within 8 minutes on an H100, imports included
    python bench/gpu_check.py --out gpu-check --dry-run    # lists every check with its time box; runs none

First it says whether a trial worker, started the way searches start them, can initialise CUDA; then each check runs
in a child process within its box. Writes DIR/gpu_check.json and DIR/gpu_check.md (every check: pass / fail /
skipped with its reason, its figures, its seconds), the search's profile DIR/<gpu>-sd15-arch.yaml, and everything
else (logs, each check's JSON, the studies, the report) in DIR/evidence.tar.gz. A failing check never stops the run.
Exit status 0 when every check that could run passed, 1 otherwise. Without CUDA (or with --dry-run) every check is
skipped with its reason, and nothing heavy is imported here: each check runs in a child that imports torch itself.
The checkout works from PYTHONPATH: autotune need not be pip-installed.
"""

from __future__ import annotations

import argparse
import platform
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the gpu_checks package beside this script

from gpu_checks.core import CHECKS, DEFAULT_BUDGET_S, FAIL, Options, Result, plan, run_one  # noqa: E402
from gpu_checks.evidence import ARCHIVE, pack  # noqa: E402
from gpu_checks.runner import run_all, stop_on_sigterm  # noqa: E402
from gpu_checks.tables import write_outputs  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json/.md, profile, evidence")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds for the whole run, start-up included (default {DEFAULT_BUDGET_S:.0f})")
    parser.add_argument("--dry-run", action="store_true", help="list every check with its time box; run none")
    parser.add_argument("--only", action="append", choices=[check.name for check in CHECKS],
                        help="run only this check (repeatable)")
    parser.add_argument("--with-flux", action="store_true",
                        help="the knob sweep also covers builtin:flux-arch (62.8 GiB in fp32; not in 8 minutes)")
    parser.add_argument("--full-sweep", action="store_true",
                        help="the knob sweep also runs the max-autotune compile modes (minutes each)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process's side: run one check
    return parser.parse_args(argv)


def _print(result: Result) -> None:
    print(f"{result.status:>8}  {result.title}  ({result.seconds:.0f} s)" + (f": {result.reason}" if result.reason
                                                                               else ""), flush=True)


def _print_plan(rows: list[dict]) -> None:
    print("time boxes (seconds on an H100):")
    for row in rows:
        print(f"{row['box_s']:>7.0f}  {row['part']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = Options(with_flux=args.with_flux, full_sweep=args.full_sweep)
    if args.one:
        return run_one(args.one, args.out, args.budget_s, options)
    started, since = time.monotonic(), time.time()
    stop_on_sigterm()
    checks = [check for check in CHECKS if not args.only or check.name in args.only]
    boxes = plan(args.budget_s, checks)
    _print_plan(boxes)
    results, device = run_all(args.out, args.budget_s, args.dry_run, args.only, on_result=_print, options=options,
                              started=started)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the files below are what the run is for: finish them
    packed = pack(args.out, since)
    header = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
              "gpu": device.get("cuda"), "device_note": device.get("reason"), "dry_run": args.dry_run,
              "budget_s": args.budget_s, "options": " ".join(options.flags()) or None,
              "evidence": f"{ARCHIVE}: {len(packed)} files" if packed else None,
              "seconds": round(time.monotonic() - started, 1)}
    as_json, as_md = write_outputs(args.out, results, header, boxes, packed)
    failed = [result.name for result in results if result.status == FAIL]
    print(f"wrote {as_json} and {as_md}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
