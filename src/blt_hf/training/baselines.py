"""The byte-level Llama baseline: transformers' `LlamaForCausalLM` over blt_hf's byte ids (vocabulary 260).

It trains on the same packed rows as a BLT (`blt_hf.training.data`) and is scored by the same `bits_per_byte`.
Packed rows carry `position_ids` that restart at every document; the model then keeps documents apart exactly as
BLT does (transformers builds a block-causal mask from the restarts when no 2D padding mask is given). Saved folders are
plain Llama checkpoints: `LlamaForCausalLM.from_pretrained` loads them.
"""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM

from ..configuration_blt_hf import BOE_ID, BOS_ID, BYTE_VOCAB_SIZE, EOS_ID

BYTE_LLAMA_PRESETS = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
    # the "small" BLT's global transformer, run on every byte
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=768),
}


def byte_llama_config(preset: str = "small", max_position_embeddings: int = 8192, **overrides) -> LlamaConfig:
    """A Llama over byte ids: vocabulary 260, blt_hf's BOS/EOS/pad ids, untied input and output embeddings."""
    if preset not in BYTE_LLAMA_PRESETS:
        raise ValueError(f"unknown byte-Llama preset {preset!r}; choose from {sorted(BYTE_LLAMA_PRESETS)}")
    values = dict(
        vocab_size=BYTE_VOCAB_SIZE, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=BOE_ID,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=False, rope_theta=10000.0,
        **BYTE_LLAMA_PRESETS[preset],
    )
    values.update(overrides)
    values.setdefault("num_key_value_heads", values["num_attention_heads"])
    return LlamaConfig(**values)


class ByteLlamaForCausalLM(LlamaForCausalLM):
    """`LlamaForCausalLM` that takes BLT training batches: `patch_lengths` is ignored, and packed rows (no cache,
    `position_ids` given) attend within their own documents."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                patch_lengths=None, **kwargs):
        if position_ids is not None and past_key_values is None and attention_mask is not None \
                and attention_mask.dim() == 2:
            # trailing padding becomes one-token documents after every real byte: nothing real attends to it;
            # no cache either (transformers detects packed documents only without one)
            attention_mask, kwargs["use_cache"] = None, False
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               past_key_values=past_key_values, **kwargs)


__all__ = ["BYTE_LLAMA_PRESETS", "ByteLlamaForCausalLM", "byte_llama_config"]
