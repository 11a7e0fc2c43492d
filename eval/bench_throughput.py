"""Batched decoding throughput: blt_hf (entropy patches), blt_hf in the Block Transformer setting (static patches of 4
and 8 + patch-local decoder) and the matched byte-level Llama (transformers' static cache, and DynamicCache), side by
side over a grid of batch sizes x (prompt, new bytes), interleaved within each cell.

Models are bench_generate.py's: the 70M benchmark configuration with random weights converted into blt_hf, its
entropy model seeing synthetic space-like entropies, and the Llama with as many non-embedding parameters as the
BLT's global + local stacks. The Block settings are the same BLT weights with `patching_mode="static"` and
`decoder_config.patch_local_attention=True`. `--shipped` adds one cell with models/blt-hf-small-en (trained).

Reported per run: bytes/s and ms per decoding step (mean time between generate() steps after the first, best of
`--repeats`), decode-cache MB per row (the buffers held at the end), peak RSS above the start of the run, matmul
FLOPs per step (torch's FlopCounterMode over `--flop-steps` greedy steps continuing the same prompt) and the
GFLOP/s they run at against the machine's measured fp32 matmul peak, weight + cache MB read per step (estimated from
parameter and cache sizes) and the step time that streaming them once at the measured copy bandwidth would take,
and for the BLT rows the fraction of decoding steps, and of rows x steps, on which the
global transformer ran and the time its runs took per step. For the BLT rows, a floor per step: the measured
attention over the local window caches, the local stacks' matrix products at the measured matmul peak and the
global transformer's weights streamed at the copy bandwidth on its share of steps, all else free; batch B over
batch 1 cannot beat B x (batch-1 step) / (batch-B floor) (`..._floor_limit`). The header records
torch.get_num_threads() and the load average.

    python eval/bench_throughput.py                      # the issue's grid (hours on 2 CPU cores)
    python eval/bench_throughput.py --batches 1,8,32 --shapes 2048x32,128x64 --long none --threads 1
    python eval/bench_throughput.py --quick              # seconds: a smoke run

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from eval.bench_generate import StepTimer, matched_llama, space_like_blt_hf_patcher  # noqa: E402
from eval.common import (  # noqa: E402
    REPO,
    TRANSFORMERS_BENCH_CONFIG,
    MemorySampler,
    byte_rows,
    emit,
    license_text,
    machine_header,
    matmul_gflops,
    print_table,
)


@contextlib.contextmanager
def block_setting(model, patch_size):
    """The BLT as a Block Transformer: static patches of `patch_size`, patch-local decoder (restored on exit)."""
    config = model.config
    saved = (config.patching_mode, config.patch_size, config.decoder_config.patch_local_attention)
    config.patching_mode, config.patch_size = "static", patch_size
    config.decoder_config.patch_local_attention = True
    try:
        yield model
    finally:
        config.patching_mode, config.patch_size, config.decoder_config.patch_local_attention = saved


class GlobalRuns:
    """Counts, over one-byte decoding steps, the steps on which the global transformer ran, the rows it ran on and
    the wall time its runs took."""

    def __init__(self, model):
        self.steps = self.global_steps = self.rows = self.batch_rows = 0
        self.global_seconds = 0.0
        self._decoding = False
        base = model.model
        forward, global_forward = base.forward, base.global_transformer.forward

        def counted_forward(input_ids=None, **kwargs):
            self._decoding = input_ids.shape[1] == 1
            if self._decoding:
                self.steps += 1
                self.batch_rows += input_ids.shape[0]
            return forward(input_ids, **kwargs)

        def counted_global(patch_vectors, *args, **kwargs):
            if not self._decoding:
                return global_forward(patch_vectors, *args, **kwargs)
            self.global_steps += 1
            self.rows += patch_vectors.shape[0]
            start = time.perf_counter()
            out = global_forward(patch_vectors, *args, **kwargs)
            self.global_seconds += time.perf_counter() - start
            return out

        base.forward, base.global_transformer.forward = counted_forward, counted_global
        self._restore = lambda: (base.__dict__.pop("forward"), base.global_transformer.__dict__.pop("forward"))

    def close(self):
        self._restore()

    def fractions(self) -> dict:
        return {"global_step_fraction": round(self.global_steps / max(self.steps, 1), 3),
                "global_row_fraction": round(self.rows / max(self.batch_rows, 1), 3),
                "global_ms_per_step": round(self.global_seconds / max(self.steps, 1) * 1e3, 2)}


def memory_gbps(megabytes: int = 256, repeats: int = 5) -> float:
    """Measured memory bandwidth (GB/s read + written) of a large tensor copy: what bounds a decoding step that
    streams weights and caches."""
    source = torch.ones(megabytes * 2**18)
    target = torch.empty_like(source)
    target.copy_(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() * 4 / best / 1e9


def cache_read_bytes(cache, global_row_fraction) -> int:
    """Cache bytes one decoding step reads: the BLT's window caches and open-patch states whole, its global cache
    for the rows that ran it; a transformers cache whole (a static cache attends over all its slots)."""
    if hasattr(cache, "memory_bytes"):
        parts = cache.memory_bytes()
        return sum(parts.values()) - parts["global"] + parts["global"] * global_row_fraction
    return cache_bytes(cache)


def window_attention_ms(cache, repeats: int = 3) -> float | None:
    """Milliseconds one decoding step spends in attention over the BLT's local window caches alone: torch's
    scaled_dot_product_attention of one query per row over each layer's live keys/values, timed on the cache the
    run left (best of `repeats`). This reading of the windows grows with the batch and no batching amortises it,
    so batch B over batch 1 cannot exceed B x (batch-1 step) / (this time at batch B)."""
    if not hasattr(cache, "memory_bytes"):
        return None
    buffers = []
    for window in (cache.encoder, cache.decoder, cache.patcher):
        if window is None:
            continue
        for keys, values in zip(window.keys, window.values, strict=True):
            if keys is not None:
                buffers.append((keys[:, :, window.start : window.end], values[:, :, window.start : window.end]))
    if not buffers:
        return None
    queries = [torch.randn_like(keys[:, :, :1]) for keys, _ in buffers]  # local stacks: as many heads as kv heads
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for query, (keys, values) in zip(queries, buffers, strict=True):
            torch.nn.functional.scaled_dot_product_attention(query, keys, values)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def cache_bytes(cache) -> int:
    """Bytes held by a decode cache: BLTCache.memory_bytes, or a transformers cache's key/value tensors."""
    if hasattr(cache, "memory_bytes"):
        return sum(cache.memory_bytes().values())
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def timed_generate(model, name, ids, new_tokens, spare_steps):
    """(seconds per decoding step, generate()'s output, peak RSS MB above the start, prefill seconds). The Llama
    with static cache gets one of `spare_steps` extra slots (for `flops_per_step` to continue it)."""
    from transformers import StaticCache, StoppingCriteriaList

    kwargs = {}
    if name == "llama_static":
        kwargs["past_key_values"] = StaticCache(config=model.config, max_cache_len=ids.shape[1] + new_tokens
                                                + spare_steps)
    timer = StepTimer()
    start = time.perf_counter()
    with MemorySampler() as memory, torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             eos_token_id=None, pad_token_id=0, stopping_criteria=StoppingCriteriaList([timer]),
                             return_dict_in_generate=True, **kwargs)
    step = (timer.times[-1] - timer.times[0]) / max(len(timer.times) - 1, 1)
    return step, out, memory.extra_mb, timer.times[0] - start


