"""Byte-ify a Llama: a BLT whose global transformer holds a Llama checkpoint's decoder layers.

Every non-embedding weight of the Llama decoder layers (attention, MLP, both norms) moves into
`model.global_transformer`; the token embeddings and the LM head are dropped (a BLT's global transformer reads
patch vectors and writes patch states). Llama's final norm is dropped too: BLT's global transformer has none, and
the local decoder normalises patch states (its cross-attention `k_norm`) before reading them. Global sizes, GQA,
RoPE theta and `llama3` scaling come from the Llama config; the local encoder, local decoder, hash embeddings and
cross-attention are freshly initialised, and the entropy model is copied from a given folder or initialised.

Hugging Face Llama checkpoints store q/k rows permuted for `rotate_half` (pairs i, i + d/2); BLT rotates adjacent
pairs (2i, 2i+1). The converter reorders those rows, so each converted layer computes exactly what Llama's does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..configuration_blt_hf import BLTConfig
from .checkpoints import (
    check_destination,
    check_tensors,
    default_dtype,
    load_state_dict,
    map_keys,
    raise_problems,
    read_json,
    write_folder_atomically,
)

LLAMA_LAYER_WEIGHTS = (
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
    "input_layernorm.weight", "post_attention_layernorm.weight",
)
LLAMA_KEY_TABLE: dict[str, str | None] = {
    **{f"model.layers.{{}}.{name}": f"model.global_transformer.layers.{{}}.{name}" for name in LLAMA_LAYER_WEIGHTS},
    "model.embed_tokens.weight": None,  # bytes are embedded by the local encoder
    "lm_head.weight": None,  # bytes are predicted by the local decoder
    "model.norm.weight": None,  # BLT's global transformer has no final norm (see the module docstring)
    "model.rotary_emb.inv_freq": None,
    "model.layers.{}.self_attn.rotary_emb.inv_freq": None,
}


def halves_to_pairs(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reorder q/k projection rows from `rotate_half` layout (i, i + d/2) to adjacent pairs (2i, 2i + 1), per head."""
    rows, columns = weight.shape
    head_dim = rows // num_heads
    return weight.view(num_heads, 2, head_dim // 2, columns).transpose(1, 2).reshape(rows, columns)


def pairs_to_halves(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Inverse of `halves_to_pairs`."""
    rows, columns = weight.shape
    head_dim = rows // num_heads
    return weight.view(num_heads, head_dim // 2, 2, columns).transpose(1, 2).reshape(rows, columns)


def global_config_from_llama(llama_config) -> dict:
    """The global-transformer sub-config of a Llama config; ValueError for Llama variants BLT cannot hold."""
    problems = []
    if getattr(llama_config, "model_type", None) != "llama":
        raise ValueError(f"expected a Llama checkpoint (model_type 'llama'), got {llama_config.model_type!r}")
    if getattr(llama_config, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={llama_config.hidden_act!r} (BLT layers use SiLU)")
    if getattr(llama_config, "attention_bias", False) or getattr(llama_config, "mlp_bias", False):
        problems.append("biases in attention or MLP")
    head_dim = getattr(llama_config, "head_dim", None)
    if head_dim not in (None, llama_config.hidden_size // llama_config.num_attention_heads):
        problems.append(f"head_dim={head_dim} != hidden_size / num_attention_heads")
    rope = dict(getattr(llama_config, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0})
    if rope.get("rope_type", "default") not in ("default", "llama3"):
        problems.append(f"rope_type={rope.get('rope_type')!r} (supported: default, llama3)")
    if problems:
        raise ValueError("this Llama cannot be converted: " + "; ".join(problems))
    return dict(
        hidden_size=llama_config.hidden_size,
        num_hidden_layers=llama_config.num_hidden_layers,
        num_attention_heads=llama_config.num_attention_heads,
        num_key_value_heads=llama_config.num_key_value_heads or llama_config.num_attention_heads,
        intermediate_size=llama_config.intermediate_size,
        rms_norm_eps=float(llama_config.rms_norm_eps),
        max_position_embeddings=llama_config.max_position_embeddings,
        rope_parameters=rope,
    )


def read_llama_config(source: Path):
    """The Llama config of a Hugging Face folder; ValueError naming config.json when it is missing, not JSON, of
    another model type, or holds values transformers rejects."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig

    config_file = Path(source) / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{source} has no config.json: not a Hugging Face checkpoint folder")
    model_type = read_json(config_file).get("model_type")
    if model_type != "llama":
        raise ValueError(f"{source} holds a {model_type!r} checkpoint; expected a Llama (model_type 'llama')")
    try:
        return AutoConfig.from_pretrained(source)
    except (StrictDataclassError, TypeError, ValueError) as error:
        raise ValueError(f"{config_file}: {' '.join(str(error).split())}") from None


def llama_layer_shapes(llama_config) -> dict[str, tuple[int, ...]]:
    """The shape of each decoder-layer weight (`LLAMA_LAYER_WEIGHTS`) that the Llama config implies."""
    hidden, heads = llama_config.hidden_size, llama_config.num_attention_heads
    kv_heads = llama_config.num_key_value_heads or heads
    if hidden % heads or (hidden // heads) % 2 or heads % kv_heads:
        raise ValueError(
            f"this Llama config does not fit together: hidden_size {hidden}, {heads} attention heads, {kv_heads} "
            "key/value heads (the heads must divide the width into even head sizes, the kv heads the heads)"
        )
    head_dim, intermediate = hidden // heads, llama_config.intermediate_size
    return {
        "self_attn.q_proj.weight": (heads * head_dim, hidden), "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
        "self_attn.v_proj.weight": (kv_heads * head_dim, hidden), "self_attn.o_proj.weight": (hidden, heads * head_dim),
        "mlp.gate_proj.weight": (intermediate, hidden), "mlp.up_proj.weight": (intermediate, hidden),
        "mlp.down_proj.weight": (hidden, intermediate),
        "input_layernorm.weight": (hidden,), "post_attention_layernorm.weight": (hidden,),
    }


def check_llama_layers(mapped: dict[str, torch.Tensor], llama_config) -> None:
    """Every mapped layer weight has the shape the config implies and holds finite floating-point values; checked
    before anything is reordered or built, so weights that do not fit fail here, naming the tensors."""
    shapes = llama_layer_shapes(llama_config)
    layers = llama_config.num_hidden_layers
    wrong, not_float, not_finite, extra = [], [], [], []
    for blt_name, tensor in mapped.items():
        name = blt_name.replace("model.global_transformer.", "model.", 1)  # the checkpoint's own name
        index, _, weight = name.removeprefix("model.layers.").partition(".")
        if not index.isdigit() or int(index) >= layers:
            extra.append(name)
        elif tuple(tensor.shape) != shapes[weight]:
            wrong.append(f"{name}: {tuple(tensor.shape)} != {shapes[weight]}")
        elif not tensor.is_floating_point():
            not_float.append(f"{name} ({tensor.dtype})")
        elif not tensor.is_meta and not bool(torch.isfinite(tensor).all()):  # (meta tensors: shapes only)
            not_finite.append(name)
    raise_problems("Llama layers", [
        (f"layers beyond the config's num_hidden_layers={layers}:", sorted(extra)),
        ("shapes that disagree with the config", wrong),
        ("weights that are not floating point", not_float),
        ("weights holding NaN or inf", not_finite),
    ], shown=6)


def global_state_from_llama(state: dict[str, torch.Tensor], llama_config) -> dict[str, torch.Tensor]:
    """Llama decoder-layer tensors under blt_hf names, q/k rows reordered for BLT's RoPE layout."""
    mapped = map_keys(state, LLAMA_KEY_TABLE, "Llama checkpoint")
    check_llama_layers(mapped, llama_config)
    heads = llama_config.num_attention_heads
    kv_heads = llama_config.num_key_value_heads or heads
    for name in list(mapped):
        if name.endswith("self_attn.q_proj.weight"):
            mapped[name] = halves_to_pairs(mapped[name], heads)
        elif name.endswith("self_attn.k_proj.weight"):
            mapped[name] = halves_to_pairs(mapped[name], kv_heads)
    return mapped


def blt_config_for_llama(
    llama_config,
    local_hidden_size: int | None = None,
    local_heads: int | None = None,
    encoder_layers: int = 1,
    decoder_layers: int = 4,
    cross_attn_k: int = 2,
    window: int = 512,
    hash_sizes=(3, 4, 5, 6, 7, 8),
    hash_vocab: int = 50002,
    patcher_config: dict | None = None,
    **top_level,
) -> BLTConfig:
    """A BLTConfig around the Llama's layers; local sizes default to hidden / cross_attn_k with 64-d heads."""
    if not isinstance(cross_attn_k, int) or cross_attn_k < 1:
        raise ValueError(f"cross_attn_k must be an integer >= 1, got {cross_attn_k!r}")
    global_config = global_config_from_llama(llama_config)
    local_hidden_size = local_hidden_size or global_config["hidden_size"] // cross_attn_k
    local_heads = local_heads or max(1, local_hidden_size // 64)
    local = dict(hidden_size=local_hidden_size, num_attention_heads=local_heads, intermediate_size=None,
                 sliding_window=window, rms_norm_eps=global_config["rms_norm_eps"])
    values = dict(
        cross_attn_k=cross_attn_k,
        encoder_hash_byte_group_size=list(hash_sizes),
        encoder_hash_byte_group_vocab=hash_vocab,
        encoder_config=dict(local, num_hidden_layers=encoder_layers),
        decoder_config=dict(local, num_hidden_layers=decoder_layers),
        global_config=global_config,
    )
    if patcher_config is not None:
        values["patcher_config"] = patcher_config
    values.update(top_level)
    return BLTConfig(**values)


def load_patcher_source(folder: Path) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(patcher sub-config, patcher weights without prefix, patching settings) from a BLT or a patcher folder."""
    config = read_json(folder / "config.json")
    state = load_state_dict(folder)
    if config.get("model_type") == "blt_hf":
        prefix = "model.patcher."
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not weights:
            raise ValueError(f"{folder} is a BLT without an entropy model")
        settings = {k: config[k] for k in ("patching_mode", "patching_threshold", "patching_threshold_add",
                                           "monotonicity", "max_patch_length") if k in config}
        return config["patcher_config"], weights, settings
    if config.get("model_type") == "blt_hf_patcher":
        standalone_only = ("architectures", "auto_map", "transformers_version")  # describe the folder, not the stack
        return {k: v for k, v in config.items() if k not in standalone_only}, state, {}
    raise ValueError(f"{folder} holds neither a blt_hf BLT nor a blt_hf entropy model")


def convert_llama(
    source: str | Path,
    destination: str | Path,
    patcher: str | Path | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
    **options,
):
    """Convert a Hugging Face Llama folder into a blt_hf BLT folder (written atomically). Returns the model."""
    from ..modeling_blt_hf import BLTForCausalLM
    from ..tokenization_blt_hf import BLTTokenizer

    source = Path(source)
    check_destination(destination)
    llama_config = read_llama_config(source)
    state = load_state_dict(source)
    global_state = global_state_from_llama(state, llama_config)

    patcher_weights, settings = None, {}
    if patcher is not None:
        patcher_config, patcher_weights, settings = load_patcher_source(Path(patcher))
        options.setdefault("patcher_config", patcher_config)
    for key, value in settings.items():
        options.setdefault(key, value)
    config = blt_config_for_llama(llama_config, **options)

    torch.manual_seed(seed)
    with default_dtype(dtype):  # build in the target dtype: no fp32 copy of a big model
        model = BLTForCausalLM(config)
    expected = {
        f"model.global_transformer.{name}": tensor
        for name, tensor in model.model.global_transformer.state_dict().items()
        if not name.startswith("token_embedding_projection")  # new when k * d_enc != d_global
    }
    check_tensors(global_state, expected, "Llama layers")
    model.load_state_dict(global_state, strict=False)
    if patcher_weights is not None:
        check_tensors(patcher_weights, model.model.patcher.state_dict(), f"entropy model from {patcher}")
        model.model.patcher.load_state_dict(patcher_weights)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        BLTTokenizer().save_pretrained(folder)

    write_folder_atomically(destination, write)
    return model
