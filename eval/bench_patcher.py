"""Patching throughput: entropy patching vs the plain batched forward of the same entropy model.

A 4-layer 256-d entropy model (window 512, random weights, fp32, 2 threads) over at least 5 MB of real text (the
Python standard library's sources, present on every machine), in rows of 8192 bytes. For every batch the plain
forward (next-byte logits only) and the full patching (forward, entropies, the patch rule, patch lengths) are timed
back to back, so machine noise hits both alike. Target: patching adds less than 10% over the forward.

    python eval/bench_patcher.py [--megabytes 5] [--row-bytes 8192] [--batch 4]

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from eval.common import emit, machine_header, print_table, stdlib_text  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=5.0)
    parser.add_argument("--row-bytes", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from blt_hf import BLTPatcher, BLTPatcherConfig, PatchingRule, compute_patch_lengths
    from blt_hf.patching import entropy_from_logits

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = BLTPatcherConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=768,
                              sliding_window=512)
    patcher = BLTPatcher(config).eval()
    body = args.row_bytes - 1
    wanted = -(-int(args.megabytes * 1e6) // body) * body  # whole rows, at least --megabytes of text
    text = stdlib_text(wanted)[:wanted]
    if len(text) < wanted:
        raise SystemExit(f"only {len(text)} bytes of text found, {wanted} wanted")
    rows = torch.tensor(list(text), dtype=torch.long).view(-1, body) + 4
    ids = torch.cat((torch.ones(rows.shape[0], 1, dtype=torch.long), rows), dim=1)
    with torch.no_grad():
        sample = entropy_from_logits(patcher(ids[:1]).logits)[0, 1:]
    rule = PatchingRule(threshold=float(sample.median()))  # random weights: a median threshold gives real patches

    forward_s = patching_s = 0.0
    patches = 0
    with torch.no_grad():
        for start in range(0, ids.shape[0], args.batch):
            batch = ids[start : start + args.batch]
            valid = torch.ones_like(batch, dtype=torch.bool)
            positions = torch.arange(batch.shape[1]).expand(batch.shape[0], -1)
            begin = time.perf_counter()
            patcher.next_byte_logits(batch, positions, valid)
            forward_s += time.perf_counter() - begin
            begin = time.perf_counter()
            lengths, _ = compute_patch_lengths(batch, None, rule, patcher)
            patching_s += time.perf_counter() - begin
            patches += int((lengths > 0).sum())
    total = ids.numel()
    overhead = patching_s / forward_s - 1
    rows_out = [
        {"what": "plain forward (logits)", "seconds": round(forward_s, 2), "bytes_per_s": round(total / forward_s)},
        {"what": "entropy patching", "seconds": round(patching_s, 2), "bytes_per_s": round(total / patching_s)},
    ]
    print_table(rows_out, ["what", "seconds", "bytes_per_s"])
    print(f"{total} bytes, {patches} patches ({total / patches:.2f} bytes/patch); patching overhead {overhead:+.1%}")
    emit({
        "benchmark": "patcher", **machine_header(), "bytes": total, "row_bytes": args.row_bytes,
        "forward_bytes_per_s": round(total / forward_s, 1), "patching_bytes_per_s": round(total / patching_s, 1),
        "overhead": round(overhead, 4), "target_overhead_below": 0.10, "bytes_per_patch": round(total / patches, 3),
    })


if __name__ == "__main__":
    main()
