"""`BLTPreTrainedModel`: the transformers boilerplate shared by the BLT model and the standalone entropy model, and
`read_safetensors`, the one reader of (sharded) safetensors checkpoints used by the tokenizer and the converters."""

from __future__ import annotations

import json
from pathlib import Path

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


def read_safetensors(source: str | Path, stem: str = "model", prefix: str = "") -> dict[str, torch.Tensor] | None:
    """The tensors named `prefix...` (prefix stripped) of `<stem>.safetensors` or its sharded index, in a local folder
    or a Hub repo; None when the checkpoint has neither file. Only the shards holding such tensors are opened. A shard
    the index names but the checkpoint lacks, or a tensor the index lists but no shard holds, is an error."""
    from safetensors import safe_open
    from transformers.utils.hub import cached_file

    def find(name):
        if Path(source).is_dir():
            path = Path(source) / name
            return str(path) if path.is_file() else None
        return cached_file(str(source), name, _raise_exceptions_for_missing_entries=False)

    index_name = f"{stem}.safetensors.index.json"
    index = find(index_name)
    if index is not None:
        with open(index, encoding="utf-8") as handle:
            weight_map = {k: v for k, v in json.load(handle)["weight_map"].items() if k.startswith(prefix)}
        shards = {name: find(name) for name in sorted(set(weight_map.values()))}
        missing = [name for name, path in shards.items() if path is None]
        if missing:
            raise ValueError(f"{source}: shards listed in {index_name} are missing: {missing}")
        paths = list(shards.values())
    else:
        single = find(f"{stem}.safetensors")
        if single is None:
            return None
        paths, weight_map = [single], None
    state = {}
    for path in paths:
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                if key.startswith(prefix):
                    state[key[len(prefix) :]] = handle.get_tensor(key)
    if weight_map is not None:
        absent = sorted(k[len(prefix) :] for k in weight_map if k[len(prefix) :] not in state)
        if absent:
            raise ValueError(f"{source}: tensors listed in {index_name} are absent from the shards: {absent[:10]}")
    return state
