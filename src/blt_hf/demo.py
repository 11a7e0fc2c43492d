"""`make demo`: build a BLT, patch a text in every mode, compute a loss and generate with the cache.

No trained checkpoint ships yet, so the model has random weights (its entropies are near uniform; the threshold
is calibrated on the text so that patches have about 4 bytes). Run: python -m blt_hf.demo [--plot demo_patches.png]
"""

from __future__ import annotations

import argparse
import time

import torch

from .cli import _show, patch_report, plot_report
from .configuration_blt_hf import BLTConfig
from .modeling_blt_hf import BLTForCausalLM
from .tokenization_blt_hf import BLTTokenizer

TEXT = (
    "Byte Latent Transformers read raw bytes. A small entropy model predicts each next byte; "
    "where it is unsure, a new patch starts, so compute goes where the data is hard."
)


def demo_config(**overrides) -> BLTConfig:
    local = dict(hidden_size=128, num_attention_heads=4, intermediate_size=384, sliding_window=128)
    values = dict(
        encoder_hash_byte_group_vocab=4096,
        max_position_embeddings=65536,
        patcher_config=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=384,
                            sliding_window=128),
        encoder_config=dict(local, num_hidden_layers=1),
        global_config=dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=768),
        decoder_config=dict(local, num_hidden_layers=2),
    )
    values.update(overrides)
    return BLTConfig(**values)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plot", default="demo_patches.png", help="where to write the entropy plot")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = BLTForCausalLM(demo_config()).eval()
    tokenizer = BLTTokenizer().attach_model(model)
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]

    with torch.no_grad():
        entropies = model.model.patcher(ids).entropies[0, 1:]
    model.config.patching_threshold = float(entropies.quantile(0.75))  # about one start in four bytes
    print(f"BLT with {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters (random weights)\n")
    for mode, extra in [("entropy", {}), ("space", {}), ("static", {"patch_size": 4})]:
        model.config.patching_mode = mode
        for key, value in extra.items():
            setattr(model.config, key, value)
        report = patch_report(model, TEXT)
        print(f"--- {mode} patching ---")
        print(_show(report).splitlines()[0])
        print(_show(report).splitlines()[1] + "\n")
        if mode == "entropy":
            plot_report(report, args.plot)
    model.config.patching_mode = "entropy"

    batch = tokenizer(TEXT, return_tensors="pt", return_patch_lengths=True)
    with torch.no_grad():
        out = model(batch["input_ids"], patch_lengths=batch["patch_lengths"], labels=batch["input_ids"])
    print(f"loss {out.loss.item():.3f} nats/byte = {out.loss.item() / 0.6931:.3f} bits/byte "
          f"(uniform over 256 bytes: 8 bits)")

    prompt = tokenizer("A BLT has", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        start = time.perf_counter()
        cached = model.generate(prompt, max_new_tokens=64, do_sample=False, eos_token_id=None)
        cached_s = time.perf_counter() - start
        start = time.perf_counter()
        uncached = model.generate(prompt, max_new_tokens=64, do_sample=False, eos_token_id=None, use_cache=False)
        uncached_s = time.perf_counter() - start
    assert torch.equal(cached, uncached), "cached generation must equal full recomputation"
    print(f"generated 64 bytes: cached {64 / cached_s:.0f} bytes/s, full recompute {64 / uncached_s:.0f} bytes/s, "
          "identical output")
    print(f"entropy plot written to {args.plot}")


if __name__ == "__main__":
    main()