def flops_per_step(model, name, out, steps):
    """(all, outside the global transformer) matmul FLOPs of one greedy decoding step: FlopCounterMode over `steps`
    steps continuing generate()'s cache (its last byte is not in the cache yet). It counts matrix products (the
    projections, MLPs, heads, patch cross-attention), not CPU scaled_dot_product_attention."""
    from torch.utils.flop_counter import FlopCounterMode

    cache, sequences = out.past_key_values, out.sequences
    last, seen = sequences[:, -1:], sequences.shape[1] - 1
    mask = torch.ones(sequences.shape[0], seen + 1, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        for i in range(steps):
            kwargs = {"cache_position": torch.tensor([seen + i])} if name.startswith("llama") else {}
            logits = model(last, attention_mask=mask, past_key_values=cache, use_cache=True, **kwargs).logits
            last = logits[:, -1:].argmax(-1)
            mask = torch.cat((mask, mask[:, :1]), dim=1)
    counts = counter.get_flop_counts()
    in_global = [sum(c.values()) for module, c in counts.items() if module.endswith(".global_transformer")]
    total = counter.get_total_flops()
    return total / steps, (total - sum(in_global)) / steps


def global_weight_mb(model) -> float:
    """MB of the BLT's global transformer weights (fp32)."""
    return sum(p.numel() for p in model.model.global_transformer.parameters()) * 4 / 2**20


def weight_mb(model, name, global_step_fraction):
    """Weight MB a decoding step reads: every stack each step, the BLT's global transformer on its share of steps
    (the entropy model only with entropy patches; hash and byte embeddings are lookups, not read whole)."""
    if name.startswith("llama"):
        return sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n) * 4 / 2**20
    base = model.model
    encoder = base.local_encoder
    local = [encoder.layers, encoder.cross_attn_layers, encoder.patch_embedding_projection, base.local_decoder,
             model.lm_head]
    if name == "blt_entropy":
        local.append(base.patcher.layers)
    local_mb = sum(p.numel() for m in local for p in m.parameters()) * 4 / 2**20
    return local_mb + global_weight_mb(model) * global_step_fraction


