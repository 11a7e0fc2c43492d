"""Conversion between transformers' in-tree `Blt` (model_type "blt") and blt_hf.

Parameter names are shared, so weights map one-to-one; only the configs differ. transformers' Blt behaviour is
kept exactly: it patches by global entropy threshold only (any other mode, or no patcher, means one byte per
patch) and, with cross-attention after every encoder layer, re-pools the patch queries before each one.

Folders convert with `convert_from_transformers` / `convert_to_transformers`: weights are read with safetensors only,
every tensor of the folder must match the converted model exactly, and the output is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..configuration_blt_hf import BLTConfig
from ..modeling_blt_hf import BLTForCausalLM
from .checkpoints import (
    check_destination,
    check_tensors,
    default_dtype,
    load_state_dict,
    read_json,
    write_folder_atomically,
)

_STACK_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
    "rms_norm_eps", "max_position_embeddings",
)


def _stack(sub_config, **extra) -> dict:
    values = {field: getattr(sub_config, field) for field in _STACK_FIELDS}
    values["rope_parameters"] = dict(sub_config.rope_parameters)
    values.update(extra)
    return values


def config_from_transformers(hf_config) -> BLTConfig:
    """A `BLTConfig` that computes exactly what the given transformers `BltConfig` computes."""
    entropy = (
        bool(hf_config.patch_in_forward) and hf_config.patching_mode == "entropy" and hf_config.patch_size is not None
    )
    window = hf_config.local_attention_window_len
    encoder, decoder = hf_config.encoder_config, hf_config.decoder_config
    patcher, global_ = hf_config.patcher_config, hf_config.global_config
    special = {
        name: getattr(hf_config, name)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id")
        if getattr(hf_config, name, None) is not None
    }
    return BLTConfig(
        vocab_size=hf_config.vocab_size,
        patching_mode="entropy" if entropy else "byte",
        patching_threshold=float(hf_config.patching_threshold),
        max_patch_length=hf_config.max_patch_length,
        cross_attn_k=hf_config.cross_attn_k,
        encoder_hash_byte_group_size=list(hf_config.encoder_hash_byte_group_size),
        encoder_hash_byte_group_vocab=hf_config.encoder_hash_byte_group_vocab,
        encoder_hash_byte_group_nb_functions=hf_config.encoder_hash_byte_group_nb_functions,
        max_position_embeddings=encoder.max_position_embeddings,
        has_patcher=bool(hf_config.patch_in_forward),
        patcher_config=_stack(patcher, sliding_window=patcher.sliding_window),
        encoder_config=_stack(
            encoder, sliding_window=window, cross_attn_all_layers=bool(encoder.cross_attn_all_layers),
            cross_attn_repool_each_layer=True, dropout=encoder.dropout,
        ),
        global_config=_stack(
            global_, use_input_projection=getattr(global_, "encoder_cross_output_size", None) is not None,
            dropout=global_.dropout,
        ),
        decoder_config=_stack(
            decoder, sliding_window=window, cross_attn_all_layers=bool(decoder.cross_attn_all_layers),
            dropout=decoder.dropout,
        ),
        tie_word_embeddings=False,
        **special,
    )


def config_to_transformers(config: BLTConfig):
    """The transformers `BltConfig` of a blt_hf config; ValueError for settings transformers' Blt cannot express."""
    from transformers import BltConfig

    encoder, decoder = config.encoder_config, config.decoder_config
    problems = []
    if config.patching_mode not in ("entropy", "byte"):
        problems.append(f"patching_mode={config.patching_mode!r} (transformers' Blt patches by entropy or per byte)")
    if config.patching_mode == "entropy" and (config.monotonicity or config.patching_threshold_add is not None):
        problems.append("monotonic entropy patching")
    if encoder.sliding_window != decoder.sliding_window:
        problems.append("different encoder and decoder windows")
    if decoder.patch_local_attention:
        problems.append("patch_local_attention")
    if encoder.cross_attn_all_layers and encoder.num_hidden_layers > 1 and not encoder.cross_attn_repool_each_layer:
        problems.append("encoder cross-attention in every layer without re-pooling")
    for name, stack in (("encoder", encoder), ("decoder", decoder)):
        if (stack.cross_attn_num_heads, stack.cross_attn_num_key_value_heads) != (
            stack.num_attention_heads, stack.num_key_value_heads
        ):
            problems.append(f"{name} cross-attention heads differ from its self-attention heads")
    if config.needs_global_projection != (config.global_input_size != config.global_config.hidden_size):
        problems.append("a global input projection between equal sizes")
    if problems:
        raise ValueError("transformers' Blt cannot express: " + "; ".join(problems))

    def stack(sub, **extra):
        values = {field: getattr(sub, field) for field in _STACK_FIELDS}
        values["rope_parameters"] = dict(sub.rope_parameters)
        values.update(extra)
        return values

    local = dict(hidden_size_global=config.global_config.hidden_size, cross_attn_k=config.cross_attn_k)
    return BltConfig(
        vocab_size=config.vocab_size,
        max_position_embeddings=config.global_config.max_position_embeddings,
        patch_in_forward=config.has_patcher and config.patching_mode == "entropy",
        patching_mode="entropy",
        patching_threshold=float(config.patching_threshold),
        max_patch_length=config.max_patch_length,
        local_attention_window_len=encoder.sliding_window,
        cross_attn_k=config.cross_attn_k,
        encoder_hash_byte_group_size=list(config.encoder_hash_byte_group_size),
        encoder_hash_byte_group_vocab=config.encoder_hash_byte_group_vocab,
        encoder_hash_byte_group_nb_functions=config.encoder_hash_byte_group_nb_functions,
        patcher_config=stack(config.patcher_config, sliding_window=config.patcher_config.sliding_window),
        encoder_config=stack(encoder, cross_attn_all_layers=encoder.cross_attn_all_layers, **local),
        decoder_config=stack(decoder, cross_attn_all_layers=decoder.cross_attn_all_layers, **local),
        global_config=stack(config.global_config),
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        tie_word_embeddings=False,
        use_cache=False,
    )


