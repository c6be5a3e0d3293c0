"""Run every benchmark in this folder and print their tables of ratios against the peers.

Each ``bench_*.py`` is a standalone script that measures ``downscale`` side by
side with the peer named in its issue (PyKrige, xarray-spatial, scipy,
bilinear interpolation, ...) and prints a table with the ratios. This runner
runs them one after another in fresh processes (so that peak memory is each
one's own), keeps going when one fails, and ends with a summary.

Usage::

    python benchmarks/run_all.py                 # everything (about 30 minutes on 2 cores)
    python benchmarks/run_all.py --quick         # the quick variants, where a script has one
    python benchmarks/run_all.py kriging run     # only bench_kriging.py and bench_run.py

Benchmarks are never part of the test suite: timings on a shared machine vary,
so they are reported, not asserted.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: Scripts that accept ``--quick``.
QUICK = {"bench_kriging.py", "bench_run.py", "bench_unet.py"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", help="benchmarks to run, e.g. 'kriging' for bench_kriging.py (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="pass --quick to the scripts that have it")
    parser.add_argument(
        "--timeout", type=float, default=3600, help="seconds allowed per script (default 3600)"
    )
    args = parser.parse_args(argv)

    scripts = sorted(HERE.glob("bench_*.py"))
    if args.names:
        wanted = {f"bench_{name.removeprefix('bench_').removesuffix('.py')}.py" for name in args.names}
        unknown = wanted - {script.name for script in scripts}
        if unknown:
            parser.error(
                f"no such benchmark: {', '.join(sorted(unknown))}; have {', '.join(s.name for s in scripts)}"
            )
        scripts = [script for script in scripts if script.name in wanted]

    summary = []
    for script in scripts:
        command = [sys.executable, str(script)]
        if args.quick and script.name in QUICK:
            command.append("--quick")
        print(f"\n===== {script.name} {' '.join(command[2:])}", flush=True)
        start = time.perf_counter()
        try:
            result = subprocess.run(command, timeout=args.timeout, check=False)
            status = "ok" if result.returncode == 0 else f"failed (exit {result.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {args.timeout:.0f} s"
        summary.append((script.name, status, time.perf_counter() - start))

    print("\n===== summary")
    print(f"{'benchmark':<26}{'status':<28}{'wall time':>10}")
    for name, status, seconds in summary:
        print(f"{name:<26}{status:<28}{seconds:>9.0f}s")
    return 0 if all(status == "ok" for _, status, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
