"""Named model sizes for `blt-hf train` / `train-entropy` (anything else: a config JSON)."""

from __future__ import annotations

from ..configuration_blt_hf import BLTConfig, BLTPatcherConfig


def _local(hidden, heads, layers, window):
    return dict(hidden_size=hidden, num_attention_heads=heads, num_hidden_layers=layers, intermediate_size=None,
                sliding_window=window)


PATCHER_PRESETS = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, sliding_window=64),
    "small": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=None,
                  sliding_window=256),
    "base": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=768,
                 sliding_window=512),
}

BLT_PRESETS = {
    "tiny": dict(
        encoder_hash_byte_group_vocab=97, cross_attn_k=2, max_position_embeddings=65536,
        encoder_config=_local(32, 2, 1, 64), decoder_config=_local(32, 2, 2, 64),
        global_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
    ),
    # a few million non-embedding parameters: trains on 2 CPU cores in hours
    "small": dict(
        encoder_hash_byte_group_vocab=8192, cross_attn_k=2, max_position_embeddings=65536,
        encoder_config=_local(128, 4, 1, 256), decoder_config=_local(128, 4, 3, 256),
        global_config=dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=768),
    ),
    # transformers' 70M benchmark shape
    "bench70m": dict(
        encoder_hash_byte_group_vocab=30000, cross_attn_k=2, max_position_embeddings=65536,
        encoder_config=dict(_local(256, 4, 2, 512), intermediate_size=768),
        decoder_config=dict(_local(256, 4, 4, 512), intermediate_size=768),
        global_config=dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, intermediate_size=1536),
    ),
}


def blt_config(preset: str, patcher: str | dict | None = None, **overrides) -> BLTConfig:
    if preset not in BLT_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(BLT_PRESETS)} or give a config JSON")
    values = dict(BLT_PRESETS[preset])
    patcher_values = PATCHER_PRESETS.get(patcher, patcher) if patcher is not None else PATCHER_PRESETS.get(preset)
    if patcher_values is not None:
        values["patcher_config"] = patcher_values
    values.update(overrides)
    return BLTConfig(**values)


def patcher_config(preset: str, **overrides) -> BLTPatcherConfig:
    if preset not in PATCHER_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PATCHER_PRESETS)} or give a config JSON")
    return BLTPatcherConfig(**{**PATCHER_PRESETS[preset], **overrides})
