"""`BLTPreTrainedModel`: the transformers boilerplate shared by the BLT model and the standalone entropy model, and
`read_safetensors`, the one reader of (sharded) safetensors checkpoints used by the tokenizer and the converters."""

from __future__ import annotations

import json
import os
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

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """transformers' `from_pretrained`, after `check_checkpoint_folder` (without `config=`): a local folder
        must hold a BLT `config.json`, so that a mistyped path never builds (and allocates) a default model."""
        if config is None and pretrained_model_name_or_path is not None:
            check_checkpoint_folder(cls, pretrained_model_name_or_path, kwargs.get("subfolder") or "")
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' `save_pretrained`, then remove the shard indexes of an earlier save into the same folder
        that this one did not rewrite (and the shards they name), so no stale index outlives its weights."""
        before = _shard_index_times(save_directory)
        result = super().save_pretrained(save_directory, *args, **kwargs)
        after = _shard_index_times(save_directory)
        stale = [name for name, time in before.items() if after.get(name) == time]
        remove_stale_shard_indexes(save_directory, stale, keep=[name for name in after if name not in stale])
        return result

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
def _looks_like_a_local_path(name: str) -> bool:
    """Hub ids are "name" or "owner/name"; anything else (absolute, ./, ~, deeper, backslashes) is a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or os.path.exists(name)


def check_checkpoint_folder(model_class, path, subfolder: str = "") -> None:
    """Raise `OSError` for a local path that is not a folder with a config.json, and `ValueError` for a config.json
    of another model type (a Llama or transformers' Blt folder, say). Hub repo ids pass untouched."""
    name = os.fspath(path)
    if not _looks_like_a_local_path(name):
        return
    folder = os.path.join(os.path.expanduser(name), subfolder) if subfolder else os.path.expanduser(name)
    if not os.path.isdir(folder):
        raise OSError(f"{folder}: no such checkpoint folder")
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        raise OSError(
            f"{folder} has no config.json, so it is not a saved {model_class.__name__} checkpoint "
            "(save one with save_pretrained, or pass config=)"
        )
    try:
        with open(config_file, encoding="utf-8") as handle:
            found = json.load(handle).get("model_type")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"{config_file} is not a JSON config: {error}") from None
    expected = model_class.config_class.model_type
    if found is not None and found != expected:
        hint = {"llama": "blt-hf convert-llama", "blt": "blt-hf convert-transformers"}.get(found)
        raise ValueError(
            f"{folder} holds a {found!r} checkpoint, not a {model_class.__name__} (model_type {expected!r})"
            + (f"; convert it first with `{hint}`" if hint else "")
        )


def check_labels(labels, input_ids, vocab_size: int) -> None:
    """Labels: an integer tensor shaped like input_ids, each a vocabulary id or -100 (ignored)."""
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
        kind = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor of byte ids, got {kind}")
    if labels.shape != input_ids.shape:
        raise ValueError(
            f"labels have shape {list(labels.shape)} but input_ids have shape {list(input_ids.shape)}: give one "
            "label per input byte (the shift to next-byte targets happens inside)"
        )
    bad = (labels != -100) & ((labels < 0) | (labels >= vocab_size))
    if bool(bad.any()):
        raise ValueError(f"labels must be in 0..{vocab_size - 1} or -100 (ignored), got {labels[bad][:5].tolist()}")


SHARD_INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _shard_index_times(folder) -> dict[str, int]:
    """Modification times (ns) of the shard indexes in `folder`."""
    paths = {name: os.path.join(folder, name) for name in SHARD_INDEX_NAMES}
    return {name: os.stat(path).st_mtime_ns for name, path in paths.items() if os.path.isfile(path)}


def _indexed_shards(index_file) -> set[str]:
    try:
        with open(index_file, encoding="utf-8") as handle:
            return set(json.load(handle).get("weight_map", {}).values())
    except (OSError, ValueError, AttributeError):
        return set()


def remove_stale_shard_indexes(folder, stale: list[str], keep: list[str]) -> None:
    """Delete the `stale` index files of `folder` and the shard files they name, except shards a `keep` index names
    (or the folder's single-file weights)."""
    kept = {"model.safetensors", "pytorch_model.bin"}
    for name in keep:
        kept |= _indexed_shards(os.path.join(folder, name))
    for name in stale:
        index_file = os.path.join(folder, name)
        for shard in _indexed_shards(index_file) - kept:
            path = os.path.join(folder, shard)
            if os.path.dirname(os.path.abspath(path)) == os.path.abspath(folder) and os.path.isfile(path):
                os.remove(path)
        os.remove(index_file)