def run_cell(models, batch, prompt, new, text, repeats, flop_steps, bandwidth, peak):
    """One grid cell: every model in turn, `repeats` rounds (best step time kept)."""
    ids = byte_rows(text, batch, prompt)
    best = {}
    for _ in range(repeats):
        for name, (model, setting) in models.items():
            with setting():
                counter = GlobalRuns(model) if not name.startswith("llama") else None
                try:
                    step, out, rss, prefill = timed_generate(model, name, ids, new, flop_steps)
                finally:
                    if counter is not None:
                        counter.close()
                if name not in best or step < best[name]["step"]:
                    flops = flops_per_step(model, name, out, flop_steps) if flop_steps else None
                    rows = counter.fractions()["global_row_fraction"] if counter is not None else 1.0
                    best[name] = {"step": step, "cache": cache_bytes(out.past_key_values), "rss": rss,
                                  "attention": window_attention_ms(out.past_key_values),
                                  "read": cache_read_bytes(out.past_key_values, rows), "prefill": prefill,
                                  "counter": counter, "flops": flops}
            del out
    rows = []
    for name, (model, _) in models.items():
        found = best[name]
        flops = found["flops"]
        fractions = found["counter"].fractions() if found["counter"] is not None else {}
        weights = weight_mb(model, name, fractions.get("global_step_fraction", 1.0))
        row = {
            "model": name, "batch": batch, "prompt": prompt, "new": new,
            "bytes_per_s": round(batch / found["step"], 1),
            "ms_per_step": round(found["step"] * 1e3, 2),
            "prefill_s": round(found["prefill"], 2),
            "cache_mb_per_row": round(found["cache"] / batch / 2**20, 2),
            "peak_rss_extra_mb": round(found["rss"], 1),
            "read_mb_per_step": round(weights + found["read"] / 2**20, 1),
            **fractions,
        }
        # the fastest a step can be if it only streamed its weights and cache once at the measured bandwidth
        row["bandwidth_bound_ms_per_step"] = round(row["read_mb_per_step"] * 2**20 / (bandwidth * 1e9) * 1e3, 2)
        if found["attention"] is not None:
            row["window_attention_ms_per_step"] = round(found["attention"], 2)
        if flops is not None:
            flops, local_flops = flops
            row["mflop_per_byte"] = round(flops / batch / 1e6, 2)
            row["gflop_per_s"] = round(flops / found["step"] / 1e9, 2)
            if found["attention"] is not None:  # a BLT
                row["local_mflop_per_byte"] = round(local_flops / batch / 1e6, 2)
                # a floor for the step: its window attention as measured, the local stacks' matrix products at the
                # machine's matmul peak, the global transformer's weights streamed once at the copy bandwidth on its
                # share of steps; all else (norms, gathers, cache writes, per-kernel overhead) free
                global_read = global_weight_mb(model) * fractions.get("global_step_fraction", 0.0) * 2**20
                row["floor_ms_per_step"] = round(found["attention"] + local_flops / (peak * 1e9) * 1e3
                                                 + global_read / (bandwidth * 1e9) * 1e3, 2)
        rows.append(row)
    return rows


