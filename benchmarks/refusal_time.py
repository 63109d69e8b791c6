"""Time from command to refusal of a bad config (target: under 2 s).

    python benchmarks/refusal_time.py [--repeats 5]

Runs ``python -m bayesian_lora.train`` / ``bayesian_lora.evaluate`` with bad input in a scratch
folder, checks that each is refused (exit status 2, ``error: ...`` on stderr, no traceback, no
output folder left behind) and prints the wall time of each (median of the repeats), and whether
torch was imported before the refusal (``-X importtime``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES: list[tuple[str, list[str]]] = [
    ("train", ["model=tiny", "sampler.lr=-1"]),
    ("train", ["model=tiny", "sampler=sgld", "+sampler.burnin=10"]),
    ("train", ["model=tiny", "sampler=sgld", "trainer.check_val_every_n_epoch=0"]),
    ("train", ["model=tiny", "resume=/nonexistent/run"]),
    ("evaluate", ["k=0", "run_dir=/nonexistent/run"]),
]


def run_once(module: str, args: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", f"bayesian_lora.{module}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return time.perf_counter() - start, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    worst = 0.0
    for module, args in CASES:
        times = []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                seconds, proc = run_once(module, args, Path(tmp))
                left = sorted(str(p.relative_to(tmp)) for p in Path(tmp).rglob("*"))
            errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
            torch = any(
                line.startswith("import time:") and line.split("|")[-1].strip() == "torch"
                for line in proc.stderr.splitlines()
            )
            if proc.returncode != 2 or not errors or "Traceback" in proc.stderr or left:
                raise SystemExit(
                    f"{module} {' '.join(args)}: not a clean refusal (exit {proc.returncode}, "
                    f"left {left}):\n{proc.stderr[-2000:]}"
                )
            times.append(seconds)
        median = statistics.median(times)
        worst = max(worst, median)
        print(
            f"{median:6.2f} s  (min {min(times):.2f})  torch imported: {torch}  {module} "
            f"{' '.join(args)}\n          {errors[0][:150]}"
        )
    print(
        f"slowest median: {worst:.2f} s (target < 2 s) on {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
