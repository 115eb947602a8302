"""`python -m bench core|compare [--quick]` and `python -m bench profile` (from the project dir)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    core = sub.add_parser("core", help="latency, drain, enqueue and claim-rate figures")
    core.add_argument("--quick", action="store_true", help="one repetition, small sizes (< 30 s)")
    core.add_argument(
        "--out",
        type=Path,
        help="markdown output (default bench/CORE.md, bench/CORE-quick.md with --quick)",
    )
    core.add_argument(
        "--tmp",
        help="parent of the scratch directory (default: the system temp "
        "dir when it is on the project's filesystem)",
    )
    core.add_argument("--keep", action="store_true", help="keep the scratch directory")
    prof = sub.add_parser("profile", help="profile a worker parent during a drain")
    prof.add_argument("--tasks", type=int, default=5000, help="no-op tasks to drain")
    prof.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    prof.add_argument("--out", type=Path, help="markdown output (default bench/PROFILE.md)")
    prof.add_argument(
        "--flame", type=Path, help="flame graph output (default bench/profile-flame.svg)"
    )
    prof.add_argument("--tmp", help="parent of the scratch directory")
    prof.add_argument("--keep", action="store_true", help="keep the scratch directory")
    prof.add_argument("--no-strace", action="store_true", help="skip the syscall count run")
    comp = sub.add_parser("compare", help="spool side by side with Celery, huey, RQ, raw files")
    comp.add_argument("--quick", action="store_true", help="one repetition, small sizes")
    comp.add_argument(
        "--smoke", action="store_true", help="tiny sizes, spool and raw only (~10 s; run by CI)"
    )
    comp.add_argument("--reps", type=int, help="repetitions (default 3, 1 with --quick)")
    comp.add_argument("--only", help="comma-separated systems (default all)")
    comp.add_argument(
        "--out", type=Path, help="markdown output (default bench/RESULTS.md, -quick.md)"
    )
    comp.add_argument("--tmp", help="parent of the scratch directory")
    comp.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    if args.command == "compare":
        from bench.peers import run_compare

        return run_compare(args, argv)
    if args.command == "core":
        from bench.core import run_core

        return run_core(args.quick, args.out, args.tmp, args.keep, argv)
    from bench.profile import run_profile

    return run_profile(args, argv)


if __name__ == "__main__":
    sys.exit(main())
