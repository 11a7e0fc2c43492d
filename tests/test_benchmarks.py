"""The benchmark scripts in eval/ run end to end at toy sizes and print their JSON line (the numbers themselves
come from full runs, see README)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

RUNS = {
    "bench_patcher.py": (["--megabytes", "0.02", "--row-bytes", "1024", "--batch", "2"],
                         {"forward_bytes_per_s", "patching_bytes_per_s", "overhead"}),
    "bench_generate.py": (["--contexts", "48,96", "--new-bytes", "4", "--reference-steps", "3", "--batch", "2",
                           "--repeats", "1"],
                          {"contexts", "batched", "time_per_byte_growth_last_vs_first"}),
    "bench_train.py": (["--shapes", "1x128", "--steps", "1"], {"results", "matmul_peak_gflops"}),
    "bench_throughput.py": (["--quick"], {"rows", "ratios", "matmul_peak_gflops", "load_average"}),
}


@pytest.mark.parametrize("script", sorted(RUNS))
def test_benchmark_script_runs_and_ends_with_its_json_line(script):
    arguments, keys = RUNS[script]
    done = subprocess.run([sys.executable, str(REPO / "eval" / script), *arguments, "--threads", "2"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == script.removeprefix("bench_").removesuffix(".py")
    assert keys <= set(result)
