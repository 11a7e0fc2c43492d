"""Decoding speed: blt_hf's cached generate() vs transformers' Blt (use_cache=False, its only correct path) and vs a
byte-level Llama with its KV cache, on identical weights and identical greedy outputs.

The 70M benchmark configuration (shared/reference/transformers-blt.md), random weights built by transformers and
converted into blt_hf. Random entropy models give near-uniform entropies, so both BLTs run their real entropy
model and then see synthetic entropies: high after a space or punctuation byte, low otherwise (the reference's
"space-like" rule). The byte-level Llama (vocab 260) has as many non-embedding parameters as the BLT's global and
local stacks. Prompts are 256, 1024 and 4096 bytes of the Debian license texts; fp32, 2 threads.

Per-byte decode time is the mean time between consecutive generate() steps after the first (prefill excluded), the
best of `--repeats` rounds in which blt_hf and the Llama take turns.

    python eval/bench_generate.py [--new-bytes 64] [--contexts 256,1024,4096] [--reference-steps 16]

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from eval.common import (  # noqa: E402,E501
    SEPARATORS,
    TRANSFORMERS_BENCH_CONFIG,
    byte_rows,
    emit,
    license_text,
    machine_header,
    print_table,
)

SEPARATOR_IDS = torch.tensor(list(SEPARATORS)) + 4


def space_like_transformers_patcher():
    """Make transformers' BltPatcher see synthetic entropies (10 after a separator byte, else 0)."""
    from transformers.models.blt import modeling_blt as mb

    original = mb.BltPatcher.forward

    def forward(self, input_ids=None, patch_size=None, threshold=None, max_patch_length=None, **kwargs):
        _, _, logits = original(self, input_ids, patch_size=None, threshold=None, max_patch_length=None)
        synthetic = torch.isin(input_ids, SEPARATOR_IDS).float() * 10.0
        lengths = mb.BltPatcher.patch_lengths_from_entropies(synthetic, input_ids.shape[1], patch_size, threshold)
        return synthetic, mb.process_patch_lengths(lengths, max_patch_length), logits

    mb.BltPatcher.forward = forward


def space_like_blt_hf_patcher(patcher):
    """The same synthetic entropies for blt_hf: uniform logits (entropy ln 260) after a separator, peaked otherwise
    (looked up per byte id, so the harness adds one kernel to each decoding step)."""
    real = patcher.next_byte_logits
    vocab = patcher.config.vocab_size
    synthetic = torch.full((vocab, vocab), -100.0)
    synthetic[:, 0] = 0.0
    synthetic[SEPARATOR_IDS] = 0.0

    def next_byte_logits(ids, positions, valid, cache=None, **kwargs):
        logits = real(ids, positions, valid, cache, **kwargs)
        return torch.nn.functional.embedding(ids, synthetic.to(logits.device))

    patcher.next_byte_logits = next_byte_logits


def matched_llama(blt):
    """A byte-level Llama whose non-embedding parameter count is closest to the BLT's global + local stacks."""
    from transformers import LlamaConfig, LlamaForCausalLM

    base = blt.model
    target = sum(p.numel() for m in (base.local_encoder, base.global_transformer, base.local_decoder)
                 for p in m.parameters()) - base.local_encoder.embed_tokens.weight.numel()
    hidden, ffn = 512, 1536
    per_layer = 4 * hidden * hidden + 3 * hidden * ffn + 2 * hidden
    layers = max(1, round(target / per_layer))
    config = LlamaConfig(vocab_size=260, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=16384,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    non_embedding = sum(
        p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n
    )
    return model, target, non_embedding


class StepTimer:
    """A stopping criterion that never stops and records when each decoding step finished."""

    def __init__(self):
        self.times = []

    def __call__(self, input_ids, scores, **kwargs):
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def decode_seconds_per_byte(model, ids, new_tokens, **kwargs):
    """Mean time between consecutive generate() steps after the first (prefill excluded), and the output."""
    from transformers import StoppingCriteriaList

    timer = StepTimer()
    with torch.no_grad():
        output = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                eos_token_id=None, pad_token_id=0, stopping_criteria=StoppingCriteriaList([timer]),
                                **kwargs)
    return (timer.times[-1] - timer.times[0]) / (len(timer.times) - 1), output


def interleaved_best(runs: dict, repeats: int) -> dict:
    """Best (seconds per byte, output) of each named run over `repeats` rounds, the runs taking turns within a
    round, so that a slow spell of this shared machine hits every run alike."""
    best = {}
    for _ in range(repeats):
        for name, run in runs.items():
            seconds, output = run()
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, output)
    return best


