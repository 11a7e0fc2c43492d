"""Convert Meta's released BLT checkpoints (facebookresearch/blt) into blt_hf folders.

Two layouts are read, for the BLT and for its entropy model:
* consolidated: `params.json` (the training arguments: `model`, `data.patcher_args`, `entropy_model`) and
  `consolidated.pth` (`{"model": state_dict}`); the entropy model sits in `entropy_model/` beside them;
* Hub mixin (`facebook/blt-1b`, `facebook/blt-entropy`): `config.json` = `{"args": ...}`, `model.safetensors`,
  and for the BLT `train_args.json` (a copy of params.json, holding the patching settings).

The config is derived from the arguments; weights move through explicit key tables (`BLT_KEY_TABLE`,
`ENTROPY_KEY_TABLE`); the per-(hash function, n) tables are fused in order into one embedding. Unknown or missing
tensors, and architecture options blt_hf does not implement, are errors that say which.

The released entropy model is loaded by the official code with RoPE theta 10000 and a 512-byte window whatever its
params.json says; consolidated-layout conversion does the same. The released weights are under the FAIR
Noncommercial Research License; converted folders keep that license.
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
    read_json,
    write_folder_atomically,
)

# official block / cross-attention parameter names -> blt_hf (= transformers' Blt) names
BLOCK_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
CROSS_ATTENTION_NAMES = {
    "wq.weight": "q_proj.weight",
    "wk.weight": "k_proj.weight",
    "wv.weight": "v_proj.weight",
    "wo.weight": "o_proj.weight",
    "cross_attn_norm_q.weight": "q_norm.weight",
    "cross_attn_norm_kv.weight": "k_norm.weight",
}
HASH_TABLE = "model.encoder_hash_tok_embedding.table_{}"  # fused by `fuse_hash_tables`

BLT_KEY_TABLE: dict[str, str | None] = {
    "local_encoder.tok_embeddings.weight": "model.local_encoder.embed_tokens.weight",
    "local_encoder.patch_embedding_projection.weight": "model.local_encoder.patch_embedding_projection.weight",
    "global_transformer.token_embedding_projection.weight":
        "model.global_transformer.token_embedding_projection.weight",
    "local_decoder.patch_embedding_projection.weight": "model.local_decoder.patch_embedding_projection.weight",
    "local_decoder.norm.weight": "model.local_decoder.norm.weight",
    "local_decoder.output.weight": "lm_head.weight",
    "encoder_hash_tok_embedding.{}.weight": HASH_TABLE,
    **{
        f"{stack}.layers.{{}}.{official}": f"model.{stack}.layers.{{}}.{ours}"
        for stack in ("local_encoder", "global_transformer", "local_decoder")
        for official, ours in BLOCK_NAMES.items()
    },
    **{
        f"{stack}.cross_attn_layers.{{}}.{official}": f"model.{stack}.cross_attn_layers.{{}}.{ours}"
        for stack in ("local_encoder", "local_decoder")
        for official, ours in CROSS_ATTENTION_NAMES.items()
    },
    # RoPE tables are buffers recomputed at load time
    "local_encoder.rope.freqs_cis": None,
    "local_decoder.rope.freqs_cis": None,
    "global_transformer.rope_embeddings.freqs_cis": None,
}
ENTROPY_KEY_TABLE: dict[str, str | None] = {
    "tok_embeddings.weight": "model.patcher.embed_tokens.weight",
    "norm.weight": "model.patcher.norm.weight",
    "output.weight": "model.patcher.lm_head.weight",
    **{f"layers.{{}}.{official}": f"model.patcher.layers.{{}}.{ours}" for official, ours in BLOCK_NAMES.items()},
    "rope_embeddings.freqs_cis": None,
}


def official_ffn_size(dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """The official SwiGLU width: 2/3 of 4 * dim, times the multiplier, rounded up to `multiple_of`."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def fuse_hash_tables(state: dict[str, torch.Tensor], count: int, dim: int) -> dict[str, torch.Tensor]:
    """Concatenate `table_0 .. table_{count-1}` (function-major, n-minor, the official order) into one embedding
    (an empty [0, dim] one when the checkpoint has no hash embeddings)."""
    names = [HASH_TABLE.format(i) for i in range(count)]
    present = [n for n in names if n in state]
    extra = sorted(k for k in state if k.startswith("model.encoder_hash_tok_embedding.table_") and k not in names)
    if len(present) != count or extra:
        raise ValueError(f"expected {count} hash embedding tables, found {len(present) + len(extra)}")
    out = {k: v for k, v in state.items() if k not in names}
    tables = [state[n] for n in names] or [torch.zeros(0, dim)]
    out["model.encoder_hash_tok_embedding.weight"] = torch.cat(tables, dim=0)
    return out


