"""Global latent transformer: a Llama-style causal transformer that runs once per patch.

Input: patch vectors [B, P, k * d_enc] (projected to the global width when the sizes differ), plus the source
vocabulary rows of a byte-ified model. Positions are patch
indices. No token embedding, no final norm, no head: its outputs feed the local decoder's cross-attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_blt_hf import BLTGlobalTransformerConfig
from .decoding import fast_paths_eligible, row_layer_step, row_step_eligible
from .layers import BLTRotaryEmbedding, BLTTransformerLayer, project
from .masks import PatchAttentionPlan


class BLTGlobalTransformer(nn.Module):
    def __init__(self, config: BLTGlobalTransformerConfig, input_size: int, use_input_projection: bool):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(BLTTransformerLayer.from_config(config, i) for i in range(config.num_hidden_layers))
        self.rotary_emb = BLTRotaryEmbedding(config)
        self.token_embedding_projection = (
            nn.Linear(input_size, config.hidden_size, bias=False) if use_input_projection else nn.Identity()
        )

    def forward(self, patch_vectors: torch.Tensor, attention_plan: PatchAttentionPlan, output_hidden_states=False,
                input_embeddings: torch.Tensor | None = None):
        """patch_vectors [B, m, k * d_enc] -> patch states [B, m, d_global] (and every layer's output if asked).
        input_embeddings [B, m, d_global]: added to the projected patch vectors (a byte-ified model's source
        vocabulary rows, `BLTVocabEmbedding`)."""
        hidden = project(self.token_embedding_projection, patch_vectors)
        if input_embeddings is not None:
            hidden = hidden + input_embeddings
        hidden = F.dropout(hidden, p=self.config.dropout, training=self.training)
        rotations = self.rotary_emb(attention_plan.positions())
        all_states = [hidden] if output_hidden_states else None
        # One patch per row continuing a cache: `decoding.row_layer_step`, the layer in fewer kernels on its own
        # weights. Not `fast_layer_step`: its fused weight copies cost the first patch of each generation ~30 ms at
        # 4k context on the 70M benchmark model, and the memory of the layers again (README, issue 17's recheck).
        row_steps = fast_paths_eligible(hidden, attention_plan.cache)
        for layer in self.layers:
            if row_steps and row_step_eligible(layer):
                hidden = row_layer_step(layer, hidden, rotations, attention_plan)
            else:
                hidden = layer(hidden, rotations, attention_plan)
            if output_hidden_states:
                all_states.append(hidden)
        if attention_plan.cache is not None:
            attention_plan.cache.advance(attention_plan.new_counts)
        return hidden, all_states
