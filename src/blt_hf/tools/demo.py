"""`make demo`, second part: the small BLT trained from scratch (models/blt-hf-small-en), end to end.

Loads it with `from_pretrained`, splits a text into entropy patches (printed with per-byte entropies, plotted to a
PNG), generates a continuation with the cached generator (and checks it against full recomputation), and measures
held-out bits per byte and decode speed.

    python -m blt_hf.tools.demo [--model DIR] [--plot demo_patches.png] [--text "..."]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from .reports import REPO, SMALL_MODEL

HELD_OUT_SAMPLE = REPO / "tests" / "data" / "heldout_sample.txt"
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"
PROMPT = "The President said that the nation"
SHIPPED_SUMMARY = REPO / "eval" / "results" / "shipped" / "summary.json"
RELEASED_THRESHOLD = 1.335442066192627  # Meta's released 7B BLT's entropy model (the BLTConfig default)


def cut_at_word_boundary(text: str) -> str:
    """`text` up to its last space or line break (all of it when it has none)."""
    cut = max(text.rfind(" "), text.rfind("\n"))
    return text[:cut].rstrip() if cut > 0 else text


def speed_context(measured: float, threads: int, shipped: bool) -> str:
    """The demo's decode speed beside the machine's load and, for the shipped model, its recorded benchmark."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    line = (f"cached greedy decoding: {measured:.0f} bytes/s (256 bytes, batch 1, {threads} threads; load average "
            f"{load:.1f} over the last minute on {os.cpu_count()} cores: other work on the machine slows this)")
    if shipped and SHIPPED_SUMMARY.is_file():
        recorded = json.loads(SHIPPED_SUMMARY.read_text())["runs"]["blt-entropy"]["decode_bytes_per_s"]
        line += (f"\n  compare: this model (blt-entropy) decoded {recorded:.0f} bytes/s when it was shipped "
                 f"(512 bytes, batch 1, 2 threads; {SHIPPED_SUMMARY.relative_to(REPO)}, README's Default model table)")
    return line


def _generate(model, ids, new_bytes: int, **options):
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_bytes, min_new_tokens=new_bytes, eos_token_id=None, **options)
    return out, new_bytes / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SMALL_MODEL), help="a blt_hf checkpoint folder")
    parser.add_argument("--plot", default="demo_patches.png", help="where to write the entropy plot")
    parser.add_argument("--text", default=TEXT, help="text to split into patches")
    parser.add_argument("--prompt", default=PROMPT, help="prompt to continue")
    args = parser.parse_args(argv)
    folder = Path(args.model)
    if not (folder / "config.json").is_file():
        raise SystemExit(f"no blt_hf checkpoint at {folder} (give --model DIR)")
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    from datasets import disable_progress_bars as disable_dataset_progress_bars
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    import blt_hf  # noqa: F401  (registers the classes with the Auto API)

    transformers_logging.disable_progress_bar()  # no "Loading weights" bar on every load
    disable_dataset_progress_bars()  # nor the held-out measurement's packing / patching bars

    from ..evaluation.metrics import evaluate_bits_per_byte
    from .reports import patch_report, plot_report, show_report

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = model.config
    threshold = config.patching_threshold
    print(f"{folder.name}: {type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"parameters; {config.patching_mode} patching by its own entropy model at threshold {threshold:.3f} nats\n"
          f"  (this checkpoint's own; README's {RELEASED_THRESHOLD:.4f} nats belongs to the entropy model of "
          f"Meta's released 7B BLT)\n")

    report = patch_report(model, args.text)
    print("--- patches (entropy model's next-byte entropy; a patch starts where it exceeds the threshold) ---")
    print(show_report(report) + "\n")
    plot_report(report, args.plot)

    ids = tokenizer(args.prompt, return_tensors="pt")["input_ids"]
    sampled, _ = _generate(model, ids, 160, do_sample=True, top_p=0.9, temperature=0.8)
    continuation = cut_at_word_boundary(tokenizer.decode(sampled[0, ids.shape[1] :], skip_special_tokens=True))
    print("--- sampled continuation (cached generation, top-p 0.9, temperature 0.8; 160 bytes sampled, shown up "
          "to the last word boundary) ---")
    print(f'prompt:        "{args.prompt}"')
    print(f'continuation:  "{continuation}"\n')

    cached, cached_speed = _generate(model, ids, 256, do_sample=False)
    uncached, uncached_speed = _generate(model, ids, 64, do_sample=False, use_cache=False)
    same = torch.equal(cached[:, : uncached.shape[1]], uncached)
    print(speed_context(cached_speed, torch.get_num_threads(), folder.resolve() == SMALL_MODEL.resolve()))
    print(f"full recomputation (no cache): {uncached_speed:.0f} bytes/s (64 bytes); first 64 greedy bytes identical "
          f"to cached decoding: {same}")
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