def reference_seconds_per_byte(model, ids, steps):
    """transformers' Blt without cache: every byte is a full forward over the prefix (what generate does)."""
    times, current = [], ids
    with torch.no_grad():
        for _ in range(steps):
            start = time.perf_counter()
            logits = model(current, use_cache=False, logits_to_keep=1).logits[:, -1]
            times.append(time.perf_counter() - start)
            current = torch.cat((current, logits.argmax(-1, keepdim=True)), dim=1)
    return min(times), current


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", default="256,1024,4096")
    parser.add_argument("--new-bytes", type=int, default=64)
    parser.add_argument("--reference-steps", type=int, default=16,
                        help="full-recompute steps per context: timed (best is kept) and checked equal to blt_hf")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the batched decode rows")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of each decode measurement (best is kept)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from transformers import BltConfig, BltForCausalLM

    from blt_hf.convert.transformers_blt import from_transformers

    torch.set_num_threads(args.threads)
    space_like_transformers_patcher()
    torch.manual_seed(0)
    reference = BltForCausalLM(BltConfig(**TRANSFORMERS_BENCH_CONFIG)).eval()
    ours = from_transformers(reference).eval()
    ours.config.use_cache = True
    space_like_blt_hf_patcher(ours.model.patcher)
    llama, blt_params, llama_params = matched_llama(ours)
    text = license_text()

    rows, results = [], {}
    for context in [int(c) for c in args.contexts.split(",")]:
        ids = byte_rows(text, 1, context)
        best = interleaved_best({
            "blt_hf": lambda ids=ids: decode_seconds_per_byte(ours, ids, args.new_bytes),
            "llama": lambda ids=ids: decode_seconds_per_byte(llama, ids, args.new_bytes),
        }, args.repeats)
        (ours_s, ours_out), (llama_s, _) = best["blt_hf"], best["llama"]
        ref_s, ref_out = reference_seconds_per_byte(reference, ids, args.reference_steps)
        steps = ref_out.shape[1] - context
        if not torch.equal(ours_out[:, : context + steps], ref_out):
            raise AssertionError(f"context {context}: greedy bytes differ between blt_hf and transformers' Blt")
        result = {
            "blt_hf_ms_per_byte": round(ours_s * 1e3, 2),
            "transformers_nocache_ms_per_byte": round(ref_s * 1e3, 1),
            "llama_kv_ms_per_byte": round(llama_s * 1e3, 2),
            "speedup_vs_transformers": round(ref_s / ours_s, 1),
            "blt_hf_vs_llama_time_ratio": round(ours_s / llama_s, 3),
            "greedy_bytes_checked_equal": steps,
        }
        results[str(context)] = result
        rows.append({"context": context, **result})
    first, last = results[args.contexts.split(",")[0]], results[args.contexts.split(",")[-1]]
    growth = last["blt_hf_ms_per_byte"] / first["blt_hf_ms_per_byte"]

    batch_ids = byte_rows(text, args.batch, 256)

    def patch_local_decode():
        ours.config.decoder_config.patch_local_attention = True
        try:
            return decode_seconds_per_byte(ours, batch_ids, args.new_bytes)
        finally:
            ours.config.decoder_config.patch_local_attention = False

    best = interleaved_best({
        "blt_hf": lambda: decode_seconds_per_byte(ours, batch_ids, args.new_bytes),
        "patch_local": patch_local_decode,
        "llama": lambda: decode_seconds_per_byte(llama, batch_ids, args.new_bytes),
    }, args.repeats)
    batch_s, local_s, llama_batch_s = best["blt_hf"][0], best["patch_local"][0], best["llama"][0]
    batched = {
        "batch": args.batch,
        "blt_hf_bytes_per_s": round(args.batch / batch_s, 1),
        "blt_hf_patch_local_decoder_bytes_per_s": round(args.batch / local_s, 1),
        "llama_kv_bytes_per_s": round(args.batch / llama_batch_s, 1),
    }
    print_table(rows, ["context", "blt_hf_ms_per_byte", "transformers_nocache_ms_per_byte", "llama_kv_ms_per_byte",
                       "speedup_vs_transformers", "blt_hf_vs_llama_time_ratio"])
    print(f"time per byte at {last and args.contexts.split(',')[-1]} / at {args.contexts.split(',')[0]}: {growth:.2f}")
    print(f"batch {args.batch}: {batched}")
    print(f"non-embedding parameters: BLT global + local {blt_params / 1e6:.2f}M, Llama {llama_params / 1e6:.2f}M")
    emit({
        "benchmark": "generate", **machine_header(), "new_bytes": args.new_bytes, "contexts": results,
        "time_per_byte_growth_last_vs_first": round(growth, 3), "batched": batched,
        "blt_non_embedding_params": blt_params, "llama_non_embedding_params": llama_params,
        "targets": {"speedup_vs_transformers_at_4096": 100, "growth_max": 1.5, "vs_llama_time_ratio_max": 1.0},
    })


if __name__ == "__main__":
    main()
