"""Local decoder: bytes read the global state of the patch before their target's patch, then predict next bytes.

Before each layer (or only the first), every byte cross-attends to the k slots of one patch state; then windowed
self-attention over bytes (optionally only within the bytes decoded from the same patch: the Block Transformer's
block-local decoder). A final RMSNorm; the byte head is `BLTForCausalLM.lm_head`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_blt_hf import BLTLocalDecoderConfig
from .decoding import fast_layer_step, fused_layers_eligible, read_slots
from .layers import BLTCrossAttention, BLTRMSNorm, BLTRotaryEmbedding, BLTTransformerLayer, project


class BLTLocalDecoder(nn.Module):
    def __init__(self, config: BLTLocalDecoderConfig, global_hidden_size: int, cross_attn_k: int):
        super().__init__()
        self.config, self.cross_attn_k = config, cross_attn_k
        self.layers = nn.ModuleList(
            BLTTransformerLayer.from_config(config, i) for i in range(config.num_hidden_layers)
        )
        self.rotary_emb = BLTRotaryEmbedding(config)
        self.patch_embedding_projection = nn.Linear(global_hidden_size, config.hidden_size * cross_attn_k, bias=False)
        self.norm = BLTRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        num_cross = config.num_hidden_layers if config.cross_attn_all_layers else 1
        self.cross_attn_layers = BLTCrossAttention.for_layers(config, num_cross)

    def patch_keys_values(self, patch_states: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Global patch states [B, P, d_global] -> per cross-attention layer, keys and values [B, P, k, H, D]."""
        slots = project(self.patch_embedding_projection, patch_states)
        slots = slots.view(*slots.shape[:2], self.cross_attn_k, self.config.hidden_size)
        return [cross_attention(slots, mode="patch_keys_values") for cross_attention in self.cross_attn_layers]

    def patch_table(self, current_patch_kv, new_patch_kv, batch: int, device, dtype):
        """Per cross-attention layer, keys/values [B, 1 + m, k, H, D] of [the current patch (zeros before any patch
        closed), the m patches closed now (`patch_keys_values`, or None)]."""
        if current_patch_kv is None:
            layer = self.cross_attn_layers[0]
            shape = (batch, 1, self.cross_attn_k, layer.num_heads, layer.head_dim)
            zeros = torch.zeros(shape, device=device, dtype=dtype)
            current_patch_kv = [(zeros, zeros)] * len(self.cross_attn_layers)
        if new_patch_kv is None:
            return current_patch_kv
        return [
            (torch.cat((ck, nk), 1), torch.cat((cv, nv), 1))
            for (ck, cv), (nk, nv) in zip(current_patch_kv, new_patch_kv, strict=True)
        ]

    def forward(self, byte_states, positions, attention_plan, patch_kv, byte_patch, output_hidden_states=False,
                slot_readouts=None):
        """byte_states [B, n, d] (the encoder's); byte_patch [B, n] indexes the patches of `patch_kv`.
        slot_readouts (one byte per row, no autograd): `decoding.slot_readouts` of `patch_kv`, read instead of it.

        Returns normed states [B, n, d] (and every layer's output if asked).
        """
        hidden = F.dropout(byte_states, p=self.config.dropout, training=self.training)
        rotations = self.rotary_emb(positions)
        all_states = [hidden] if output_hidden_states else None
        fast = fused_layers_eligible(hidden, attention_plan.cache)
        for idx, layer in enumerate(self.layers):
            if idx < len(self.cross_attn_layers) and slot_readouts is not None:
                hidden = read_slots(hidden, slot_readouts[idx])
            elif idx < len(self.cross_attn_layers):
                keys, values = patch_kv[idx]
                # the module returns attention + bytes; adding the bytes again is the released residual
                cross_attention = self.cross_attn_layers[idx]
                hidden = hidden + cross_attention(hidden, keys, values, byte_patch, mode="bytes_from_patches")
            if fast:
                hidden = fast_layer_step(layer, hidden, rotations, attention_plan)
            else:
                hidden = layer(hidden, rotations, attention_plan)
            if output_hidden_states:
                all_states.append(hidden)
        return self.norm(hidden), all_states
