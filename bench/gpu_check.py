"""The GPU acceptance run: every CUDA path of autotune checked in one command, each check in its own time box.

    python bench/gpu_check.py --out gpu-check              # about 7 minutes on one GPU (--budget-s 420)
    python bench/gpu_check.py --out gpu-check --dry-run    # lists every check and why it is skipped

Writes DIR/gpu_check.json and DIR/gpu_check.md (every check: pass / fail / skipped with its reason, its figures,
its seconds), plus the search's profile and its report. A failing check never stops the run. Exit status 0 when
every check that could run passed, 1 otherwise. Without CUDA (or with --dry-run) every check is skipped with its
reason, and nothing heavy is imported here: each check runs in a child process that imports torch itself.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the gpu_checks package beside this script

from gpu_checks.core import CHECKS, DEFAULT_BUDGET_S, FAIL, Result, run_all, run_one  # noqa: E402
from gpu_checks.tables import write_outputs  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json/.md, profile, report")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds shared out among the checks (default {DEFAULT_BUDGET_S:.0f})")
    parser.add_argument("--dry-run", action="store_true", help="list every check and why it is skipped; run none")
    parser.add_argument("--only", action="append", choices=[check.name for check in CHECKS],
                        help="run only this check (repeatable)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process's side: run one check
    return parser.parse_args(argv)


def _print(result: Result) -> None:
    print(f"{result.status:>8}  {result.title}  ({result.seconds:.0f} s)" + (f": {result.reason}" if result.reason
                                                                               else ""), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        return run_one(args.one, args.out, args.budget_s)
    started = time.monotonic()
    results, device = run_all(args.out, args.budget_s, args.dry_run, args.only, on_result=_print)
    header = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
              "gpu": device.get("cuda"), "device_note": device.get("reason"), "dry_run": args.dry_run,
              "budget_s": args.budget_s, "seconds": round(time.monotonic() - started, 1)}
    as_json, as_md = write_outputs(args.out, results, header)
    failed = [result.name for result in results if result.status == FAIL]
    print(f"wrote {as_json} and {as_md}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
