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


def test_window_attention_is_timed_over_each_local_layers_live_window():
    """bench_throughput's window-attention time reads every local layer's live keys/values (as many as the cache
    holds), and only a BLT cache has them."""
    import torch
    from transformers import DynamicCache

    from eval import bench_throughput
    from tests.utils import tiny_model

    model = tiny_model().eval()
    with torch.no_grad():
        cache = model(torch.randint(4, 260, (2, 40)), use_cache=True).past_key_values
    seen = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(query, keys, values):
        seen.append((tuple(query.shape), tuple(keys.shape)))
        return original(query, keys, values)

    windows = [w for w in (cache.encoder, cache.decoder, cache.patcher) if w is not None]
    expected = [(k.shape[0], k.shape[1], w.end - w.start) for w in windows for k in w.keys if k is not None]
    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        milliseconds = bench_throughput.window_attention_ms(cache, repeats=1)
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
    assert milliseconds > 0 and len(seen) == len(expected) > 0
    assert [(k[0], k[1], k[2]) for _, k in seen] == expected and all(q[2] == 1 for q, _ in seen)
    assert all(0 < length < 40 for _, _, length in expected)  # each layer's window of the 40 bytes
    assert bench_throughput.window_attention_ms(DynamicCache()) is None


def test_throughput_floor_counts_the_local_stacks_matmuls_apart_from_the_global_transformers():
    """bench_throughput's local FLOPs are the step's matrix products less exactly those the global transformer
    ran (counted here by a second FlopCounterMode around its calls alone), and GlobalRuns times those calls."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from eval import bench_throughput
    from tests.utils import tiny_model

    model = tiny_model(patching_mode="static", patch_size=2).eval()
    with torch.no_grad():
        out = model.generate(torch.randint(4, 260, (2, 9)), max_new_tokens=3, do_sample=False,
                             return_dict_in_generate=True, pad_token_id=0)
    runs = bench_throughput.GlobalRuns(model)
    global_forward, global_flops = model.model.global_transformer.forward, []  # GlobalRuns' timed forward

    def counted(*args, **kwargs):
        counter = FlopCounterMode(display=False)
        with counter:
            result = global_forward(*args, **kwargs)
        global_flops.append(counter.get_total_flops())
        return result

    model.model.global_transformer.forward = counted
    try:
        total, local = bench_throughput.flops_per_step(model, "blt_static", out, steps=4)
    finally:
        model.model.global_transformer.forward = global_forward
        runs.close()
    assert sum(global_flops) > 0 and runs.global_steps == len(global_flops) == 2  # patches of 2: every other step
    assert total - local == sum(global_flops) / 4
    assert runs.fractions()["global_ms_per_step"] > 0
