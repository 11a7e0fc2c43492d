"""Shared helpers: tiny configs, random models with non-trivial weights, texts and threshold picking."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BltConfig, BltForCausalLM

from blt_hf import BLTConfig, BLTForCausalLM


def perturb_norms(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Norm weights start at 1: make them random so that a mis-wired norm cannot agree by accident."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn(param.shape, generator=generator) * scale)
    return model


def tiny_hf_config(
    window: int = 512,
    cross_attn_k: int = 2,
    global_hidden: int = 64,
    global_heads: int = 4,
    global_kv_heads: int | None = None,
    local_kv_heads: int | None = None,
    encoder_layers: int = 1,
    decoder_layers: int = 2,
    encoder_cross_all: bool = False,
    decoder_cross_all: bool = True,
    hash_sizes=(3, 4, 5, 6, 7, 8),
    hash_functions: int = 1,
    threshold: float = 1.335442066192627,
    patch_in_forward: bool = True,
) -> BltConfig:
    """A transformers `BltConfig` at toy size (local width 32)."""
    local = dict(
        vocab_size=260, hidden_size=32, num_attention_heads=4, num_key_value_heads=local_kv_heads,
        intermediate_size=64, max_position_embeddings=4096, cross_attn_k=cross_attn_k,
        hidden_size_global=global_hidden,
    )
    return BltConfig(
        vocab_size=260, max_position_embeddings=4096, patch_in_forward=patch_in_forward, patch_size=4,
        patching_mode="entropy", patching_threshold=threshold, max_patch_length=None, cross_attn_k=cross_attn_k,
        local_attention_window_len=window, encoder_hash_byte_group_size=list(hash_sizes),
        encoder_hash_byte_group_vocab=97, encoder_hash_byte_group_nb_functions=hash_functions,
        patcher_config=dict(
            vocab_size=260, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=4096, sliding_window=window,
        ),
        encoder_config=dict(local, num_hidden_layers=encoder_layers, cross_attn_all_layers=encoder_cross_all),
        decoder_config=dict(local, num_hidden_layers=decoder_layers, cross_attn_all_layers=decoder_cross_all),
        global_config=dict(
            hidden_size=global_hidden, num_hidden_layers=2, num_attention_heads=global_heads,
            num_key_value_heads=global_kv_heads, intermediate_size=96, max_position_embeddings=4096,
        ),
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, use_cache=False,
    )


def tiny_hf_model(config: BltConfig, seed: int = 0) -> BltForCausalLM:
    torch.manual_seed(seed)
    return perturb_norms(BltForCausalLM(config), seed).eval()


def tiny_config(**overrides) -> BLTConfig:
    """A blt_hf config at toy size; keyword overrides are top-level fields or `<stack>_config` dicts to merge."""
    stacks = {
        "patcher_config": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                               sliding_window=24),
        "encoder_config": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                               sliding_window=24),
        "global_config": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96),
        "decoder_config": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                               sliding_window=24),
    }
    for name in stacks:
        stacks[name].update(overrides.pop(name, {}))
    values = dict(encoder_hash_byte_group_vocab=97, max_position_embeddings=100_000, patching_threshold=4.0)
    values.update(overrides)
    return BLTConfig(**stacks, **values)


def tiny_model(seed: int = 0, **overrides) -> BLTForCausalLM:
    torch.manual_seed(seed)
    return perturb_norms(BLTForCausalLM(tiny_config(**overrides)), seed).eval()


def random_ids(length: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """BOS followed by random bytes (ids 4..259)."""
    generator = torch.Generator().manual_seed(seed)
    body = torch.randint(4, 260, (batch, max(length - 1, 0)), generator=generator)
    return torch.cat((torch.ones(batch, 1, dtype=torch.long), body), dim=1)[:, :length]


def text_ids(text: str, batch: int = 1) -> torch.Tensor:
    return torch.tensor([[1] + [b + 4 for b in text.encode("utf-8")]] * batch)


def separated_threshold(entropies: torch.Tensor, quantile: float = 0.5) -> float:
    """A threshold near the given quantile of the entropies, in the middle of a gap between two of them, so that
    float noise (~1e-6) between implementations cannot flip a boundary."""
    values = entropies.flatten().double().sort().values
    if values.numel() < 2:
        return float(values.mean()) if values.numel() else 1.0
    gaps = values[1:] - values[:-1]
    target = int(quantile * (values.numel() - 1))
    lo, hi = max(0, target - values.numel() // 8), min(gaps.numel(), target + values.numel() // 8 + 1)
    best = lo + int(gaps[lo:hi].argmax())
    return float((values[best] + values[best + 1]) / 2)


# patching variants beyond the four plain modes: name -> config overrides
PATCHING_VARIANTS = {
    "entropy": dict(patching_mode="entropy"),
    "monotonic": dict(patching_mode="entropy", monotonicity=True),
    "combined": dict(patching_mode="entropy"),  # patching_threshold_add set by calibrate_patching
    "entropy_max2": dict(patching_mode="entropy", max_patch_length=2),
    "static": dict(patching_mode="static", patch_size=3),
    "space": dict(patching_mode="space"),
    "space_max3": dict(patching_mode="space", max_patch_length=3),
    "byte": dict(patching_mode="byte"),
    "boundary": dict(patching_mode="boundary", patcher_config=dict(boundary_head=True)),
}


def calibrate_patching(model, variant: str, rows, entropy_quantile: float = 0.5, rise_quantile: float = 0.7) -> None:
    """Set the entropy thresholds of `variant` between two of the patcher's entropies (or rises) on `rows`
    (1-D id tensors): near `entropy_quantile` of the entropies, or near `rise_quantile` of the rises for the
    monotonic rule; the combined rule uses the 0.3 and 0.5 quantiles."""
    with torch.no_grad():
        if variant == "boundary":  # the boundary head's logits take the entropies' place
            logits = torch.cat([model.model.patcher(r[None]).boundary_logits[0, 1:] for r in rows])
            model.config.patching_threshold = separated_threshold(logits, entropy_quantile)
            return
        entropies = [model.model.patcher(r[None]).entropies[0, 1:] for r in rows]
    rises = torch.cat([e[1:] - e[:-1] for e in entropies])
    entropies = torch.cat(entropies)
    if variant == "monotonic":
        model.config.patching_threshold = separated_threshold(rises, rise_quantile)
    elif variant == "combined":
        model.config.patching_threshold = separated_threshold(entropies, 0.3)
        model.config.patching_threshold_add = separated_threshold(rises, 0.5)
    else:
        model.config.patching_threshold = separated_threshold(entropies, entropy_quantile)


def fail_after_the_weights(self, folder, *args, **kwargs):
    """A `save_pretrained` replacement (patch it onto the tokenizer) that fails once the weights are on disk."""
    assert (Path(folder) / "model.safetensors").is_file()  # the model is already written: fail midway
    raise OSError("disk full")