def _hash_sizes(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, str):
        return [int(x) for x in value.split(",") if x]
    return [int(x) for x in value]


def _unsupported(args: dict) -> list[str]:
    expected = {
        "cross_attn_encoder": True, "cross_attn_decoder": True, "cross_attn_init_by_pooling": True,
        "share_encoder_decoder_emb": True, "use_rope": True, "encoder_enable_byte_ngrams": False,
        "tie_local_encoder_decoder_logits": False, "weight_tying": False,
    }
    problems = [f"{k}={args[k]!r} (blt_hf implements {v!r})" for k, v in expected.items() if k in args and args[k] != v]
    for key, value in (("pm_size", 0), ("cross_attn_window_encoder", None), ("cross_attn_window_decoder", None),
                       ("head_dim", None), ("conv_kernel_size", None)):
        if args.get(key, value) != value:
            problems.append(f"{key}={args[key]!r}")
    if args.get("downsampling_by_pooling", "max") not in (None, "max"):
        problems.append(f"downsampling_by_pooling={args['downsampling_by_pooling']!r} (blt_hf pools by max)")
    if args.get("non_linearity", "swiglu") != "swiglu":
        problems.append(f"non_linearity={args['non_linearity']!r}")
    if args.get("dim_local_decoder") != args.get("dim_local_encoder"):
        problems.append("dim_local_decoder != dim_local_encoder")
    dim_token = args.get("dim_token")
    if dim_token not in (None, args.get("dim_local_encoder")) or (
        dim_token is None and not args.get("use_local_encoder_transformer", True)
    ):
        problems.append("byte embeddings narrower than the local encoder (dim_token / use_local_encoder_transformer)")
    return problems


BLT_REQUIRED_ARGS = (
    "dim_global", "n_layers_global", "n_heads_global", "cross_attn_k", "dim_local_encoder", "n_layers_local_encoder",
    "n_heads_local_encoder", "dim_local_decoder", "n_layers_local_decoder", "n_heads_local_decoder",
)
ENTROPY_REQUIRED_ARGS = ("dim", "n_layers", "n_heads")


def check_required_args(args: dict, required: tuple[str, ...], what: str) -> None:
    """ValueError naming every field the official arguments lack (rather than a KeyError on the first)."""
    missing = [name for name in required if name not in args]
    if missing:
        raise ValueError(f"the official {what} arguments lack {missing}: not a complete checkpoint config")


def entropy_config_from_meta(args: dict, layout: str) -> dict:
    """The patcher sub-config of the official entropy-model arguments."""
    check_required_args(args, ENTROPY_REQUIRED_ARGS, "entropy-model")
    consolidated = layout == "consolidated"  # the official loader ignores these fields of params.json
    return dict(
        vocab_size=args.get("vocab_size", 260),
        hidden_size=args["dim"],
        num_hidden_layers=args["n_layers"],
        num_attention_heads=args["n_heads"],
        num_key_value_heads=args.get("n_kv_heads") or args["n_heads"],
        intermediate_size=official_ffn_size(args["dim"], 256 if consolidated else args.get("multiple_of", 256),
                                            args.get("ffn_dim_multiplier")),
        rms_norm_eps=1e-5 if consolidated else float(args.get("norm_eps", 1e-5)),
        sliding_window=512 if consolidated else args.get("sliding_window", 512),
        max_position_embeddings=args.get("max_seqlen", 8192),
        rope_parameters={"rope_type": "default",
                         "rope_theta": 10000.0 if consolidated else float(args.get("rope_theta", 10000.0))},
    )


