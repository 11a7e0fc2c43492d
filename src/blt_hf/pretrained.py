"""`BLTPreTrainedModel`: the transformers boilerplate shared by the BLT model and the standalone entropy model."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .configuration_blt_hf import BLTConfig
from .layers import BLTRMSNorm, BLTRotaryEmbedding


class BLTPreTrainedModel(PreTrainedModel):
    config_class = BLTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BLTTransformerLayer", "BLTCrossAttention"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    _can_compile_fullgraph = False  # data-dependent patching
    # patch boundaries are thresholded entropies: the entropy model stays fp32 when a checkpoint loads in bf16/fp16,
    # so they match the tokenizer's (fp32) patch lengths and do not move with the precision of the other stacks
    _keep_in_fp32_modules_strict = ["patcher"]

    @torch.no_grad()
    def _init_weights(self, module):
        """The official BLT init: truncated normals (cut at 3 std) with std = fan_in^-0.5 for every linear map
        (so FFN outputs use the hidden width) and std = dim^-0.5 for embeddings; norms start at one."""
        if isinstance(module, nn.Linear):
            std = module.in_features**-0.5
            init.trunc_normal_(module.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            std = module.embedding_dim**-0.5
            init.trunc_normal_(module.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)
        elif isinstance(module, BLTRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, BLTRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq()[0])
