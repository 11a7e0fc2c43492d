"""Probe behind the fix of issue 17's batch-1 slowdown, run on the commit before the global transformer went back to
plain layers (a worktree of it): the one-off cost of fusing the global weights, and per-step decode times of
bench_generate's BLT with the global transformer's fused path on and off, interleaved.

    python eval/results/batch1_recheck/global_fuse_probe.py TREE CONTEXTS ROUNDS BATCH [MODEL_FOLDER]

With MODEL_FOLDER (e.g. models/blt-hf-small-en): that trained model and its own patches instead.
"""

import statistics
import sys
import time

TREE = sys.argv[1]
sys.path[:0] = [TREE, TREE + "/src"]

import torch  # noqa: E402
from transformers import BltConfig, BltForCausalLM, StoppingCriteriaList  # noqa: E402

import blt_hf.global_transformer as global_module  # noqa: E402
from blt_hf import decoding  # noqa: E402
from blt_hf.convert.transformers_blt import from_transformers  # noqa: E402
from eval.bench_generate import StepTimer, space_like_blt_hf_patcher  # noqa: E402
from eval.common import TRANSFORMERS_BENCH_CONFIG, byte_rows, license_text  # noqa: E402

contexts, rounds, batch = [int(c) for c in sys.argv[2].split(",")], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
torch.manual_seed(0)
if len(sys.argv) > 5:
    from blt_hf import BLTForCausalLM

    model = BLTForCausalLM.from_pretrained(sys.argv[5]).eval()
else:
    model = from_transformers(BltForCausalLM(BltConfig(**TRANSFORMERS_BENCH_CONFIG)).eval()).eval()
    space_like_blt_hf_patcher(model.model.patcher)
model.config.use_cache = True
layers = model.model.global_transformer.layers
start = time.perf_counter()
for layer in layers:
    decoding.fuse_step_weights(layer)
print(f"fusing {len(layers)} global layers: {(time.perf_counter() - start) * 1e3:.1f} ms")
fused_eligible = global_module.fused_layers_eligible
for context in contexts:
    ids = byte_rows(license_text(), batch, context)
    steps = {"fused": [], "plain": []}
    for _ in range(rounds):
        for mode in steps:
            global_module.fused_layers_eligible = fused_eligible if mode == "fused" else (lambda hidden, cache: False)
            timer = StepTimer()
            with torch.no_grad():
                model.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False, eos_token_id=None,
                               pad_token_id=0, stopping_criteria=StoppingCriteriaList([timer]))
            gaps = [(b - a) * 1e3 for a, b in zip(timer.times[:-1], timer.times[1:], strict=True)]
            steps[mode].append((round(sum(gaps) / len(gaps), 2), round(statistics.median(gaps), 2),
                                round(max(gaps), 2)))
    for mode, runs in steps.items():
        print(f"batch {batch} context {context} global {mode}: (mean, median, max) ms per step per round {runs}")