def _load_exactly(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Load `state_dict`; ValueError listing missing, unexpected and mis-shaped tensors before anything is copied."""
    check_tensors(state_dict, model.state_dict(), f"{source} weights do not match the converted config")
    model.load_state_dict(state_dict, strict=True)


def from_transformers(hf_model) -> BLTForCausalLM:
    """A `BLTForCausalLM` with the weights of a transformers `BltForCausalLM` (same dtype, same logits)."""
    config = config_from_transformers(hf_model.config)
    model = BLTForCausalLM(config).to(dtype=next(hf_model.parameters()).dtype)
    _load_exactly(model, hf_model.state_dict(), "transformers Blt")
    return model.eval() if not hf_model.training else model


def to_transformers(model: BLTForCausalLM):
    """A transformers `BltForCausalLM` with the weights of a blt_hf model."""
    from transformers import BltForCausalLM

    hf_model = BltForCausalLM(config_to_transformers(model.config)).to(dtype=next(model.parameters()).dtype)
    _load_exactly(hf_model, model.state_dict(), "blt_hf")
    return hf_model.eval() if not model.training else hf_model


def _read_weights(folder: Path, model_type: str) -> dict[str, torch.Tensor]:
    """The safetensors weights of a checkpoint folder whose config.json must say `model_type`."""
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json: not a transformers checkpoint folder")
    found = read_json(folder / "config.json").get("model_type")
    if found != model_type:
        raise ValueError(f"{folder} holds a {found!r} checkpoint; expected model_type {model_type!r}")
    return load_state_dict(folder, allow_torch_files=False)


def _floating_dtype(state: dict[str, torch.Tensor]) -> torch.dtype | None:
    return next((t.dtype for t in state.values() if t.dtype.is_floating_point), None)


def convert_from_transformers(source: str | Path, destination: str | Path) -> BLTForCausalLM:
    """Convert a transformers Blt folder (model_type "blt") into a blt_hf folder, written atomically."""
    from transformers import BltConfig

    from ..tokenization_blt_hf import BLTTokenizer

    source = Path(source)
    check_destination(destination)
    state = _read_weights(source, "blt")
    with default_dtype(_floating_dtype(state)):
        model = BLTForCausalLM(config_from_transformers(BltConfig.from_pretrained(source)))
    _load_exactly(model, state, f"{source}")

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        BLTTokenizer().save_pretrained(folder)

    write_folder_atomically(destination, write)
    return model.eval()


def convert_to_transformers(source: str | Path, destination: str | Path):
    """Convert a blt_hf folder into a transformers Blt folder (model_type "blt"), written atomically."""
    from transformers import BltForCausalLM

    source = Path(source)
    check_destination(destination)
    state = _read_weights(source, "blt_hf")
    with default_dtype(_floating_dtype(state)):
        hf_model = BltForCausalLM(config_to_transformers(BLTConfig.from_pretrained(source)))
    _load_exactly(hf_model, state, f"{source}")
    write_folder_atomically(destination, hf_model.save_pretrained)
    return hf_model.eval()