def build_models(args):
    from transformers import BltConfig, BltForCausalLM

    from blt_hf.convert.transformers_blt import from_transformers

    torch.manual_seed(0)
    blt = from_transformers(BltForCausalLM(BltConfig(**TRANSFORMERS_BENCH_CONFIG))).eval()
    blt.config.use_cache = True
    blt.config.max_position_embeddings = 16384
    space_like_blt_hf_patcher(blt.model.patcher)
    llama, _, _ = matched_llama(blt)
    plain = contextlib.nullcontext
    models = {"blt_entropy": (blt, plain)}
    for size in args.block_patch_sizes:
        models[f"block_p{size}"] = (blt, lambda size=size: block_setting(blt, size))
    models["llama_static"] = (llama, plain)
    models["llama_dynamic"] = (llama, plain)
    return models


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--shapes", default="128x512,2048x128", help="prompt x new bytes, comma separated")
    parser.add_argument("--long", default="8192x64@8", help="long-context cell prompt x new @ batch, or none")
    parser.add_argument("--block-patch-sizes", default="4,8")
    parser.add_argument("--dynamic-max-batch", type=int, default=64,
                        help="run the DynamicCache Llama only up to this batch (the static cache is the peer)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--flop-steps", type=int, default=8, help="decoding steps counted for FLOPs (0: skip)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shipped", action="store_true", help="add a cell with models/blt-hf-small-en")
    parser.add_argument("--quick", action="store_true", help="a smoke run: batch 1,4, shapes 64x8, no long cell")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.shapes, args.long, args.flop_steps = "1,4", "64x8", "none", 2
    args.block_patch_sizes = [int(s) for s in args.block_patch_sizes.split(",") if s]
    torch.set_num_threads(args.threads)
    header = {**machine_header(), "threads": torch.get_num_threads(), "load_average": os.getloadavg()}
    peak, bandwidth = matmul_gflops(), memory_gbps()
    models = build_models(args)
    text = license_text()

    cells = [(int(b), *map(int, shape.split("x"))) for shape in args.shapes.split(",")
             for b in args.batches.split(",")]
    if args.long != "none":
        shape, batch = args.long.split("@")
        cells.append((int(batch), *map(int, shape.split("x"))))
    rows = []
    for batch, prompt, new in cells:
        cell_models = {name: entry for name, entry in models.items()
                       if name != "llama_dynamic" or batch <= args.dynamic_max_batch}
        cell_rows = run_cell(cell_models, batch, prompt, new, text, args.repeats, args.flop_steps, bandwidth, peak)
        for row in cell_rows:
            if "gflop_per_s" in row:
                row["fraction_of_peak"] = round(row["gflop_per_s"] / peak, 3)
        rows.extend(cell_rows)
        print(f"[{time.strftime('%H:%M:%S')}] batch {batch} prompt {prompt} new {new} done", file=sys.stderr,
              flush=True)
    if args.shipped:
        from blt_hf import BLTForCausalLM

        shipped = BLTForCausalLM.from_pretrained(REPO / "models" / "blt-hf-small-en").eval()
        rows.extend(run_cell({"shipped_entropy": (shipped, contextlib.nullcontext)}, 8, 128, 64, text, args.repeats,
                             args.flop_steps, bandwidth, peak))

    columns = ["model", "batch", "prompt", "new", "bytes_per_s", "ms_per_step", "prefill_s", "cache_mb_per_row",
               "peak_rss_extra_mb", "mflop_per_byte", "gflop_per_s", "fraction_of_peak",
               "read_mb_per_step", "bandwidth_bound_ms_per_step", "window_attention_ms_per_step",
               "local_mflop_per_byte", "floor_ms_per_step", "global_ms_per_step", "global_step_fraction",
               "global_row_fraction"]
    print_table(rows, columns)
    ratios = summary_ratios(rows)
    for key, value in ratios.items():
        print(f"{key}: {value}")
    emit({"benchmark": "throughput", **header, "load_average_end": os.getloadavg(),
          "matmul_peak_gflops": round(peak, 1), "memory_gbps": round(bandwidth, 1), "rows": rows, "ratios": ratios,
          "targets": {"entropy_batch32_vs_batch1_at_2048": 12, "cache_per_row_vs_llama_at_2048_max": 0.5,
                      "entropy_vs_llama_static_batch32_2048": 2.5, "block_vs_llama_static_batch32_2048": 4,
                      "block_vs_llama_static_8192": 8}})