def config_from_meta(args: dict, patcher_args: dict | None, entropy: dict | None) -> BLTConfig:
    """A BLTConfig from the official model arguments, patching arguments and entropy-model sub-config."""
    check_required_args(args, BLT_REQUIRED_ARGS, "BLT model")
    problems = _unsupported(args)
    patcher_args = patcher_args or {}
    mode = patcher_args.get("patching_mode") or args.get("patching_mode") or "entropy"
    if mode not in ("entropy", "space", "byte"):
        problems.append(f"patching_mode={mode!r} (the official static mode pads with BOE tokens; not supported)")
    if problems:
        raise ValueError("this checkpoint uses options blt_hf does not implement: " + "; ".join(problems))
    sizes = _hash_sizes(args.get("encoder_hash_byte_group_size"))
    multiple_of, multiplier = args.get("multiple_of", 256), args.get("ffn_dim_multiplier", 1.0)
    rope = {"rope_type": "default", "rope_theta": float(args.get("rope_theta", 10000.0))}
    window = args.get("local_attention_window_len")
    local_max = args.get("max_encoder_seq_length") or args.get("max_seqlen", 24576)
    cross_heads = args.get("cross_attn_nheads")

    def local(prefix):
        heads = args[f"n_heads_{prefix}"]
        return dict(
            hidden_size=args[f"dim_{prefix}"], num_hidden_layers=args[f"n_layers_{prefix}"], num_attention_heads=heads,
            num_key_value_heads=args.get("n_kv_heads") or heads,
            intermediate_size=official_ffn_size(args[f"dim_{prefix}"], multiple_of, multiplier),
            sliding_window=window, rms_norm_eps=float(args.get("norm_eps", 1e-5)), max_position_embeddings=local_max,
            rope_parameters=dict(rope), cross_attn_num_heads=cross_heads, cross_attn_num_key_value_heads=cross_heads,
        )

    threshold = patcher_args.get("threshold", args.get("patching_threshold"))
    patch_size = patcher_args.get("patch_size", args.get("patch_size"))
    return BLTConfig(
        vocab_size=args.get("vocab_size", 260),
        patching_mode=mode,
        patching_threshold=float(1.335442066192627 if threshold is None else threshold),
        patching_threshold_add=patcher_args.get("threshold_add", args.get("patching_threshold_add")),
        monotonicity=bool(patcher_args.get("monotonicity", args.get("monotonicity", False))),
        patch_size=max(1, round(patch_size)) if patch_size else 4,
        max_patch_length=patcher_args.get("max_patch_length", args.get("max_patch_length")),
        cross_attn_k=args["cross_attn_k"],
        encoder_hash_byte_group_size=sizes or [3],
        encoder_hash_byte_group_vocab=args.get("encoder_hash_byte_group_vocab", 30000),
        encoder_hash_byte_group_nb_functions=args.get("encoder_hash_byte_group_nb_functions", 3) if sizes else 0,
        max_position_embeddings=local_max,
        has_patcher=entropy is not None,
        patcher_config=entropy,
        encoder_config=dict(
            local("local_encoder"), cross_attn_all_layers=bool(args.get("cross_attn_all_layers_encoder"))
        ),
        decoder_config=dict(
            local("local_decoder"), cross_attn_all_layers=bool(args.get("cross_attn_all_layers_decoder"))
        ),
        global_config=dict(
            hidden_size=args["dim_global"], num_hidden_layers=args["n_layers_global"],
            num_attention_heads=args["n_heads_global"],
            num_key_value_heads=args.get("n_kv_heads_global") or args["n_heads_global"],
            intermediate_size=official_ffn_size(args["dim_global"], multiple_of, multiplier),
            rms_norm_eps=float(args.get("norm_eps", 1e-5)), max_position_embeddings=args.get("max_seqlen", 4096),
            rope_parameters=dict(rope),
        ),
    )


