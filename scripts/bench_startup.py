"""How fast the command line answers: ``segtrain --help`` and the one-line errors a typo or a bad value gets.

Each command runs as a new process (median of --repeat runs). The errors should come from the checks that
need neither torch nor Lightning nor the data (``segtrain.config_check``): close to ``--help``'s time.

    python scripts/bench_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEGTRAIN = str(Path(sys.executable).parent / "segtrain")
CASES = [("--help", ["--help"]), ("loss=tversky loss.alpha=2", ["loss=tversky", "loss.alpha=2"]),
         ("data=nifti (no data.root)", ["data=nifti"]), ("trainer.devices=0", ["trainer.devices=0"]),
         ("loss=tverksy", ["loss=tverksy"])]


def seconds(args: list[str], cwd: str) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([SEGTRAIN, *args], capture_output=True, text=True, cwd=cwd)
    return time.perf_counter() - start, (proc.stderr.strip().splitlines() or [""])[-1][:100]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cwd:
        seconds(["--help"], cwd)  # warm the file cache
        times = {}
        for name, argv in CASES:
            runs = [seconds(argv, cwd) for _ in range(args.repeat)]
            times[name] = statistics.median(t for t, _ in runs)
            print(f"{name:<30} {times[name]:.2f} s   {runs[-1][1]}")
    help_time = times["--help"]
    print(f"\nratio to --help (target <= 1.5): " + ", ".join(f"{n}: {t / help_time:.2f}" for n, t in times.items() if n != "--help"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
