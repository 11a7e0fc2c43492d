"""`make bench`: run every eval/bench_*.py, keep each one's output as a log, collect the JSON line each prints
last, and print one table.

    python eval/run_benchmarks.py [--only train,generate] [--out eval/results/benchmarks.json] [--folder eval]
                                  [--logs eval/results]      # eval/results/bench_NAME.log, one per benchmark
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# arguments for scripts whose default run is too long for `make bench` on a 2-core machine
ARGUMENTS = {"bench_throughput": ["--batches", "1,8,32", "--shapes", "2048x32,128x64", "--long", "none",
                                  "--dynamic-max-batch", "8", "--flop-steps", "4"]}


def flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            flatten(f"{prefix}.{key}" if prefix else key, item, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = value


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated benchmark names (the part after bench_)")
    parser.add_argument("--out", default=str(HERE / "results" / "benchmarks.json"))
    parser.add_argument("--folder", default=str(HERE), help="where the bench_*.py scripts are")
    parser.add_argument("--logs", default=str(HERE / "results"), help="folder for each benchmark's full output")
    args = parser.parse_args()
    scripts = sorted(Path(args.folder).glob("bench_*.py"))
    if args.only:
        wanted = set(args.only.split(","))
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    collected = {}
    for script in scripts:
        print(f"== {script.name}", flush=True)
        result = subprocess.run([sys.executable, str(script), *ARGUMENTS.get(script.stem, [])], capture_output=True,
                                text=True)
        Path(args.logs).mkdir(parents=True, exist_ok=True)
        (Path(args.logs) / f"{script.stem}.log").write_text(result.stdout)
        lines = result.stdout.strip().splitlines()
        if result.returncode != 0 or not lines:
            print(result.stderr[-2000:])
            collected[script.stem] = {"error": result.returncode or "no output"}
            continue
        try:
            collected[script.stem] = json.loads(lines[-1])
        except json.JSONDecodeError:
            collected[script.stem] = {"error": "last line is not JSON"}
    rows = []
    for name, result in collected.items():
        flat = {}
        flatten("", result, flat)
        rows.extend((name, key, value) for key, value in flat.items() if key not in ("cpus", "threads"))
    width = max((len(f"{n} {k}") for n, k, _ in rows), default=10)
    print(f"{'benchmark / metric'.ljust(width)} | value")
    print("-" * width + "-+-------")
    for name, key, value in rows:
        print(f"{f'{name} {key}'.ljust(width)} | {value:g}")
    Path(args.out).write_text(json.dumps(collected, indent=2))
    print(json.dumps(collected, separators=(",", ":")))


if __name__ == "__main__":
    main()
