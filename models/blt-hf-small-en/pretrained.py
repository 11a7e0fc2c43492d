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

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """The byte vocabulary is fixed (every stack, the entropy model's included, embeds the same 260 ids): a
        call that keeps its size returns the embeddings, any other size is refused."""
        size = self.config.vocab_size if new_num_tokens is None else new_num_tokens
        if pad_to_multiple_of:
            size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
        if size != self.config.vocab_size:
            raise ValueError(
                f"BLT's byte vocabulary is fixed at {self.config.vocab_size} ids (256 bytes + 4 special ids), so "
                f"its embeddings cannot be resized to {size}: new tokens are written as their bytes"
            )
        return self.get_input_embeddings()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """transformers' `from_pretrained`, after `check_checkpoint_folder` (without `config=`): a local folder
        must hold a BLT `config.json` and whole weight files, so that a mistyped path never builds (and allocates)
        a default model. A checkpoint that lacks weights the config needs (they would start random), or holds
        weights the config has no place for, is an error; `output_loading_info=True` returns them instead, as
        transformers does, for a caller that means to accept them."""
        if config is None and pretrained_model_name_or_path is not None:
            check_checkpoint_folder(cls, pretrained_model_name_or_path, kwargs.get("subfolder") or "")
        if kwargs.get("output_loading_info"):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config,
                                              output_loading_info=True, **kwargs)
        missing = sorted(info.get("missing_keys") or [])
        unexpected = sorted(k for k in info.get("unexpected_keys") or [] if not k.startswith("lm_head."))
        if missing or unexpected:  # (a base model loaded from a causal-LM checkpoint leaves its byte head out)
            problems = ([f"lacks {len(missing)} weights the config needs, which would start random: {missing[:8]}"]
                        if missing else [])
            problems += ([f"holds {len(unexpected)} weights the config has no place for: {unexpected[:8]}"]
                         if unexpected else [])
            raise ValueError(
                f"{pretrained_model_name_or_path}: the checkpoint " + "; ".join(problems) + ". Check that its "
                "config.json belongs to these weights, or pass output_loading_info=True to load it anyway and see them"
            )
        return model

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
        weight_map = {k: v for k, v in read_weight_map(index).items() if k.startswith(prefix)}
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
        check_safetensors_file(path)
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                if key.startswith(prefix):
                    state[key[len(prefix) :]] = handle.get_tensor(key)
    if weight_map is not None:
        absent = sorted(k[len(prefix) :] for k in weight_map if k[len(prefix) :] not in state)
        if absent:
            raise ValueError(f"{source}: tensors listed in {index_name} are absent from the shards: {absent[:10]}")
    return state
def read_json_file(path: str | Path, what: str = "a JSON object") -> dict:
    """The JSON object in `path`; ValueError naming the file when it is not UTF-8 JSON holding an object."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold {what}, got a JSON {type(value).__name__}")
    return value


def read_weight_map(index_file: str | Path) -> dict[str, str]:
    """The `weight_map` of a shard index: tensor name -> shard file name; ValueError naming the file otherwise."""
    weight_map = read_json_file(index_file, "a shard index (an object with a weight_map)").get("weight_map")
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise ValueError(f"{index_file}: its weight_map must map tensor names to shard file names")
    return weight_map


def check_safetensors_file(path: str | Path) -> None:
    """ValueError naming `path` when it is not a whole safetensors file: an 8-byte header length, a JSON header, and
    exactly the data bytes the header's offsets describe (a truncated or foreign file fails here, not deep inside
    a reader)."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        header_length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        problem = None
        if header_length < 2 or 8 + header_length > size:
            problem = "its header is missing or longer than the file"
        else:
            try:
                header = json.loads(handle.read(header_length))
                ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
            except (UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError, AttributeError):
                problem = "its header is not a safetensors header"
            else:
                expected = 8 + header_length + max(ends, default=0)
                if expected != size:
                    problem = f"it holds {size} bytes but its header describes {expected} (truncated or damaged)"
    if problem is not None:
        raise ValueError(f"{path} is not a readable safetensors file: {problem}")


def looks_like_a_local_path(name: str) -> bool:
    """Hub ids are "name" or "owner/name"; anything else (absolute, ./, ~, deeper, backslashes) is a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or os.path.exists(name)


def check_checkpoint_folder(model_class, path, subfolder: str = "") -> None:
    """Raise `OSError` for a local path that is not a folder with a config.json, and `ValueError` for a config.json
    of another model type (a Llama or transformers' Blt folder, say). Hub repo ids pass untouched."""
    name = os.fspath(path)
    if not looks_like_a_local_path(name):
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
    found = read_json_file(config_file, "a JSON config (an object)").get("model_type")
    expected = model_class.config_class.model_type
    if found is not None and found != expected:
        hint = {"llama": "blt-hf convert-llama", "blt": "blt-hf convert-transformers"}.get(found)
        raise ValueError(
            f"{folder} holds a {found!r} checkpoint, not a {model_class.__name__} (model_type {expected!r})"
            + (f"; convert it first with `{hint}`" if hint else "")
        )
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        names = sorted(set(read_weight_map(index).values()))
        missing = [name for name in names if not os.path.isfile(os.path.join(folder, name))]
        if missing:
            raise OSError(f"{folder}: shards listed in model.safetensors.index.json are missing: {missing}")
        files = [os.path.join(folder, name) for name in names]
    else:
        files = [path for path in [os.path.join(folder, "model.safetensors")] if os.path.isfile(path)]
    for path in files:
        check_safetensors_file(path)


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