def summary_ratios(rows) -> dict:
    """The issue's target ratios, for every prompt length / batch where the grid has them."""
    table = {(r["model"], r["batch"], r["prompt"]): r for r in rows}
    batches = sorted({r["batch"] for r in rows})
    out = {}
    for prompt in sorted({r["prompt"] for r in rows}):
        one, top = table.get(("blt_entropy", 1, prompt)), max(b for b in batches if ("blt_entropy", b, prompt) in table)
        if one is not None and top != 1:
            out[f"entropy_batch{top}_vs_batch1_prompt{prompt}"] = round(
                table[("blt_entropy", top, prompt)]["bytes_per_s"] / one["bytes_per_s"], 2)
            attention = table[("blt_entropy", top, prompt)].get("window_attention_ms_per_step")
            if attention:  # the ratio if everything but the window attention were free at batch `top`
                out[f"entropy_batch{top}_vs_batch1_prompt{prompt}_window_attention_limit"] = round(
                    top * one["ms_per_step"] / attention, 2)
            floor = table[("blt_entropy", top, prompt)].get("floor_ms_per_step")
            if floor:  # the ratio if the batch-`top` step ran at its floor (`run_cell`)
                out[f"entropy_batch{top}_vs_batch1_prompt{prompt}_floor_limit"] = round(
                    top * one["ms_per_step"] / floor, 2)
        for batch in batches:
            llama = table.get(("llama_static", batch, prompt))
            if llama is None:
                continue
            for name in ("blt_entropy", "block_p4", "block_p8", "llama_dynamic"):
                if (name, batch, prompt) in table:
                    mine = table[(name, batch, prompt)]
                    out[f"{name}_vs_llama_static_b{batch}_prompt{prompt}"] = round(
                        mine["bytes_per_s"] / llama["bytes_per_s"], 2)
                    if name != "llama_dynamic":
                        out[f"{name}_cache_per_row_vs_llama_b{batch}_prompt{prompt}"] = round(
                            mine["cache_mb_per_row"] / llama["cache_mb_per_row"], 3)
    return out


if __name__ == "__main__":
    main()
