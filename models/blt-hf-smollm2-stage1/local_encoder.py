"""Local encoder: byte states from byte + hash n-gram embeddings, then patch vectors by cross-attention pooling.

Each patch starts as the max-pool of its bytes' states, projected to `cross_attn_k` query slots; the slots then
cross-attend to the bytes of their own patch (after the last layer, or after every layer). The patch vector handed
to the global transformer is the k slots concatenated: [B, P, k * d].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_blt_hf import BLTLocalEncoderConfig
from .decoding import fast_layer_step, fused_layers_eligible
from .layers import BLTCrossAttention, BLTRotaryEmbedding, BLTTransformerLayer, project


def max_pool_patches(byte_states: torch.Tensor, byte_patch: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Max over the bytes of each patch: [B, L, d] -> [B, P, d]; byte_patch == P drops a byte; empty patches are 0."""
    index = byte_patch[..., None].expand_as(byte_states)
    pooled = byte_states.new_zeros(byte_states.shape[0], num_patches + 1, byte_states.shape[-1])
    pooled = pooled.scatter_reduce(1, index, byte_states, reduce="amax", include_self=False)
    return pooled[:, :num_patches]


class BLTLocalEncoder(nn.Module):
    def __init__(self, config: BLTLocalEncoderConfig, vocab_size: int, cross_attn_k: int):
        super().__init__()
        self.config, self.cross_attn_k = config, cross_attn_k
        self.embed_tokens = nn.Embedding(vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            BLTTransformerLayer.from_config(config, i) for i in range(config.num_hidden_layers)
        )
        self.rotary_emb = BLTRotaryEmbedding(config)
        self.patch_embedding_projection = nn.Linear(config.hidden_size, config.hidden_size * cross_attn_k, bias=False)
        num_cross = config.num_hidden_layers if config.cross_attn_all_layers else 1
        self.cross_attn_layers = BLTCrossAttention.for_layers(config, num_cross)

    @property
    def cross_attention_layer_indices(self) -> list[int]:
        """Byte layers whose output states the patch cross-attention reads."""
        last = len(self.layers) - 1
        return list(range(len(self.layers))) if self.config.cross_attn_all_layers else [last]

    def encode_bytes(self, embeddings, positions, attention_plan, output_hidden_states: bool = False):
        """embeddings [B, n, d] -> (final byte states, states read by each cross-attention, all layer outputs)."""
        hidden = F.dropout(embeddings, p=self.config.dropout, training=self.training)
        rotations = self.rotary_emb(positions)
        read = set(self.cross_attention_layer_indices)
        cross_states, all_states = [], [hidden] if output_hidden_states else None
        fast = fused_layers_eligible(hidden, attention_plan.cache)
        for idx, layer in enumerate(self.layers):
            if fast:
                hidden = fast_layer_step(layer, hidden, rotations, attention_plan)
            else:
                hidden = layer(hidden, rotations, attention_plan)
            if idx in read:
                cross_states.append(hidden)
            if output_hidden_states:
                all_states.append(hidden)
        return hidden, cross_states, all_states

    def _initial_queries(self, byte_states, byte_patch, num_patches):
        pooled = max_pool_patches(byte_states, byte_patch, num_patches)
        return project(self.patch_embedding_projection, pooled).view(*pooled.shape[:2], self.cross_attn_k, -1)

    def encode_patches(self, cross_states, byte_patch: torch.Tensor, num_patches: int) -> torch.Tensor:
        """Patch vectors [B, P, k * d] from the byte states each cross-attention reads ([B, L, d] each).

        byte_patch [B, L]: patch of each byte in 0..P-1, or P for bytes outside the patches being encoded.
        """
        queries = None
        for layer_states, cross_attention in zip(cross_states, self.cross_attn_layers, strict=True):
            if queries is None or self.config.cross_attn_repool_each_layer:
                queries = self._initial_queries(layer_states, byte_patch, num_patches)
            # the module returns attention + queries; adding the queries again is the released residual
            queries = queries + cross_attention(queries, layer_states, byte_patch, mode="patches_from_bytes")
        return queries.flatten(2)
