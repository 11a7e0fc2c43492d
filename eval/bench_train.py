"""Training-step throughput: blt_hf vs transformers' Blt on the same weights and the same patches.

The 70M benchmark configuration (shared/reference/transformers-blt.md), random weights built by transformers and
converted into blt_hf, fp32 on CPU with 2 threads. Both models get identical `patch_lengths` (space-like patches of
the Debian license texts) and the same labels; the losses are asserted equal. blt_hf also runs with activation
checkpointing (`activation_checkpointing_enable()`), the memory-lean setting. Each (implementation, shape) runs
in its own process so that peak memory is measured cleanly.

    python eval/bench_train.py                      # batch 4 x 1024 and 1 x 8192
    python eval/bench_train.py --shapes 2x512 --steps 2

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from eval.common import (  # noqa: E402
    TRANSFORMERS_BENCH_CONFIG,
    MemorySampler,
    byte_rows,
    emit,
    license_text,
    machine_header,
    matmul_gflops,
    print_table,
    run_worker,
    space_like_patch_lengths,
)


def worker(impl: str, batch: int, length: int, steps: int, threads: int) -> dict:
    from transformers import BltConfig, BltForCausalLM

    from blt_hf.convert.transformers_blt import from_transformers

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    reference = BltForCausalLM(BltConfig(**TRANSFORMERS_BENCH_CONFIG))
    model = reference if impl == "transformers" else from_transformers(reference)
    del reference
    if impl == "blt_hf_checkpointed":  # activation checkpointing: layer inputs kept, the rest recomputed
        model.activation_checkpointing_enable()
    model.train()
    ids = byte_rows(license_text(), batch, length)
    patch_lengths = space_like_patch_lengths(ids)
    times, loss = [], None
    with MemorySampler() as memory:
        for _ in range(steps + 1):
            start = time.perf_counter()
            out = model(ids, patch_lengths=patch_lengths, labels=ids, use_cache=False)
            out.loss.backward()
            model.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
            loss = out.loss.item() if loss is None else loss
            del out
    best = min(times[1:]) if steps else times[0]
    from blt_hf.convert.transformers_blt import config_from_transformers
    from blt_hf.evaluation.flops import realised_flops

    config = config_from_transformers(BltConfig(**TRANSFORMERS_BENCH_CONFIG))
    train_flops = 3 * realised_flops(config, patch_lengths)["flops"]["total"]  # forward + backward
    return {
        "train_flops_per_byte": round(train_flops / (batch * length)),
        "impl": impl,
        "shape": f"{batch}x{length}",
        "fwd_bwd_s": round(best, 4),
        "bytes_per_s": round(batch * length / best, 1),
        "model_rss_mb": round(memory.start_mb, 1),
        "step_peak_extra_mb": round(memory.extra_mb, 1),
        "loss": loss,
        "mean_patch_bytes": round(float((patch_lengths > 0).sum(1).float().reciprocal().mul(length + 1).mean()), 3),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="4x1024,1x8192", help="comma-separated BATCHxLENGTH")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step (min is reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "BATCH", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, batch, length = args.worker
        emit(worker(impl, int(batch), int(length), args.steps, args.threads))
        return

    torch.set_num_threads(args.threads)
    peak_before = matmul_gflops()
    rows, comparisons = [], {}
    for shape in args.shapes.split(","):
        batch, length = shape.split("x")
        pair = {}
        for impl in ("blt_hf", "blt_hf_checkpointed", "transformers"):
            extra = ["--steps", str(args.steps), "--threads", str(args.threads)]
            pair[impl] = run_worker(__file__, [impl, batch, length, *extra])
            rows.append(pair[impl])
        peak = max(peak_before, matmul_gflops())
        ours, checkpointed, ref = pair["blt_hf"], pair["blt_hf_checkpointed"], pair["transformers"]
        for name, result in (("blt_hf", ours), ("blt_hf_checkpointed", checkpointed)):
            if abs(result["loss"] - ref["loss"]) > 1e-4:
                raise AssertionError(f"{shape}: loss {result['loss']} ({name}) != {ref['loss']} (transformers)")
        for result in pair.values():
            result["mfu"] = round(result["train_flops_per_byte"] * result["bytes_per_s"] / 1e9 / peak, 4)
        comparisons[shape] = {
            "speedup": round(ours["bytes_per_s"] / ref["bytes_per_s"], 2),
            "blt_hf_mfu": ours["mfu"],
            "transformers_mfu": ref["mfu"],
            "train_gflops_per_byte": round(ours["train_flops_per_byte"] / 1e9, 4),
            "step_memory_ratio": round(ref["step_peak_extra_mb"] / max(ours["step_peak_extra_mb"], 1), 2),
            "blt_hf_bytes_per_s": ours["bytes_per_s"],
            "transformers_bytes_per_s": ref["bytes_per_s"],
            "blt_hf_step_peak_extra_mb": ours["step_peak_extra_mb"],
            "transformers_step_peak_extra_mb": ref["step_peak_extra_mb"],
            "checkpointed_speedup": round(checkpointed["bytes_per_s"] / ref["bytes_per_s"], 2),
            "checkpointed_step_memory_ratio": round(
                ref["step_peak_extra_mb"] / max(checkpointed["step_peak_extra_mb"], 1), 2),
            "blt_hf_checkpointed_bytes_per_s": checkpointed["bytes_per_s"],
            "blt_hf_checkpointed_step_peak_extra_mb": checkpointed["step_peak_extra_mb"],
            "loss": ours["loss"],
        }
    print_table(rows, ["impl", "shape", "fwd_bwd_s", "bytes_per_s", "mfu", "model_rss_mb", "step_peak_extra_mb",
                       "loss", "mean_patch_bytes"])
    print(f"model FLOP utilisation against the measured fp32 matmul peak of {peak:.0f} GFLOP/s (1024^3, 2 threads)")
    emit({"benchmark": "train", **machine_header(), "matmul_peak_gflops": round(peak, 1), "results": comparisons})


if __name__ == "__main__":
    main()