def read_blt(folder: str | Path) -> tuple[dict, dict | None, dict[str, torch.Tensor]]:
    """(model arguments, patching arguments, official state dict) of a BLT folder in either layout."""
    folder = Path(folder)
    if (folder / "params.json").is_file() and (folder / "consolidated.pth").is_file():
        params = read_json(folder / "params.json")
        if "model" not in params:
            raise ValueError(f"{folder / 'params.json'} has no 'model' arguments: not a BLT training config")
        patcher_args = params.get("data", {}).get("patcher_args")
        return params["model"], patcher_args, load_state_dict(folder)
    if (folder / "config.json").is_file():
        config = read_json(folder / "config.json")
        if "args" not in config or "dim_global" not in config["args"]:
            raise ValueError(f"{folder} is not an official BLT Hub folder (config.json without BLT 'args')")
        train_args = folder / "train_args.json"
        patcher_args = read_json(train_args).get("data", {}).get("patcher_args") if train_args.is_file() else None
        return config["args"], patcher_args, load_state_dict(folder)
    raise ValueError(f"{folder} holds neither params.json + consolidated.pth nor an official Hub config.json")


def read_entropy_model(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(patcher sub-config, official state dict) of an entropy-model folder in either layout."""
    folder = Path(folder)
    if (folder / "params.json").is_file():
        params = read_json(folder / "params.json")
        if "entropy_model" not in params:
            raise ValueError(f"{folder / 'params.json'} has no 'entropy_model' arguments")
        return entropy_config_from_meta(params["entropy_model"], "consolidated"), load_state_dict(folder)
    if (folder / "config.json").is_file():
        args = read_json(folder / "config.json").get("args")
        if not args or "dim" not in args or "dim_global" in args:
            raise ValueError(f"{folder} is not an official entropy-model Hub folder")
        return entropy_config_from_meta(args, "hub"), load_state_dict(folder)
    raise ValueError(f"{folder} holds no entropy model (params.json or config.json)")


def state_from_meta(blt_state: dict, entropy_state: dict | None, config: BLTConfig) -> dict[str, torch.Tensor]:
    state = fuse_hash_tables(
        map_keys(blt_state, BLT_KEY_TABLE, "BLT checkpoint"),
        config.num_hash_embeddings,
        config.encoder_config.hidden_size,
    )
    if entropy_state is not None:
        state.update(map_keys(entropy_state, ENTROPY_KEY_TABLE, "entropy-model checkpoint"))
    return state


def convert_meta(source: str | Path, destination: str | Path, entropy_model: str | Path | None = None):
    """Convert an official BLT folder (and its entropy model) into a blt_hf folder, written atomically."""
    from ..modeling_blt_hf import BLTForCausalLM
    from ..tokenization_blt_hf import BLTTokenizer

    source = Path(source)
    check_destination(destination)
    args, patcher_args, blt_state = read_blt(source)
    if entropy_model is None and (source / "entropy_model").is_dir():
        entropy_model = source / "entropy_model"
    entropy_config, entropy_state = read_entropy_model(entropy_model) if entropy_model is not None else (None, None)
    config = config_from_meta(args, patcher_args, entropy_config)
    if config.patching_mode == "entropy" and entropy_state is None:
        raise ValueError("entropy patching needs the entropy model: pass its folder (entropy_model=...)")
    state = state_from_meta(blt_state, entropy_state, config)
    with torch.device("meta"):
        skeleton = BLTForCausalLM(config)
    check_tensors(state, skeleton.state_dict(), f"{source}")
    with default_dtype(next(iter(state.values())).dtype):
        model = BLTForCausalLM(config)
    model.load_state_dict(state)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        BLTTokenizer().save_pretrained(folder)

    write_folder_atomically(destination, write)
    return model


def convert_meta_entropy_model(source: str | Path, destination: str | Path):
    """Convert an official entropy model folder into a standalone `BLTPatcher` folder."""
    from ..configuration_blt_hf import BLTPatcherConfig
    from ..patcher import BLTPatcher

    check_destination(destination)
    patcher_config, official = read_entropy_model(source)
    prefix = "model.patcher."
    state = {k[len(prefix) :]: v for k, v in map_keys(official, ENTROPY_KEY_TABLE, f"{source}").items()}
    patcher = BLTPatcher(BLTPatcherConfig(**patcher_config))
    check_tensors(state, patcher.state_dict(), f"{source}")
    patcher.load_state_dict(state)
    write_folder_atomically(destination, patcher.save_pretrained)
    return patcher


__all__ = ["convert_meta", "convert_meta_entropy_model", "config_from_meta", "BLT_KEY_TABLE", "ENTROPY_KEY_TABLE"]
