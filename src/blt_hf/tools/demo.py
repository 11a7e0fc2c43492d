"""`make demo`: the shipped default model (models/blt-hf-small-en), end to end on a fresh machine.

Loads it with `from_pretrained`, splits a text into entropy patches (printed with per-byte entropies, plotted to a
PNG), generates a continuation with the cached generator (and checks it against full recomputation), and measures
held-out bits per byte and decode speed.

    python -m blt_hf.tools.demo [--model DIR] [--plot demo_patches.png] [--text "..."]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .reports import DEFAULT_MODEL, REPO

HELD_OUT_SAMPLE = REPO / "tests" / "data" / "heldout_sample.txt"
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"
PROMPT = "The President said that the nation"


def _generate(model, ids, new_bytes: int, **options):
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_bytes, min_new_tokens=new_bytes, eos_token_id=None, **options)
    return out, new_bytes / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="a blt_hf checkpoint folder")
    parser.add_argument("--plot", default="demo_patches.png", help="where to write the entropy plot")
    parser.add_argument("--text", default=TEXT, help="text to split into patches")
    parser.add_argument("--prompt", default=PROMPT, help="prompt to continue")
    args = parser.parse_args(argv)
    folder = Path(args.model)
    if not (folder / "config.json").is_file():
        raise SystemExit(f"no blt_hf checkpoint at {folder} (give --model DIR)")
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import blt_hf  # noqa: F401  (registers the classes with the Auto API)

    from ..evaluation.metrics import evaluate_bits_per_byte
    from .reports import patch_report, plot_report, show_report

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = model.config
    print(f"{folder.name}: {type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"parameters; {config.patching_mode} patching, threshold {config.patching_threshold:.3f} nats\n")

    report = patch_report(model, args.text)
    print("--- patches (entropy model's next-byte entropy; a patch starts where it exceeds the threshold) ---")
    print(show_report(report) + "\n")
    plot_report(report, args.plot)

    ids = tokenizer(args.prompt, return_tensors="pt")["input_ids"]
    sampled, _ = _generate(model, ids, 160, do_sample=True, top_p=0.9, temperature=0.8)
    print("--- sampled continuation (cached generation, top-p 0.9, temperature 0.8) ---")
    print(tokenizer.decode(sampled[0], skip_special_tokens=True) + "\n")

    cached, cached_speed = _generate(model, ids, 256, do_sample=False)
    uncached, uncached_speed = _generate(model, ids, 64, do_sample=False, use_cache=False)
    same = torch.equal(cached[:, : uncached.shape[1]], uncached)
    print(f"greedy decoding: cached {cached_speed:.0f} bytes/s (256 bytes), full recomputation "
          f"{uncached_speed:.0f} bytes/s (64 bytes); first 64 bytes identical: {same}")
    if not same:
        raise SystemExit("cached generation differs from full recomputation")

    if HELD_OUT_SAMPLE.is_file():
        result = evaluate_bits_per_byte(str(folder), [str(HELD_OUT_SAMPLE)], row_length=1024)
        recorded = folder / "training_results.json"
        note = ""
        if recorded.is_file():
            trained = json.loads(recorded.read_text())
            note = (f" (measured at training time: {trained['sample_bits_per_byte']:.4f}; whole held-out set "
                    f"{trained['heldout_bits_per_byte']:.4f})")
        print(f"held-out bits per byte on {HELD_OUT_SAMPLE.name} ({result['bytes']} bytes): "
              f"{result['bits_per_byte']:.4f}{note}; {result['bytes_per_patch']:.2f} bytes per patch")
    print(f"entropy plot written to {args.plot}")


if __name__ == "__main__":
    main()
